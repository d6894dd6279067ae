"""Stored documents recognised without the models: never wrongly, and always what tortie writes.

``tortie.model.stored.canonical`` may only say yes when the model would accept the document and
give it back unchanged (the reading commands then skip pydantic); these tests hold it to the
models: every document tortie writes is recognised, other spellings and invalid documents are
left to the model, Hypothesis mutates documents and checks every yes against the model, and
the field tables and the models' validators are compared so that neither drifts alone.
"""

from __future__ import annotations

import hashlib
import json
import typing
from collections.abc import Iterator
from types import UnionType
from typing import Any

import pydantic
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tortie.datastore.resources import ResourceStore
from tortie.model import resources as models
from tortie.model.errors import ValidationError
from tortie.model.kindinfo import KINDS
from tortie.model.kinds import KIND_CLASSES
from tortie.model.resources import BGPPeer, Resource, redact_secrets
from tortie.model.stored import (
    SHAPES,
    Shape,
    canonical,
    redact_document,
    with_resource_version,
)

pytestmark = pytest.mark.unit

V3 = "projectcalico.org/v3"
META = {
    "name": "x",
    "labels": {"tier": "gold", "example.com/zone": "a"},
    "annotations": {"example.com/note": "any text at all"},
    "uid": "0b5c0f0e-1111-2222-3333-444455556666",
    "creationTimestamp": "2024-01-02T03:04:05Z",
}


def doc(kind: str, spec: dict[str, Any] | None, **meta: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"apiVersion": V3, "kind": kind, "metadata": {**META, **meta}}
    if spec is not None:
        out["spec"] = spec
    return out


# Valid documents (in any spelling the model accepts) covering every field of every kind.
VALID: list[dict[str, Any]] = [
    doc("IPPool", {"cidr": "10.244.0.0/16"}, name="pool-a"),
    doc(
        "IPPool",
        {
            "cidr": "fd00:10::/48",
            "vxlanMode": "CrossSubnet",
            "natOutgoing": True,
            "disabled": True,
            "nodeSelector": "zone == 'a' && !has(edge)",
            "allowedUses": ["Tunnel"],
        },
        name="pool-6",
    ),
    doc("IPPool", {"cidr": "10.9.0.0/16", "blockSize": 28, "ipipMode": "Always"}),
    doc("IPAMConfiguration", None, name="default"),
    doc("IPAMConfiguration", {"strictAffinity": True, "maxBlocksPerHost": 0}, name="default"),
    doc("Node", None, name="node1"),
    doc(
        "Node",
        {
            "bgp": {
                "ipv4Address": "192.168.49.2/24",
                "ipv6Address": "fd00::2/64",
                "asNumber": 64512,
                "ipv4IPIPTunnelAddr": "10.244.0.1",
                "routeReflectorClusterID": "224.0.0.1",
            },
            "ipv4VXLANTunnelAddr": "10.244.0.2",
            "vxlanTunnelMACAddr": "ee:ee:ee:ee:ee:01",
            "orchRefs": [{"orchestrator": "k8s", "nodeName": "node1"}, {"orchestrator": "cni"}],
            "addresses": [
                {"address": "192.168.49.2/24", "type": "InternalIP"},
                {"address": "fd00::2"},
            ],
        },
        name="node1",
    ),
    {**doc("Node", {"bgp": {}}, name="n2"), "status": {"podCIDRs": ["10.244.1.0/24"]}},
    {**doc("Node", {}, name="n3"), "status": {}},
    doc("BGPConfiguration", None, name="default"),
    doc(
        "BGPConfiguration",
        {
            "logSeverityScreen": "Debug",
            "nodeToNodeMeshEnabled": False,
            "asNumber": 65000,
            "listenPort": 1179,
        },
        name="default",
    ),
    doc(
        "BGPPeer",
        {
            "node": "node1",
            "peerIP": "192.168.49.1:1179",
            "asNumber": 64513,
            "password": {"value": "s3cret"},
            "keepaliveTime": "10s",
            "holdTime": "1m30s",
        },
        name="tor-a",
    ),
    doc(
        "BGPPeer",
        {
            "nodeSelector": "all()",
            "peerSelector": "has(route-reflector)",
            "password": {"secretKeyRef": {"name": "bgp", "key": "password"}},
            "holdTime": "0",
        },
        name="to-rr",
    ),
    doc("BGPPeer", {"peerIP": "[fd00::1]:179", "asNumber": 65001}, name="v6"),
    doc(
        "WorkloadEndpoint",
        {
            "node": "node1",
            "pod": "web-0",
            "interfaceName": "cali0123456789a",
            "mac": "ee:ee:ee:ee:ee:ee",
            "ipNetworks": ["10.244.0.5/32", "fd00:10::5/128"],
            "profiles": ["kns.default", "ksa.default.default"],
            "serviceAccountName": "default",
        },
        name="node1-k8s-web--0-eth0",
        namespace="default",
    ),
    doc(
        "WorkloadEndpoint",
        {
            "orchestrator": "cni",
            "node": "node1",
            "containerID": "abc123",
            "endpoint": "net1",
            "interfaceName": "tap0",
            "ipNetworks": ["10.244.0.6"],
        },
        name="node1-cni-abc123-net1",
        namespace="kube-system",
    ),
    doc(
        "WorkloadEndpoint",
        {"orchestrator": "libnetwork", "node": "n", "interfaceName": "eth1"},
        name="n-libnetwork-libnetwork-eth0",
        namespace="ns",
    ),
    doc(
        "WorkloadEndpoint",
        {"orchestrator": "openstack", "workload": "vm1", "node": "n", "interfaceName": "tap1"},
        name="n-openstack-vm1-eth0",
        namespace="ns",
    ),
]


