"""The node's IPIP tunnel address: one per node, from IPIP pools, released when IPIP is off."""

from __future__ import annotations

import ipaddress

import pytest
from ipam_helpers import Cluster

from tortie.ipam.client import IPAM, tunnel_handle
from tortie.model.resources import Node

pytestmark = pytest.mark.unit

A = ipaddress.ip_network("10.1.0.0/24")
B = ipaddress.ip_network("10.2.0.0/24")


def test_assigned_once_and_kept(cluster: Cluster, ipam: IPAM) -> None:
    cluster.pool("a", str(A), ipipMode="Always")
    addr = ipam.ensure_tunnel_address("n1")
    assert addr is not None
    assert addr in A
    assert ipam.ensure_tunnel_address("n1") == addr
    assert tunnel_handle("n1") == "ipip-tunnel-addr-n1"
    assert ipam.addresses_for_handle("ipip-tunnel-addr-n1") == [addr]
    info = ipam.address_info(addr)
    assert info is not None
    assert info.attrs["type"] == "ipipTunnelAddress"
    assert info.attrs["node"] == "n1"
    assert addr in ipam.blocks_for_node("n1")[0]  # from the node's own block


def test_released_when_ipip_is_turned_off(cluster: Cluster, ipam: IPAM) -> None:
    cluster.pool("a", str(A), ipipMode="CrossSubnet")
    addr = ipam.ensure_tunnel_address("n1")
    assert addr is not None
    cluster.pool("a", str(A), ipipMode="Never")
    assert ipam.ensure_tunnel_address("n1") is None
    assert ipam.address_info(addr) is None


def test_moves_with_ipip_to_another_pool(cluster: Cluster, ipam: IPAM) -> None:
    cluster.pool("a", str(A), ipipMode="Always")
    old = ipam.ensure_tunnel_address("n1")
    cluster.pool("a", str(A), ipipMode="Never")
    cluster.pool("b", str(B), ipipMode="Always")
    new = ipam.ensure_tunnel_address("n1")
    assert new is not None
    assert new in B
    assert old is not None
    assert ipam.address_info(old) is None


def test_pools_not_for_tunnels_or_not_selecting_the_node(cluster: Cluster, ipam: IPAM) -> None:
    cluster.pool("a", str(A), ipipMode="Always", allowedUses=["Workload"])
    cluster.pool("b", str(B), ipipMode="Always", nodeSelector="role == 'gw'")
    cluster.node("n1", {"role": "worker"})
    assert ipam.ensure_tunnel_address("n1") is None
    assert ipam.ensure_tunnel_address("no-pools-at-all-node") is None


def test_release_tunnel_address(cluster: Cluster, ipam: IPAM) -> None:
    cluster.pool("a", str(A), ipipMode="Always")
    addr = ipam.ensure_tunnel_address("n1")
    assert ipam.release_tunnel_address("n1") == [addr]
    assert ipam.release_tunnel_address("n1") == []


def test_vxlan_tunnel_address_is_separate_from_ipip(cluster: Cluster, ipam: IPAM) -> None:
    cluster.pool("a", str(A), vxlanMode="Always")
    assert ipam.ensure_tunnel_address("n1") is None  # no IPIP pool
    addr = ipam.ensure_tunnel_address("n1", "vxlan")
    assert addr is not None and addr in A
    assert tunnel_handle("n1", "vxlan") == "vxlan-tunnel-addr-n1"
    info = ipam.address_info(addr)
    assert info is not None and info.attrs["type"] == "vxlanTunnelAddress"
    cluster.pool("a", str(A), vxlanMode="Never")
    assert ipam.ensure_tunnel_address("n1", "vxlan") is None
    assert ipam.address_info(addr) is None


def test_check_knows_vxlan_tunnel_addresses(cluster: Cluster, ipam: IPAM) -> None:
    cluster.pool("a", str(A), vxlanMode="Always")
    addr = ipam.ensure_tunnel_address("n1", "vxlan")

    def node_with_vtep(vtep: str) -> None:
        doc = {
            "apiVersion": "projectcalico.org/v3",
            "kind": "Node",
            "metadata": {"name": "n1"},
            "spec": {"ipv4VXLANTunnelAddr": vtep},
        }
        cluster.resources.apply([Node.from_document(doc)])

    node_with_vtep(str(addr))
    assert list(ipam.check().problems) == []
    # The node now says another address: ours is a leak.
    node_with_vtep("10.1.0.200")
    problems = ipam.check().problems
    assert len(problems) == 1 and "uses tunnel address 10.1.0.200" in str(problems[0])
