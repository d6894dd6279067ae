"""Stored shapes and keys of IPAM's internal kinds (tortie.model.ipam)."""

from __future__ import annotations

import ipaddress
import json

import pytest

from tortie.ipam.block import allocate
from tortie.model.ipam import (
    AffinityState,
    AllocationBlock,
    BlockAffinity,
    IPAMDataError,
    IPAMHandle,
    affinities_prefix,
    affinity_key,
    block_key,
    blocks_prefix,
    cidr_from_block_key,
    handle_id_from_key,
    handle_key,
    parse_affinity_key,
)

pytestmark = pytest.mark.unit

NET = ipaddress.ip_network("10.244.3.0/26")
NET6 = ipaddress.ip_network("fd00:1::/122")


def test_key_layout_mirrors_calico() -> None:
    assert block_key(NET) == "/tortie/ipam/v2/assignment/ipv4/block/10.244.3.0-26"
    assert block_key(NET6) == "/tortie/ipam/v2/assignment/ipv6/block/fd00:1::-122"
    assert affinity_key("node-1", NET) == "/tortie/ipam/v2/host/node-1/ipv4/block/10.244.3.0-26"
    assert handle_key("k8s-pod-network.abc") == "/tortie/ipam/v2/handle/k8s-pod-network.abc"
    assert blocks_prefix(4) == "/tortie/ipam/v2/assignment/ipv4/block/"
    assert affinities_prefix("n1") == "/tortie/ipam/v2/host/n1/"


def test_keys_parse_back() -> None:
    assert cidr_from_block_key(block_key(NET6)) == NET6
    assert parse_affinity_key(affinity_key("n1", NET)) == ("n1", NET)
    assert handle_id_from_key(handle_key("h.1")) == "h.1"


@pytest.mark.parametrize("bad", ["", "a/b"])
def test_names_with_slashes_are_refused(bad: str) -> None:
    with pytest.raises(IPAMDataError, match="no '/'"):
        handle_key(bad)
    with pytest.raises(IPAMDataError):
        affinity_key(bad, NET)


@pytest.mark.parametrize(
    "key",
    [
        "/tortie/ipam/v2/host/n1/ipv4/10.0.0.0-26",
        "/tortie/ipam/v2/handle/x",
        "/tortie/ipam/v2/host/n1/ipv4/block/10.0.0.0",
        "/tortie/ipam/v2/host/n1/ipv4/block/10.0.0.999-26",
    ],
)
def test_bad_affinity_keys(key: str) -> None:
    with pytest.raises(IPAMDataError):
        parse_affinity_key(key)


def test_block_json_round_trip_in_calico_shape() -> None:
    b = AllocationBlock.new(NET, "host:n1", sequence_start=7, now=100.0)
    b, _ = allocate(b, 2, "h1", {"node": "n1", "pod": "p"})
    doc = json.loads(b.to_json())
    assert doc["cidr"] == "10.244.3.0/26"
    assert doc["affinity"] == "host:n1"
    assert doc["allocations"][:3] == [0, 0, None]
    assert doc["unallocated"][:2] == [2, 3]
    assert doc["attributes"] == [{"handle_id": "h1", "secondary": {"node": "n1", "pod": "p"}}]
    assert doc["sequenceNumber"] == 9
    assert doc["sequenceNumberForAllocation"] == {"0": 7, "1": 8}
    assert doc["deleted"] is False
    assert AllocationBlock.from_json(b.to_json()) == b


def test_block_queries() -> None:
    b = AllocationBlock.new(NET, "host:n1", sequence_start=0, now=0.0)
    b, _ = allocate(b, 3, "h1", {})
    assert (b.size, b.free, b.in_use, b.node) == (64, 61, 3, "n1")
    assert b.address(5) == ipaddress.ip_address("10.244.3.5")
    assert b.ordinal(ipaddress.ip_address("10.244.3.63")) == 63
    with pytest.raises(ValueError):
        b.ordinal(ipaddress.ip_address("10.244.4.0"))
    assert b.ordinals_of_handle("h1") == [0, 1, 2]
    assert AllocationBlock.new(NET, None, sequence_start=0, now=0.0).node is None


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("cidr"), "cidr"),
        (lambda d: d.update(allocations=[None]), "all 64 ordinals"),
        (lambda d: d.update(unallocated=[]), "disagrees"),
        (lambda d: d.update(unallocated=["0", *range(1, 64)]), "integers"),
        (lambda d: d["allocations"].__setitem__(0, 5), "missing attribute"),
        (lambda d: d.update(attributes=[{"handle_id": 3}]), "handle_id"),
        (lambda d: d.update(attributes=[{"secondary": {"a": 1}}]), "strings"),
        (lambda d: d.update(affinity=5), "affinity"),
        (lambda d: d.update(sequenceNumberForAllocation={"x": 1}), "ordinal"),
        (lambda d: d.update(emptySince="yesterday"), "number"),
    ],
)
def test_corrupt_blocks_are_named(mutate: object, message: str) -> None:
    doc = json.loads(AllocationBlock.new(NET, None, sequence_start=0, now=0.0).to_json())
    mutate(doc)  # type: ignore[operator]
    with pytest.raises(IPAMDataError, match=message):
        AllocationBlock.from_json(json.dumps(doc), "the-key")


def test_not_json() -> None:
    with pytest.raises(IPAMDataError, match="the-key: not JSON"):
        AllocationBlock.from_json("{", "the-key")
    with pytest.raises(IPAMDataError, match="JSON object"):
        AllocationBlock.from_json("[]", "the-key")


def test_affinity_round_trip() -> None:
    a = BlockAffinity("n1", NET, AffinityState.PENDING, 12.5)
    doc = json.loads(a.to_json())
    assert doc == {"state": "pending", "deleted": False, "createdAt": 12.5}
    assert BlockAffinity.from_kv(a.key, a.to_json()) == a
    with pytest.raises(IPAMDataError, match="unknown affinity state"):
        BlockAffinity.from_kv(a.key, '{"state": "maybe"}')


def test_handle_round_trip_and_counts() -> None:
    h = IPAMHandle("h1").with_count(NET, 2).with_count(NET6, 1)
    assert json.loads(h.to_json()) == {
        "block": {"10.244.3.0/26": 2, "fd00:1::/122": 1},
        "deleted": False,
    }
    assert IPAMHandle.from_kv(h.key, h.to_json()) == h
    assert h.total == 3
    assert h.with_count(NET, 0).counts == {"fd00:1::/122": 1}
    with pytest.raises(IPAMDataError, match="bad block CIDR"):
        IPAMHandle.from_kv(h.key, '{"block": {"nope": 1}}')
    with pytest.raises(IPAMDataError, match="integer"):
        IPAMHandle.from_kv(h.key, '{"block": {"10.0.0.0/26": true}}')


@pytest.mark.parametrize("decode", ["block", "affinity", "handle"])
def test_json_nested_thousands_deep_is_a_data_error(decode: str) -> None:
    deep = "[" * 5000 + "]" * 5000
    with pytest.raises(IPAMDataError, match="too deep"):
        if decode == "block":
            AllocationBlock.from_json(deep, "/tortie/ipam/v2/assignment/ipv4/block/10.0.0.0-26")
        elif decode == "affinity":
            BlockAffinity.from_kv("/tortie/ipam/v2/host/n1/ipv4/block/10.0.0.0-26", deep)
        else:
            IPAMHandle.from_kv("/tortie/ipam/v2/handle/h", deep)
