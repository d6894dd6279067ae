"""``--route-reflectors R``: the manifests, the sessions Calico's rules derive from them, the
reflectors' BIRD config (checked by BIRD), and the race-free Node writes before the agents."""

from __future__ import annotations

import shutil
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from tortie.agent.registration import register_node
from tortie.bgp.bird import render_config
from tortie.bgp.peering import PeeringPlan, compute_speaker_config
from tortie.datastore.factory import open_datastore
from tortie.datastore.resources import ResourceStore
from tortie.lab.builder import write_nodes
from tortie.lab.manifests import (
    RR_LABEL,
    bgp_configuration,
    bgp_peers,
    cluster_manifests,
    lab_writes_nodes,
    node_manifests,
)
from tortie.lab.state import Journal, LabState
from tortie.lab.topology import RR_CLUSTER_ID, LabOptions, Topology, build_topology
from tortie.lab.tor import check_config
from tortie.model.resources import BGPConfiguration, BGPPeer, Node


def rr_lab(nodes: int = 4, reflectors: int = 1) -> Topology:
    return build_topology(LabOptions(nodes=nodes, route_reflectors=reflectors, agents=True), 2)


def plan(t: Topology, node: str) -> PeeringPlan:
    configs = [r for r in cluster_manifests(t) if isinstance(r, BGPConfiguration)]
    peers = [r for r in cluster_manifests(t) if isinstance(r, BGPPeer)]
    return compute_speaker_config(node, node_manifests(t), configs, peers)


def test_manifests_are_calicos_recipe() -> None:
    t = rr_lab()
    assert bgp_configuration(t).spec.node_to_node_mesh_enabled is False
    (peer,) = bgp_peers(t)
    assert peer.name == "peer-with-route-reflectors"
    assert peer.to_document()["spec"] == {
        "nodeSelector": "all()",
        "peerSelector": "route-reflector == 'true'",
    }
    nodes = node_manifests(t)
    assert nodes[0].spec.bgp is not None
    assert nodes[0].spec.bgp.route_reflector_cluster_id == RR_CLUSTER_ID == "244.0.0.1"
    assert nodes[0].metadata.labels[RR_LABEL] == "true"
    assert all(RR_LABEL not in n.metadata.labels for n in nodes[1:])
    assert lab_writes_nodes(t)


def test_clients_have_one_route_reflector_session() -> None:
    t = rr_lab()
    for node in t.nodes[1:]:
        config = plan(t, node.name).config
        (peer,) = config.peers
        assert peer.address == IPv4Address("192.168.49.2")
        assert peer.peer_type == "route reflector"
        assert not config.is_route_reflector


def test_the_reflector_serves_every_client() -> None:
    t = rr_lab()
    config = plan(t, "node1").config
    assert config.is_route_reflector and str(config.rr_cluster_id) == RR_CLUSTER_ID
    assert [str(p.address) for p in config.peers] == [
        "192.168.49.3",
        "192.168.49.4",
        "192.168.49.5",
    ]
    assert all(p.route_reflector_client and p.peer_type == "node specific" for p in config.peers)


def test_two_reflectors_peer_with_everyone_but_not_as_clients_of_each_other() -> None:
    t = rr_lab(nodes=10, reflectors=2)
    rr1 = plan(t, "node1").config
    assert len(rr1.peers) == 9
    other_rr = rr1.peer(IPv4Address("192.168.49.3"))
    assert other_rr is not None and not other_rr.route_reflector_client  # same cluster
    client = plan(t, "node5").config
    assert [p.peer_type for p in client.peers] == ["route reflector", "route reflector"]


@pytest.mark.skipif(shutil.which("bird") is None, reason="bird2 is not installed")
def test_bird_accepts_the_reflectors_config(tmp_path: Path) -> None:
    t = rr_lab(nodes=10, reflectors=2)
    path = tmp_path / "bird.conf"
    text = render_config(plan(t, "node1").config, [IPv4Network("10.244.0.0/26")])
    assert "rr client;" in text and f"rr cluster id {RR_CLUSTER_ID};" in text
    path.write_text(text)
    check_config(path)  # bird -p -c


def _journal(tmp_path: Path) -> Journal:
    state = LabState(name="u", lab_dir=str(tmp_path), token="t", options={})
    state.datastore = f"sqlite://{tmp_path / 'ds.db'}"
    open_datastore(state.datastore, create=True).close()  # as `lab up` seeds it first
    return Journal(state)


def test_nodes_written_before_the_agents_keep_their_role_when_agents_register(
    tmp_path: Path,
) -> None:
    t = rr_lab()
    journal = _journal(tmp_path)
    assert write_nodes(journal, t) == [f"Node/node{i}" for i in range(1, 5)]
    store = open_datastore(journal.state.datastore or "")
    try:
        rs = ResourceStore(store)
        # The agent's start-up registration (address, AS, tunnel address) comes after.
        register_node(
            rs,
            "node1",
            IPv4Interface("192.168.49.2/24"),
            tunnel_address=IPv4Address("10.244.0.1"),
            labels={"extra": "x"},
        )
        node1 = rs.get(Node, "node1")
        assert node1 is not None and node1.spec.bgp is not None
        assert node1.spec.bgp.route_reflector_cluster_id == RR_CLUSTER_ID
        assert node1.spec.bgp.ipv4_ipip_tunnel_addr == "10.244.0.1"
        assert node1.metadata.labels[RR_LABEL] == "true"
        assert node1.metadata.labels["extra"] == "x"
        assert node1.metadata.labels["rack"] == "rack-1"
    finally:
        store.close()


def test_writing_nodes_again_merges_and_drops_a_stale_reflector_role(tmp_path: Path) -> None:
    journal = _journal(tmp_path)
    write_nodes(journal, rr_lab(reflectors=2))
    store = open_datastore(journal.state.datastore or "")
    try:
        rs = ResourceStore(store)
        node2 = rs.get(Node, "node2")
        assert node2 is not None
        rs.apply([node2.with_metadata(labels={**node2.metadata.labels, "keep": "me"})])
        write_nodes(journal, rr_lab(reflectors=1))  # node2 is no reflector any more
        node2 = rs.get(Node, "node2")
        assert node2 is not None and node2.spec.bgp is not None
        assert node2.spec.bgp.route_reflector_cluster_id is None
        assert RR_LABEL not in node2.metadata.labels
        assert node2.metadata.labels["keep"] == "me"
    finally:
        store.close()