def model(d: dict[str, Any]) -> Resource:
    return KIND_CLASSES[d["kind"]].from_document(d)


def ordered(value: object) -> str:
    """Key order matters (it is what ``-o yaml`` prints): compare the texts."""
    return json.dumps(value)


def stored(res: Resource) -> dict[str, Any]:
    """What the datastore holds for ``res`` (sorted keys, no resourceVersion)."""
    value: dict[str, Any] = json.loads(ResourceStore.encode(res))
    return value


@pytest.mark.parametrize("d", VALID, ids=lambda d: f"{d['kind']}-{d['metadata']['name']}")
def test_every_document_tortie_writes_is_recognised_in_the_models_order(d: dict[str, Any]) -> None:
    value = stored(model(d))
    got = canonical(d["kind"], value)
    assert got is not None
    # What the model makes of the same stored value (maps come back in the stored order).
    assert ordered(got) == ordered(model(value).to_document())


def test_the_fixtures_cover_every_field_of_every_model() -> None:
    seen: set[tuple[str, str]] = set()
    for d in VALID:
        for name, value in _walk(KIND_CLASSES[d["kind"]], model(d).to_document()):
            seen.update((name, alias) for alias in value)
    every = {(name, f.alias) for name, shape in SHAPES.items() for f in shape.fields}
    assert every - seen == {("ObjectMeta", "resourceVersion")}  # never stored


