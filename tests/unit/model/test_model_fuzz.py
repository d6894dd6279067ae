"""Hostile documents: whatever a manifest contains, only ValidationError comes out."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tortie.model.errors import ValidationError
from tortie.model.kinds import KIND_CLASSES
from tortie.model.loader import dump_documents, load_documents
from tortie.model.resources import Resource

pytestmark = pytest.mark.unit

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.sampled_from(
        [
            "10.0.0.0/16",
            "fd00::/48",
            "10.0.0.1",
            "[fd00::1]:179",
            "1.10",
            "²",
            "99999999999999999999h",
            "20s",
            "all()",
            "has(",
            "Always",
            "ee:ee:ee:ee:ee:ee",
            "default",
            "",
        ]
    ),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def field_names(cls: type[Resource]) -> list[str]:
    spec = cls.model_fields["spec"].annotation
    assert isinstance(spec, type)
    names = [info.alias or n for n, info in spec.model_fields.items()]  # type: ignore[attr-defined]
    return [*names, "bgp", "secretKeyRef", "value", "name", "key"]


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(sorted(KIND_CLASSES)))
    keys = field_names(KIND_CLASSES[kind])
    spec = draw(st.dictionaries(st.sampled_from(keys), VALUES, max_size=6))
    meta = draw(
        st.fixed_dictionaries(
            {"name": st.one_of(st.just("default"), st.text(max_size=6), VALUES)},
            optional={"namespace": VALUES, "labels": VALUES, "resourceVersion": VALUES},
        )
    )
    return {"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": meta, "spec": spec}


@given(documents())
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_random_documents_fail_only_with_validation_error(doc: dict[str, Any]) -> None:
    try:
        (res,) = load_documents(yaml.safe_dump(doc), "fuzz.yaml")
    except ValidationError as err:
        assert str(err).startswith("fuzz.yaml: document 1")
        assert len(str(err).splitlines()) <= 2
    else:
        assert load_documents(dump_documents([res]), "again") == [res]


@given(st.text(max_size=200))
@settings(max_examples=300)
def test_random_text_fails_only_with_validation_error(text: str) -> None:
    with contextlib.suppress(ValidationError):
        load_documents(text, "fuzz.txt")


VALID: dict[str, dict[str, Any]] = {
    "IPPool": {"cidr": "10.0.0.0/16", "ipipMode": "Always", "natOutgoing": True},
    "IPAMConfiguration": {"strictAffinity": True, "maxBlocksPerHost": 4},
    "Node": {"bgp": {"ipv4Address": "10.0.0.1/24", "asNumber": 64512}},
    "BGPConfiguration": {"asNumber": 64512, "nodeToNodeMeshEnabled": False},
    "BGPPeer": {"peerIP": "10.0.0.1", "asNumber": 1, "keepaliveTime": "20s", "holdTime": "60s"},
    "WorkloadEndpoint": {"node": "n", "pod": "p", "interfaceName": "cali1"},
}


@given(st.sampled_from(sorted(VALID)), st.data())
@settings(max_examples=300)
def test_one_bad_field_in_a_valid_document(kind: str, data: st.DataObject) -> None:
    spec = dict(VALID[kind])
    key = data.draw(st.sampled_from(field_names(KIND_CLASSES[kind])))
    spec[key] = data.draw(VALUES)
    name = "default" if kind != "WorkloadEndpoint" else "n-k8s-p-eth0"
    doc = {"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": {"name": name}}
    doc["spec"] = spec
    try:
        (res,) = load_documents(yaml.safe_dump(doc), "one.yaml")
    except ValidationError as err:
        assert err.document == 1
        assert len(str(err).splitlines()) <= 2
    else:
        assert load_documents(dump_documents([res], "json"), "again") == [res]
