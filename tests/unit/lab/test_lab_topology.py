"""The pure topology: names, addressing, subnet split, modes, options, two labs side by side."""

from __future__ import annotations

import hashlib
import itertools
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

import pytest

from tortie.lab.errors import LabOptionError, UnknownTargetError
from tortie.lab.naming import MAX_LAB_ID, check_lab_name, lab_prefix, parse_lab_prefix
from tortie.lab.topology import (
    MAX_NODES,
    MAX_PODS_PER_NODE,
    MAX_SUBNETS,
    LabOptions,
    Topology,
    build_topology,
)


def topo(lab_id: int = 1, **kw: Any) -> Topology:
    return build_topology(LabOptions(**kw), lab_id)


def test_defaults_mirror_the_seed() -> None:
    t = topo()
    assert [n.name for n in t.nodes] == ["node1", "node2"]
    assert [n.address for n in t.nodes] == [
        IPv4Interface("192.168.49.2/24"),
        IPv4Interface("192.168.49.3/24"),
    ]
    assert {n.gateway for n in t.nodes} == {IPv4Address("192.168.49.1")}
    assert [n.uplink for n in t.nodes] == ["eth0", "eth0"]
    assert [(p.name, p.node) for p in t.pods] == [("pod1", "node1"), ("pod2", "node2")]
    assert t.pool.cidr == IPv4Network("10.244.0.0/16")
    assert t.pool.block_size == 26
    assert (t.pool.ipip_mode, t.pool.vxlan_mode) == ("Always", "Never")
    assert t.subnets[0].network == IPv4Network("192.168.49.0/24")
    assert t.router.netns == "tl1-r" and t.wire_netns == "tl1-w"
    assert [n.netns for n in t.nodes] == ["tl1-n1", "tl1-n2"]


@pytest.mark.parametrize(
    ("mode", "ipip", "vxlan"),
    [
        ("ipip", "Always", "Never"),
        ("bgp", "Never", "Never"),
        ("crosssubnet", "CrossSubnet", "Never"),
        ("vxlan", "Never", "Always"),
    ],
)
def test_pool_mode_follows_lab_mode(mode: str, ipip: str, vxlan: str) -> None:
    t = topo(mode=mode)
    assert (t.pool.ipip_mode, t.pool.vxlan_mode) == (ipip, vxlan)


@pytest.mark.parametrize(
    ("nodes", "subnets", "placement"),
    [
        (2, 2, [1, 2]),
        (3, 2, [1, 1, 2]),
        (4, 2, [1, 1, 2, 2]),
        (5, 2, [1, 1, 1, 2, 2]),
        (5, 3, [1, 1, 2, 2, 3]),
        (3, 1, [1, 1, 1]),
    ],
)
def test_subnet_split_first_half_first(nodes: int, subnets: int, placement: list[int]) -> None:
    t = topo(nodes=nodes, subnets=subnets)
    assert [n.subnet for n in t.nodes] == placement
    for n in t.nodes:
        subnet = t.subnet(n.subnet)
        assert n.address.network == subnet.network
        assert n.gateway == subnet.gateway == subnet.network.network_address + 1
    # Addresses restart at .2 in every subnet.
    firsts: dict[int, IPv4Address] = {}
    for n in t.nodes:
        firsts.setdefault(n.subnet, n.address.ip)
    assert all(int(ip) & 0xFF == 2 for ip in firsts.values())
    if subnets >= 2:
        assert t.subnets[1].network == IPv4Network("192.168.50.0/24")


def test_pods_in_node_order_with_addresses_in_their_node_block() -> None:
    t = topo(nodes=3, pods_per_node=2)
    assert [p.name for p in t.pods] == [f"pod{i}" for i in range(1, 7)]
    assert [p.node for p in t.pods] == ["node1", "node1", "node2", "node2", "node3", "node3"]
    for p in t.pods:
        node = t.node(p.node)
        assert p.manual_ip in node.manual_block
        assert p.manual_ip != node.manual_block.network_address
        assert node.manual_block.subnet_of(t.pool.cidr)
        assert node.manual_block.prefixlen == 26
    blocks = [n.manual_block for n in t.nodes]
    assert len(set(blocks)) == len(blocks)
    assert len({p.manual_ip for p in t.pods}) == len(t.pods)