def _walk(
    cls: type[pydantic.BaseModel], value: dict[str, Any]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(model name, value) for a document and every model value inside it."""
    yield cls.__name__, value
    for name, info in cls.model_fields.items():
        alias = info.alias or name
        if alias not in value:
            continue
        inner = _model_in(info.annotation)
        if inner is None:
            continue
        items = value[alias] if isinstance(value[alias], list) else [value[alias]]
        for item in items:
            yield from _walk(inner, item)


def _model_in(annotation: Any) -> type[pydantic.BaseModel] | None:
    """The model class an annotation holds (``M``, ``M | None``, ``list[M]``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation
    if isinstance(annotation, UnionType) or typing.get_origin(annotation) in (
        typing.Union,
        list,
    ):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


# -- other spellings and invalid documents are the model's to judge -----------------------------

_DROP = object()


def changed(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """The canonical document of ``base`` with dotted paths (``spec__blockSize``) set, or
    removed (``_DROP``)."""
    d: dict[str, Any] = json.loads(json.dumps(model(base).to_document()))
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        target = d
        for step in parents:
            target = target[step]
        if value is _DROP:
            del target[last]
        else:
            target[last] = value
    return d


POOL, PEER, WEP = VALID[0], VALID[11], VALID[14]
IPAM, BGPCONF, NODE = VALID[3], VALID[9], VALID[5]

ACCEPTED_IN_ANOTHER_SPELLING = [
    POOL,  # defaults not written out
    changed(POOL, spec__nodeSelector=" "),
    changed(POOL, spec__allowedUses=[]),
    changed(POOL, spec__blockSize=_DROP, spec__block_size=26),
    changed(POOL, metadata__labels={}),
    changed(POOL, metadata__uid=None),
    changed(POOL, metadata__resourceVersion="3"),
    changed(BGPCONF, spec__asNumber="1.10"),
    changed(PEER, spec__password="s3cret"),
    changed(PEER, spec__peerIP="192.168.49.1:01179"),
    changed(PEER, spec__nodeSelector=""),
    changed(NODE, spec__vxlanTunnelMACAddr="EE-EE-EE-EE-EE-01"),
    changed(NODE, spec__orchRefs=[]),
    changed(NODE, spec=_DROP),  # the spec is written out even when empty
    changed(NODE, status=None),
    changed(WEP, metadata__namespace=_DROP),  # "default" is filled in
    changed(WEP, spec__ipNetworks=["10.244.0.5"]),
    changed(VALID[1], spec__cidr="fd00:10:0::/48"),
]


@pytest.mark.parametrize("d", ACCEPTED_IN_ANOTHER_SPELLING)
def test_other_spellings_are_left_to_the_model(d: dict[str, Any]) -> None:
    model(d)  # valid...
    assert canonical(d["kind"], d) is None  # ...but not as tortie writes it


REFUSED = [
    changed(POOL, apiVersion="projectcalico.org/v2"),
    changed(POOL, kind="Node"),
    changed(POOL, spec__blockSize=33),
    changed(POOL, spec__blockSize=True),
    changed(POOL, spec__blockSize=26.0),  # strict, as Calico: not an integer
    changed(POOL, spec__cidr="10.0.0.1/8"),
    changed(POOL, spec__cidr="169.254.0.0/16"),
    changed(POOL, spec__ipipMode="always"),
    changed(POOL, spec__nodeSelector="has("),
    changed(POOL, spec__newField=1),
    changed(POOL, spec__allowedUses=["Tunnel", "Tunnel"]),
    changed(POOL, metadata__name="Bad_Name"),
    changed(POOL, metadata__namespace="default"),
    changed(POOL, metadata__labels={"k": "a b"}),
    changed(POOL, metadata__uid=5),
    changed(POOL, spec=_DROP),
    changed(IPAM, metadata__name="other"),
    changed(BGPCONF, spec__listenPort=0),
    changed(BGPCONF, spec__asNumber=0),
    changed(PEER, spec__asNumber=_DROP),
    changed(PEER, spec__password={}),
    changed(PEER, spec__keepaliveTime="90s"),
    changed(PEER, spec__holdTime="2s"),
    changed(NODE, spec__addresses=[{"address": "10.0.0.1", "type": "Other"}]),
    changed(WEP, metadata__name="node1-k8s-web-0-eth0"),
    changed(WEP, spec__pod=_DROP),
    changed(WEP, spec__interfaceName="a/b"),
]


@pytest.mark.parametrize("d", REFUSED)
def test_invalid_documents_are_left_to_the_model(d: dict[str, Any]) -> None:
    kind = KIND_CLASSES[POOL["kind"] if d["kind"] not in KIND_CLASSES else d["kind"]].KIND
    with pytest.raises(ValidationError):
        KIND_CLASSES[kind].from_document(d)
    assert canonical(kind, d) is None
    assert canonical("IPPool", "not a mapping") is None


# -- Hypothesis: every yes is the model's yes, and the model's document --------------------------

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
    st.sampled_from(
        [
            "10.0.0.0/16",
            "10.244.0.0/16",
            "10.0.0.1/16",
            "fd00::/48",
            "fd00:0::/48",
            "169.254.0.0/16",
            "10.0.0.1",
            "192.168.49.2/24",
            "fd00::2/64",
            "[fd00::1]:179",
            "10.0.0.1:179",
            "1.10",
            "Never",
            "Always",
            "CrossSubnet",
            "Workload",
            "Tunnel",
            "Info",
            "InternalIP",
            "all()",
            "has(a)",
            " ",
            "has(",
            "ee:ee:ee:ee:ee:ee",
            "EE:EE:EE:EE:EE:EE",
            "20s",
            "90s",
            "1.5s",
            "0",
            "2s",
            "default",
            "node1",
            "k8s",
            "cni",
            "eth0",
            "web-0",
            "",
        ]
    ),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["name", "key", "value", "a", "cidr"]), inner, max_size=2),
    ),
    max_leaves=4,
)
ALIASES = [
    *sorted({f.alias for shape in SHAPES.values() for f in shape.fields}),
    *("block_size", "node_name", "status", "extra"),
]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


