"""Kind names and aliases; datastore keys."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tortie.model.errors import ModelError
from tortie.model.keys import (
    IPAM_ROOT,
    RESOURCE_ROOT,
    ResourceKey,
    key_for,
    kind_prefix,
    parse_key,
    resource_key,
)
from tortie.model.kindinfo import KINDS, kind_info
from tortie.model.kinds import KIND_ALIASES, KIND_CLASSES, is_namespaced, resolve_kind
from tortie.model.resources import (
    BGPConfiguration,
    BGPPeer,
    IPAMConfiguration,
    IPPool,
    Node,
    WorkloadEndpoint,
)

pytestmark = pytest.mark.unit


def test_kind_classes() -> None:
    assert dict(KIND_CLASSES) == {
        "IPPool": IPPool,
        "IPAMConfiguration": IPAMConfiguration,
        "Node": Node,
        "BGPConfiguration": BGPConfiguration,
        "BGPPeer": BGPPeer,
        "WorkloadEndpoint": WorkloadEndpoint,
    }
    for kind, cls in KIND_CLASSES.items():
        assert kind == cls.KIND
        assert cls.model_fields["kind"].default == kind
    with pytest.raises(TypeError):
        KIND_CLASSES["X"] = IPPool  # type: ignore[index]


@pytest.mark.parametrize(
    ("text", "cls"),
    [
        ("IPPool", IPPool),
        ("ippool", IPPool),
        ("IPPOOLS", IPPool),
        ("ipp", IPPool),
        ("pools", IPPool),
        ("BGPPeer", BGPPeer),
        ("bgppeers", BGPPeer),
        ("bp", BGPPeer),
        ("bgpconfig", BGPConfiguration),
        ("bgpconfigs", BGPConfiguration),
        ("BGPConfigurations", BGPConfiguration),
        ("node", Node),
        ("Nodes", Node),
        ("no", Node),
        ("workloadendpoint", WorkloadEndpoint),
        ("weps", WorkloadEndpoint),
        ("wep", WorkloadEndpoint),
        ("ipamconfig", IPAMConfiguration),
        ("ipamconfigurations", IPAMConfiguration),
        (" IPAMConfiguration ", IPAMConfiguration),
    ],
)
def test_resolve_kind(text: str, cls: type) -> None:
    assert resolve_kind(text) is cls


def test_unknown_kind_lists_known_kinds() -> None:
    with pytest.raises(ModelError) as info:
        resolve_kind("ippol")
    assert str(info.value) == (
        "unknown resource kind 'ippol'; known kinds: BGPConfiguration, BGPPeer, "
        "IPAMConfiguration, IPPool, Node, WorkloadEndpoint; did you mean IPPool?"
    )
    with pytest.raises(ModelError, match="known kinds") as info:
        resolve_kind("zebra")
    assert "did you mean" not in str(info.value)


def test_the_names_say_what_the_classes_say() -> None:
    assert list(KINDS) == list(KIND_CLASSES)
    for kind, info in KINDS.items():
        cls = KIND_CLASSES[kind]
        assert (info.kind, info.plural, info.namespaced) == (cls.KIND, cls.PLURAL, cls.NAMESPACED)
        assert KIND_ALIASES[kind] == info.aliases
        for alias in info.aliases:
            assert kind_info(alias) is info and resolve_kind(alias) is cls


def test_aliases_do_not_collide() -> None:
    seen: dict[str, str] = {}
    for kind, aliases in KIND_ALIASES.items():
        for alias in (kind.lower(), *aliases):
            assert seen.setdefault(alias, kind) == kind, alias


def test_is_namespaced() -> None:
    assert is_namespaced(WorkloadEndpoint)
    assert is_namespaced("wep")
    assert not any(is_namespaced(c) for c in KIND_CLASSES.values() if c is not WorkloadEndpoint)


def test_keys() -> None:
    assert RESOURCE_ROOT == "/tortie/v3/"
    assert IPAM_ROOT == "/tortie/ipam/v2/"
    assert resource_key("IPPool", "pool-a") == "/tortie/v3/ippools/pool-a"
    assert resource_key("ippools", "pool-a") == "/tortie/v3/ippools/pool-a"
    assert resource_key("BGPConfiguration", "default") == "/tortie/v3/bgpconfigurations/default"
    assert resource_key("IPAMConfiguration", "default") == "/tortie/v3/ipamconfigurations/default"
    assert resource_key("Node", "n1") == "/tortie/v3/nodes/n1"
    assert resource_key("BGPPeer", "p.1") == "/tortie/v3/bgppeers/p.1"
    assert (
        resource_key("WorkloadEndpoint", "n-k8s-p-eth0", "default")
        == "/tortie/v3/workloadendpoints/default/n-k8s-p-eth0"
    )
    assert kind_prefix("IPPool") == "/tortie/v3/ippools/"
    assert kind_prefix("wep") == "/tortie/v3/workloadendpoints/"
    assert kind_prefix("wep", "kube-system") == "/tortie/v3/workloadendpoints/kube-system/"


def test_key_errors() -> None:
    with pytest.raises(ModelError, match="WorkloadEndpoint is namespaced; give a namespace"):
        resource_key("WorkloadEndpoint", "x")
    with pytest.raises(ModelError, match="IPPool is not namespaced"):
        resource_key("IPPool", "x", "default")
    with pytest.raises(ModelError, match="not a valid name"):
        resource_key("IPPool", "a/b")
    with pytest.raises(ModelError, match="not a valid namespace"):
        kind_prefix("wep", "a/b")
    with pytest.raises(ModelError, match="unknown resource kind"):
        resource_key("Zebra", "x")


def test_key_for_and_parse_key() -> None:
    pool = IPPool.from_document(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "IPPool",
            "metadata": {"name": "p"},
            "spec": {"cidr": "10.0.0.0/16"},
        }
    )
    assert key_for(pool) == "/tortie/v3/ippools/p"
    assert parse_key("/tortie/v3/ippools/p") == ResourceKey("IPPool", None, "p")
    assert parse_key("/tortie/v3/workloadendpoints/ns/w") == ResourceKey(
        "WorkloadEndpoint", "ns", "w"
    )
    for bad in (
        "/other/ippools/p",
        "/tortie/v3/ippools/",
        "/tortie/v3/ippools/a/b",
        "/tortie/v3/workloadendpoints/ns",
        "/tortie/v3/zebras/x",
    ):
        with pytest.raises(ModelError, match="not a resource key"):
            parse_key(bad)


NAMES = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?(\.[a-z0-9]{1,5}){0,2}", fullmatch=True)
NAMESPACES = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?", fullmatch=True)


@given(st.sampled_from(sorted(KIND_CLASSES)), NAMES, NAMESPACES)
def test_keys_round_trip_and_prefixes_are_exclusive(kind: str, name: str, ns: str) -> None:
    namespace = ns if KIND_CLASSES[kind].NAMESPACED else None
    key = resource_key(kind, name, namespace)
    assert parse_key(key) == ResourceKey(kind, namespace, name)
    assert key.startswith(kind_prefix(kind, namespace))
    for other in KIND_CLASSES:
        if other != kind:
            assert not key.startswith(kind_prefix(other))