def test_host_ifname_is_calicos() -> None:
    t = topo()
    want = "cali" + hashlib.sha1(b"default.pod1").hexdigest()[:11]
    assert t.pod("pod1").host_ifname == want


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"nodes": MAX_NODES, "subnets": MAX_SUBNETS, "pods_per_node": 2},
        {"nodes": 10, "pods_per_node": MAX_PODS_PER_NODE},
    ],
)
@pytest.mark.parametrize("lab_id", [1, 42, MAX_LAB_ID])
def test_names_fit_and_are_unique(lab_id: int, kw: dict[str, int]) -> None:
    t = topo(lab_id, **kw)
    namespaces = t.namespaces()
    assert len(set(namespaces)) == len(namespaces)
    for ns in namespaces:
        assert ns.startswith(lab_prefix(lab_id))
        assert not ns.startswith("tt")  # the dataplane tests' prefix
    interfaces = t.interfaces()
    assert len(set(interfaces)) == len(interfaces), "an interface name repeats in a namespace"
    for ns, name in interfaces:
        assert 0 < len(name.encode()) <= 15, name
        assert ns in namespaces
    for _, name in (x for x in interfaces if x[0] == t.wire_netns):
        assert name.startswith(t.prefix)


def test_two_labs_never_share_a_host_name() -> None:
    for a, b in itertools.combinations([1, 2, 9, 10, 12, 99, 100, 123, 999], 2):
        ta, tb = topo(a, nodes=12, subnets=2, pods_per_node=3), topo(b, nodes=12, subnets=2)
        names_a = set(ta.namespaces()) | {n for _, n in ta.interfaces() if n.startswith("tl")}
        names_b = set(tb.namespaces()) | {n for _, n in tb.interfaces() if n.startswith("tl")}
        assert not names_a & names_b
        assert all(parse_lab_prefix(n) == a for n in names_a)
        assert all(parse_lab_prefix(n) == b for n in names_b)


def test_prefix_parsing() -> None:
    assert parse_lab_prefix("tl12-n1") == 12
    assert parse_lab_prefix("tl1-w") == 1
    assert parse_lab_prefix("tt12-n1") is None
    assert parse_lab_prefix("tl0-n1") is None
    assert parse_lab_prefix("tl12n1") is None


def test_deterministic() -> None:
    assert topo(7, nodes=4, subnets=2, pods_per_node=2) == topo(
        7, nodes=4, subnets=2, pods_per_node=2
    )


def test_options_json_round_trip() -> None:
    opts = LabOptions(name="x", nodes=3, subnets=2, mode="vxlan", wire_pods="manual")
    assert LabOptions.from_json(opts.to_json()) == opts
    assert LabOptions.from_json({**opts.to_json(), "future_field": 1}) == opts


def test_route_reflectors_are_the_first_nodes() -> None:
    t = topo(nodes=4, route_reflectors=2)
    assert [n.route_reflector for n in t.nodes] == [True, True, False, False]


def test_unknown_target_lists_names() -> None:
    t = topo()
    assert t.target("node2").name == "node2"
    assert t.target("pod1").name == "pod1"
    with pytest.raises(UnknownTargetError, match=r"node1, node2, pod1, pod2"):
        t.target("pod9")


def test_bgp_across_subnets_warns() -> None:
    assert topo(mode="bgp", subnets=2).warnings
    assert not topo(mode="bgp", subnets=2, wire_pods="manual").warnings
    assert not topo(mode="crosssubnet", subnets=2).warnings


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"name": "x" * 25}, "too long"),
        ({"name": "Bad_Name"}, "not valid"),
        ({"name": "-x"}, "not valid"),
        ({"nodes": 0}, "--nodes 0 is out of range"),
        ({"nodes": MAX_NODES + 1}, "--nodes"),
        ({"nodes": 2, "subnets": 3}, "at least as many nodes"),
        ({"subnets": 0}, "--subnets"),
        ({"pods_per_node": MAX_PODS_PER_NODE + 1}, "--pods-per-node"),
        ({"route_reflectors": 3}, "--route-reflectors"),
        ({"mode": "gre"}, "--mode"),
        ({"wire_pods": "magic"}, "--wire-pods"),
        ({"datastore": "memory://"}, "one process"),
        ({"datastore": "nope"}, "--datastore"),
    ],
)
def test_bad_options(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(LabOptionError, match=message):
        topo(**kw)


def test_lab_names() -> None:
    assert check_lab_name("seed") == "seed"
    assert check_lab_name("a") == "a"
    assert check_lab_name("ipip-3") == "ipip-3"
    with pytest.raises(LabOptionError):
        lab_prefix(MAX_LAB_ID + 1)