def _mutate(d: Any, data: st.DataObject) -> Any:
    d = json.loads(json.dumps(d))
    path = data.draw(st.sampled_from(list(_paths(d))))
    if not path:
        return d
    parent = d
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    how = data.draw(st.sampled_from(["replace", "delete", "add", "swap"]))
    if how == "replace":
        parent[last] = data.draw(VALUES)
    elif how == "delete":
        del parent[last]
    elif how == "add" and isinstance(parent[last], dict):
        parent[last][data.draw(st.sampled_from(ALIASES))] = data.draw(VALUES)
    elif how == "swap":
        # A value from elsewhere in some valid document: plausible, often valid here too.
        other = data.draw(st.sampled_from(VALID))
        other_doc = model(other).to_document()
        parent[last] = data.draw(
            st.sampled_from([_at(other_doc, p) for p in _paths(other_doc) if p])
        )
    return d


def _at(value: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        value = value[step]
    return value


@given(st.sampled_from(VALID), st.integers(min_value=1, max_value=3), st.data())
@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_recognised_exactly_when_the_model_gives_the_document_back_unchanged(
    start: dict[str, Any], mutations: int, data: st.DataObject
) -> None:
    d: Any = model(start).to_document()
    for _ in range(mutations):
        d = _mutate(d, data)
    kind = start["kind"]
    try:
        back: dict[str, Any] | None = KIND_CLASSES[kind].from_document(d).to_document()
    except ValidationError:
        back = None
    got = canonical(kind, d)
    if back is not None and same(back, d):
        event("valid, as tortie writes it")
        assert got is not None
        assert ordered(got) == ordered(back)  # and in the model's order
    else:
        event("invalid" if back is None else "valid, in another spelling")
        assert got is None


def same(a: object, b: object) -> bool:
    """Equal as JSON (``True`` is not ``1``), in any key order."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


# -- the tables and the models side by side -------------------------------------------------------


def _always(info: Any) -> bool:
    """Whether ``to_document()`` always writes a field: required, or a default that is not
    None and not empty (the model's validators never empty a non-empty default)."""
    if info.is_required():
        return True
    default = info.get_default(call_default_factory=True)
    return not (default is None or (isinstance(default, list | dict) and not default))


MODELS: dict[str, type[pydantic.BaseModel]] = {
    name: getattr(models, name) for name in SHAPES if hasattr(models, name)
}


def test_every_model_has_a_shape_with_its_fields_in_its_order() -> None:
    assert set(MODELS) == set(SHAPES)
    for name, cls in MODELS.items():
        fields = [(info.alias or n, _always(info)) for n, info in cls.model_fields.items()]
        shape = [(f.alias, f.always) for f in SHAPES[name].fields]
        if name in KINDS:
            # The canonical form always has the spec; a namespaced kind's namespace is filled in.
            fields = [(a, True if a == "spec" else always) for a, always in fields]
        assert shape == fields, name
    for name in KINDS:
        meta = next(f.check for f in SHAPES[name].fields if f.alias == "metadata")
        assert isinstance(meta, Shape)
        namespace = next(f for f in meta.fields if f.alias == "namespace")
        assert namespace.always is KINDS[name].namespaced  # filled in ("default") if namespaced


def _no_descriptions(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _no_descriptions(v) for k, v in schema.items() if k != "description"}
    if isinstance(schema, list):
        return [_no_descriptions(v) for v in schema]
    return schema


def _fingerprint(cls: type[pydantic.BaseModel]) -> str:
    """The model's types, defaults and bounds (its JSON schema without prose) and the names of
    its validators: what the shapes in tortie.model.stored mirror."""
    decorators = cls.__pydantic_decorators__
    text = json.dumps(
        {
            "schema": _no_descriptions(cls.model_json_schema(by_alias=True)),
            "validators": sorted([*decorators.field_validators, *decorators.model_validators]),
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# If one of these changes, a model's fields, types, defaults, bounds or validators changed:
# make tortie/model/stored.py's shape say the same (its rules come from tortie/model/rules.py,
# so a validator that is not a call into rules.py is invisible to it), then update the pin.
FINGERPRINTS = {
    "ObjectMeta": "0963cc5aa8fae821",
    "IPPoolSpec": "ad6d463dc29990c5",
    "IPAMConfigurationSpec": "e0ab90c093c4a866",
    "NodeBGPSpec": "392446ba396cfbba",
    "OrchRef": "c3045190ce6d51ff",
    "NodeAddress": "c9c0bc38eaec361e",
    "NodeSpec": "699656d020db7943",
    "NodeStatus": "1558353f1cef1daf",
    "BGPConfigurationSpec": "fbaaf3ac1b2e2a8d",
    "SecretKeyRef": "0d0a4c690e0fc8ff",
    "BGPPassword": "465ccf8b1d81bac8",
    "BGPPeerSpec": "5e8f26970c672517",
    "WorkloadEndpointSpec": "a38de6804b29b021",
    "IPPool": "6dbf2a3038ea73aa",
    "IPAMConfiguration": "b08c52aff50201f8",
    "Node": "a7b12d5f9c192800",
    "BGPConfiguration": "bfbd480dc436d939",
    "BGPPeer": "e1dcffe5903270a8",
    "WorkloadEndpoint": "3eea7d0a097e96b3",
}


def test_the_models_are_the_ones_the_shapes_were_written_for() -> None:
    assert {name: _fingerprint(cls) for name, cls in MODELS.items()} == FINGERPRINTS


# -- what get shows ---------------------------------------------------------------------------


@pytest.mark.parametrize("d", VALID, ids=lambda d: f"{d['kind']}-{d['metadata']['name']}")
def test_redaction_and_resource_version_as_the_model_does_them(d: dict[str, Any]) -> None:
    value = stored(model(d))
    res = model(value)
    shown = redact_secrets(res.with_metadata(resource_version="42")).to_document()
    got = canonical(res.KIND, value)
    assert got is not None
    assert ordered(redact_document(with_resource_version(got, "42"))) == ordered(shown)
    if isinstance(res, BGPPeer) and res.spec.password and res.spec.password.value:
        assert "s3cret" not in json.dumps(redact_document(got))
