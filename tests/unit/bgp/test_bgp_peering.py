"""Peer selection: Calico's mesh, reflector, global and node-specific BGPPeer rules."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tortie.bgp.peering import compute_speaker_config
from tortie.bgp.types import BGPConfigError, BGPPeerSpec, SpeakerConfig
from tortie.model.resources import BGPConfiguration, BGPPeer, Node, SecretKeyRef

A = IPv4Address


def node(
    name: str,
    ip: str | None,
    *,
    labels: dict[str, str] | None = None,
    asn: int | None = None,
    cluster: str | None = None,
) -> Node:
    bgp: dict[str, Any] = {}
    if ip is not None:
        bgp["ipv4Address"] = f"{ip}/24"
    if asn is not None:
        bgp["asNumber"] = asn
    if cluster is not None:
        bgp["routeReflectorClusterID"] = cluster
    doc: dict[str, Any] = {
        "apiVersion": "projectcalico.org/v3",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"bgp": bgp} if bgp else {},
    }
    return Node.from_document(doc)


def bgpconfig(name: str = "default", **spec: Any) -> BGPConfiguration:
    return BGPConfiguration.from_document(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "BGPConfiguration",
            "metadata": {"name": name},
            "spec": spec,
        }
    )


def bgppeer(name: str, **spec: Any) -> BGPPeer:
    return BGPPeer.from_document(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "BGPPeer",
            "metadata": {"name": name},
            "spec": spec,
        }
    )


def peers_of(cfg: SpeakerConfig) -> dict[str, BGPPeerSpec]:
    return {str(p.address): p for p in cfg.peers}


def types_of(cfg: SpeakerConfig) -> dict[str, str]:
    return {str(p.address): p.peer_type for p in cfg.peers}


THREE = [node("n1", "10.0.0.1"), node("n2", "10.0.0.2"), node("n3", "10.0.0.3")]


# -- mesh ------------------------------------------------------------------------------------


def test_full_mesh_by_default() -> None:
    cfg = compute_speaker_config("n2", THREE).config
    assert types_of(cfg) == {"10.0.0.1": "node-to-node mesh", "10.0.0.3": "node-to-node mesh"}
    assert cfg.asn == 64512 and cfg.router_id == A("10.0.0.2") == cfg.local_address
    assert cfg.listen_port == 179 and cfg.rr_cluster_id is None
    assert [p.node_name for p in cfg.peers] == ["n1", "n3"]


def test_mesh_passive_side_is_the_lower_address() -> None:
    """The higher address dials: each pair has exactly one active side."""
    peers = peers_of(compute_speaker_config("n2", THREE).config)
    assert peers["10.0.0.1"].passive is False  # we (.2) dial .1
    assert peers["10.0.0.3"].passive is True  # .3 dials us


def test_mesh_disabled_no_peers() -> None:
    cfg = compute_speaker_config("n1", THREE, [bgpconfig(nodeToNodeMeshEnabled=False)]).config
    assert cfg.peers == ()


def test_nodes_without_address_are_not_peers() -> None:
    nodes = [*THREE, node("n4", None)]
    assert "n4" not in {p.node_name for p in compute_speaker_config("n1", nodes).config.peers}


def test_local_node_without_address_or_resource_is_an_error() -> None:
    with pytest.raises(BGPConfigError, match="ipv4Address"):
        compute_speaker_config("n4", [*THREE, node("n4", None)])
    with pytest.raises(BGPConfigError, match="no Node resource"):
        compute_speaker_config("ghost", THREE)


def test_global_and_node_as_numbers() -> None:
    nodes = [node("n1", "10.0.0.1"), node("n2", "10.0.0.2", asn=65002)]
    cfg = compute_speaker_config("n1", nodes, [bgpconfig(asNumber=65000)]).config
    assert cfg.asn == 65000
    assert peers_of(cfg)["10.0.0.2"].asn == 65002
    assert compute_speaker_config("n2", nodes, [bgpconfig(asNumber=65000)]).config.asn == 65002


def test_listen_ports_global_and_per_node() -> None:
    configs = [bgpconfig(listenPort=1790), bgpconfig("node.n3", listenPort=1791)]
    cfg = compute_speaker_config("n1", THREE, configs).config
    assert cfg.listen_port == 1790
    assert {a: p.port for a, p in peers_of(cfg).items()} == {"10.0.0.2": 1790, "10.0.0.3": 1791}
    assert compute_speaker_config("n3", THREE, configs).config.listen_port == 1791


def test_default_timers_and_graceful_restart() -> None:
    plan = compute_speaker_config("n1", THREE, hold_time=9, keepalive=3, graceful_restart=30)
    assert all(p.hold_time == 9 and p.keepalive == 3 for p in plan.config.peers)
    assert plan.config.graceful_restart == 30


# -- route reflectors (Calico's documented recipe) -----------------------------------------------

RR_NODES = [
    node("rr1", "10.0.0.1", labels={"route-reflector": "true"}, cluster="244.0.0.1"),
    node("rr2", "10.0.0.2", labels={"route-reflector": "true"}, cluster="244.0.0.1"),
    node("c3", "10.0.0.3"),
    node("c4", "10.0.0.4"),
    node("c5", "10.0.0.5"),
]
RECIPE = bgppeer(
    "peer-with-route-reflectors", nodeSelector="all()", peerSelector="route-reflector == 'true'"
)


def test_reflector_recipe_with_mesh_disabled_client_side() -> None:
    configs = [bgpconfig(nodeToNodeMeshEnabled=False)]
    cfg = compute_speaker_config("c3", RR_NODES, configs, [RECIPE]).config
    assert types_of(cfg) == {"10.0.0.1": "route reflector", "10.0.0.2": "route reflector"}
    assert not any(p.route_reflector_client for p in cfg.peers)
    assert cfg.rr_cluster_id is None


def test_reflector_recipe_reflector_side() -> None:
    configs = [bgpconfig(nodeToNodeMeshEnabled=False)]
    cfg = compute_speaker_config("rr1", RR_NODES, configs, [RECIPE]).config
    assert cfg.rr_cluster_id == A("244.0.0.1") and cfg.is_route_reflector
    peers = peers_of(cfg)
    assert set(peers) == {"10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"}
    # Clients are rr clients; the other reflector of the same cluster is not.
    assert {a for a, p in peers.items() if p.route_reflector_client} == {
        "10.0.0.3",
        "10.0.0.4",
        "10.0.0.5",
    }
    assert peers["10.0.0.2"].peer_type == "node specific"
    # The reverse peerings are node specific, as calicoctl shows them on a reflector.
    assert peers["10.0.0.3"].peer_type == "node specific"


def test_reflectors_never_mesh_and_mesh_skips_reflectors() -> None:
    """With the mesh still on (before the user disables it) clients mesh among themselves,
    and reflectors have only their BGPPeer sessions (Calico's processMeshPeers)."""
    client = compute_speaker_config("c3", RR_NODES).config
    assert types_of(client) == {"10.0.0.4": "node-to-node mesh", "10.0.0.5": "node-to-node mesh"}
    assert compute_speaker_config("rr1", RR_NODES).config.peers == ()
    with_recipe = compute_speaker_config("c3", RR_NODES, [], [RECIPE]).config
    assert types_of(with_recipe) == {
        "10.0.0.1": "route reflector",
        "10.0.0.2": "route reflector",
        "10.0.0.4": "node-to-node mesh",
        "10.0.0.5": "node-to-node mesh",
    }


def test_reflectors_of_different_clusters_are_each_others_clients() -> None:
    nodes = [
        node("rr1", "10.0.0.1", labels={"rr": "y"}, cluster="244.0.0.1"),
        node("rr2", "10.0.0.2", labels={"rr": "y"}, cluster="244.0.0.2"),
    ]
    peer = bgppeer("rr-mesh", nodeSelector="rr == 'y'", peerSelector="rr == 'y'")
    cfg = compute_speaker_config("rr1", nodes, [], [peer]).config
    spec = peers_of(cfg)["10.0.0.2"]
    assert spec.route_reflector_client is True
    assert spec.peer_type == "route reflector"  # it reflects for us as well


def test_external_ibgp_peer_of_a_reflector_is_a_client_ebgp_is_not() -> None:
    peers = [
        bgppeer("ibgp", peerIP="192.168.9.1", asNumber=64512, nodeSelector="has(route-reflector)"),
        bgppeer("ebgp", peerIP="192.168.9.2", asNumber=65001, nodeSelector="has(route-reflector)"),
    ]
    cfg = compute_speaker_config("rr1", RR_NODES, [], peers).config
    got = peers_of(cfg)
    assert got["192.168.9.1"].route_reflector_client is True
    assert got["192.168.9.2"].route_reflector_client is False
    assert got["192.168.9.1"].node_name is None and got["192.168.9.1"].passive is False


# -- explicit BGPPeers ----------------------------------------------------------------------------


def test_global_peer_with_peer_ip() -> None:
    tor = bgppeer("tor", peerIP="192.168.1.1", asNumber=63400, holdTime="9s", keepaliveTime="3s")
    cfg = compute_speaker_config("n1", THREE, [], [tor]).config
    spec = peers_of(cfg)["192.168.1.1"]
    assert (spec.peer_type, spec.asn, spec.hold_time, spec.keepalive) == ("global", 63400, 9, 3)
    assert spec.port == 179 and spec.node_name is None and not spec.passive


def test_node_specific_peer_by_name_and_by_selector() -> None:
    nodes = [
        node("n1", "10.0.0.1", labels={"rack": "a"}),
        node("n2", "10.0.0.2", labels={"rack": "b"}),
    ]
    peers = [
        bgppeer("tor-a", peerIP="192.168.1.1", asNumber=65001, nodeSelector="rack == 'a'"),
        bgppeer("tor-b", peerIP="192.168.2.1", asNumber=65002, node="n2"),
    ]
    one = peers_of(compute_speaker_config("n1", nodes, [], peers).config)
    two = peers_of(compute_speaker_config("n2", nodes, [], peers).config)
    assert one["192.168.1.1"].peer_type == "node specific" and "192.168.2.1" not in one
    assert two["192.168.2.1"].peer_type == "node specific" and "192.168.1.1" not in two


def test_peer_ip_with_port_is_used() -> None:
    tor = bgppeer("tor", peerIP="192.168.1.1:1179", asNumber=65001)
    assert (
        peers_of(compute_speaker_config("n1", THREE, [], [tor]).config)["192.168.1.1"].port == 1179
    )


def test_peer_ip_of_a_node_gives_the_reverse_peering() -> None:
    """A BGPPeer from n1 to n3's address (same AS) makes n3 peer back with n1."""
    configs = [bgpconfig(nodeToNodeMeshEnabled=False)]
    peer = bgppeer("to-n3", peerIP="10.0.0.3", asNumber=64512, node="n1")
    one = peers_of(compute_speaker_config("n1", THREE, configs, [peer]).config)
    three = peers_of(compute_speaker_config("n3", THREE, configs, [peer]).config)
    two = peers_of(compute_speaker_config("n2", THREE, configs, [peer]).config)
    assert one["10.0.0.3"].node_name == "n3" and one["10.0.0.3"].passive is True
    assert three["10.0.0.1"].peer_type == "node specific" and three["10.0.0.1"].passive is False
    assert two == {}


def test_global_wins_over_node_specific_and_first_name_wins() -> None:
    peers = [
        bgppeer("b-node", peerIP="192.168.1.1", asNumber=65009, node="n1"),
        bgppeer("z-global", peerIP="192.168.1.1", asNumber=65001),
        bgppeer("a-global", peerIP="192.168.1.1", asNumber=65000),
    ]
    spec = peers_of(compute_speaker_config("n1", THREE, [], peers).config)["192.168.1.1"]
    assert (spec.peer_type, spec.asn) == ("global", 65000)


def test_mesh_wins_over_a_bgppeer_to_the_same_node() -> None:
    peer = bgppeer("all-to-all", peerSelector="all()")
    plan = compute_speaker_config("n1", THREE, [], [peer])
    assert set(types_of(plan.config).values()) == {"node-to-node mesh"}
    assert any("mesh session is kept" in note for note in plan.notes)


def test_nobody_peers_with_itself() -> None:
    peer = bgppeer("all", peerSelector="all()")
    cfg = compute_speaker_config("n1", THREE, [bgpconfig(nodeToNodeMeshEnabled=False)], [peer])
    assert "10.0.0.1" not in peers_of(cfg.config)


def test_ipv6_peer_is_skipped_with_a_note() -> None:
    plan = compute_speaker_config("n1", THREE, [], [bgppeer("v6", peerIP="fd00::1", asNumber=1)])
    assert all(p.address.version == 4 for p in plan.config.peers)
    assert any("IPv6" in n for n in plan.notes)


def test_passwords_inline_secret_and_unresolved() -> None:
    peers = [
        bgppeer("inline", peerIP="192.168.1.1", asNumber=1, password="s3cret"),
        bgppeer(
            "secret",
            peerIP="192.168.1.2",
            asNumber=1,
            password={"secretKeyRef": {"name": "bgp", "key": "pw"}},
        ),
    ]

    def resolve(ref: SecretKeyRef) -> str | None:
        return "from-secret" if (ref.name, ref.key) == ("bgp", "pw") else None

    got = peers_of(compute_speaker_config("n1", THREE, [], peers, resolve_secret=resolve).config)
    assert got["192.168.1.1"].password == "s3cret"
    assert got["192.168.1.2"].password == "from-secret"
    assert "s3cret" not in repr(got["192.168.1.1"])
    plan = compute_speaker_config("n1", THREE, [], peers)
    assert peers_of(plan.config)["192.168.1.2"].password is None
    assert any("could not be read" in n for n in plan.notes)


def test_bgppeer_hold_time_overrides_and_default_keepalive_adapts() -> None:
    peer = bgppeer("short", peerIP="192.168.1.1", asNumber=1, holdTime="6s")
    spec = peers_of(compute_speaker_config("n1", THREE, [], [peer], keepalive=30).config)[
        "192.168.1.1"
    ]
    assert spec.hold_time == 6 and spec.keepalive is None and spec.effective_keepalive == 2


def test_result_independent_of_input_order() -> None:
    peers = [RECIPE, bgppeer("tor", peerIP="192.168.1.1", asNumber=65001)]
    one = compute_speaker_config("c3", RR_NODES, [], peers)
    two = compute_speaker_config("c3", list(reversed(RR_NODES)), [], list(reversed(peers)))
    assert one == two


# -- properties -------------------------------------------------------------------------------


@st.composite
def clusters(draw: st.DrawFn) -> tuple[list[Node], list[BGPConfiguration], list[BGPPeer]]:
    count = draw(st.integers(2, 7))
    nodes = []
    for i in range(1, count + 1):
        labels = draw(
            st.fixed_dictionaries(
                {}, optional={"rr": st.just("y"), "rack": st.sampled_from(["a", "b"])}
            )
        )
        cluster = draw(st.sampled_from([None, None, "244.0.0.1", "244.0.0.2"]))
        asn = draw(st.sampled_from([None, None, 65000]))
        ip = draw(st.sampled_from([f"10.0.0.{i}", f"10.0.0.{i}", None]))
        nodes.append(node(f"n{i}", ip, labels=labels, asn=asn, cluster=cluster))
    mesh = draw(st.booleans())
    selectors = ["all()", "rr == 'y'", "rack == 'a'", "!has(rr)", "rack == 'b'"]
    peers = []
    for j in range(draw(st.integers(0, 3))):
        spec: dict[str, Any] = {"peerSelector": draw(st.sampled_from(selectors))}
        if draw(st.booleans()):
            spec["nodeSelector"] = draw(st.sampled_from(selectors))
        peers.append(bgppeer(f"p{j}", **spec))
    return nodes, [bgpconfig(nodeToNodeMeshEnabled=mesh)], peers


@given(clusters())
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_peering_between_nodes_is_symmetric(
    cluster: tuple[list[Node], list[BGPConfiguration], list[BGPPeer]],
) -> None:
    """Both ends of every node-to-node session agree: each lists the other, with the other's
    AS; exactly one side dials; a reflector's client sees the reflector as such."""
    nodes, configs, peers = cluster
    plans: dict[str, SpeakerConfig] = {}
    for n in nodes:
        if n.spec.bgp is not None and n.spec.bgp.ipv4_address:
            plans[n.name] = compute_speaker_config(n.name, nodes, configs, peers).config
    for name, cfg in plans.items():
        for spec in cfg.peers:
            if spec.node_name is None:
                continue
            other = plans[spec.node_name]
            back = other.peer(cfg.local_address)
            assert back is not None, f"{name} peers with {spec.node_name} but not back"
            assert spec.asn == other.asn and back.asn == cfg.asn
            assert spec.passive != back.passive
            assert spec.address != cfg.local_address
            if spec.route_reflector_client:
                assert cfg.is_route_reflector
            if back.route_reflector_client and not spec.route_reflector_client:
                assert spec.peer_type == "route reflector" or spec.asn != cfg.asn
