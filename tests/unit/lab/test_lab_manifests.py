"""The lab's Calico resources validate, round-trip, and follow the topology."""

from __future__ import annotations

import pytest

from tortie.lab.manifests import (
    all_manifests,
    bgp_configuration,
    bgp_peers,
    cluster_manifests,
    ippool,
    node_manifest,
)
from tortie.lab.topology import LabOptions, build_topology
from tortie.model.resources import IPPool, Resource
from tortie.model.validation import check_pools


@pytest.mark.parametrize("mode", ["ipip", "bgp", "crosssubnet", "vxlan"])
def test_manifests_validate_and_round_trip(mode: str) -> None:
    t = build_topology(LabOptions(mode=mode, nodes=3, route_reflectors=1), 1)  # type: ignore[arg-type]
    for res in all_manifests(t):
        assert type(res).from_document(res.to_document()) == res
        assert res.to_document()["apiVersion"] == "projectcalico.org/v3"
    pools = [r for r in cluster_manifests(t) if isinstance(r, IPPool)]
    check_pools(pools, [])


def test_pool_document_is_calicos_shape() -> None:
    t = build_topology(LabOptions(mode="crosssubnet"), 1)
    doc = ippool(t).to_document()
    assert doc["metadata"]["name"] == "default-ipv4-ippool"
    assert doc["spec"]["cidr"] == "10.244.0.0/16"
    assert doc["spec"]["blockSize"] == 26
    assert doc["spec"]["ipipMode"] == "CrossSubnet"
    assert doc["spec"]["vxlanMode"] == "Never"
    assert doc["spec"]["natOutgoing"] is True
    off = build_topology(LabOptions(nat_outgoing=False), 1)
    assert ippool(off).to_document()["spec"]["natOutgoing"] is False


def test_full_mesh_without_reflectors() -> None:
    t = build_topology(LabOptions(nodes=3), 1)
    assert bgp_configuration(t).spec.node_to_node_mesh_enabled is True
    assert bgp_configuration(t).spec.as_number == 64512
    assert bgp_peers(t) == []


def test_reflectors_turn_the_mesh_off() -> None:
    t = build_topology(LabOptions(nodes=4, route_reflectors=1), 1)
    assert bgp_configuration(t).spec.node_to_node_mesh_enabled is False
    (peer,) = bgp_peers(t)
    assert peer.spec.peer_selector == "route-reflector == 'true'"
    rr = node_manifest(t, t.nodes[0])
    assert rr.metadata.labels["route-reflector"] == "true"
    assert rr.spec.bgp is not None and rr.spec.bgp.route_reflector_cluster_id == "244.0.0.1"
    plain = node_manifest(t, t.nodes[1])
    assert "route-reflector" not in plain.metadata.labels
    assert plain.spec.bgp is not None and plain.spec.bgp.route_reflector_cluster_id is None


def test_node_manifest_carries_the_uplink_address() -> None:
    t = build_topology(LabOptions(nodes=3, subnets=2), 1)
    node: Resource = node_manifest(t, t.nodes[2])
    doc = node.to_document()
    assert doc["metadata"]["name"] == "node3"
    assert doc["spec"]["bgp"]["ipv4Address"] == "192.168.50.2/24"
    assert doc["spec"]["addresses"] == [{"address": "192.168.50.2", "type": "InternalIP"}]
