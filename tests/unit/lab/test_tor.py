"""``--tor``: the ToR's BIRD config (checked by BIRD itself), its manifests, and the sessions
Calico's peering rules derive from them."""

from __future__ import annotations

import shutil
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from tortie.bgp.peering import compute_speaker_config
from tortie.lab.errors import LabBuildError, LabOptionError
from tortie.lab.manifests import (
    bgp_configuration,
    bgp_peers,
    cluster_manifests,
    lab_writes_nodes,
    node_manifest,
    node_manifests,
)
from tortie.lab.topology import LabOptions, Topology, build_topology
from tortie.lab.tor import (
    DEFAULT_HOLD_TIME,
    birdc_argv,
    check_config,
    hold_time_from_env,
    next_hop_policy,
    render_config,
    tor_paths,
)
from tortie.model.resources import BGPConfiguration, BGPPeer

needs_bird = pytest.mark.skipif(shutil.which("bird") is None, reason="bird2 is not installed")


def tor_lab(mode: str = "bgp", nodes: int = 4, subnets: int = 2) -> Topology:
    options = LabOptions(mode=mode, nodes=nodes, subnets=subnets, tor=True, agents=True)  # type: ignore[arg-type]
    return build_topology(options, 3)


# -- options ---------------------------------------------------------------------------------


def test_tor_with_reflectors_is_refused() -> None:
    with pytest.raises(LabOptionError, match="--tor and --route-reflectors"):
        build_topology(LabOptions(nodes=3, tor=True, agents=True, route_reflectors=1), 1)


@pytest.mark.parametrize(
    "kw", [{"agents": False}, {"agents": True, "wire_pods": "manual"}], ids=["no-agents", "manual"]
)
def test_tor_needs_agents_and_cni(kw: dict[str, object]) -> None:
    with pytest.raises(LabOptionError, match="--tor needs the node agents"):
        build_topology(LabOptions(nodes=2, tor=True, **kw), 1)  # type: ignore[arg-type]


def test_tor_silences_the_bgp_across_subnets_warning() -> None:
    assert not tor_lab().warnings
    assert tor_lab().router.tor and tor_lab().router.tor_as == 64513


@pytest.mark.parametrize(
    ("env", "want"),
    [
        ({}, DEFAULT_HOLD_TIME),
        ({"TORTIE_BGP_HOLD_TIME": "3"}, 3),
        ({"TORTIE_BGP_HOLD_TIME": "0"}, 0),
    ],
)
def test_hold_time_from_env(env: dict[str, str], want: int) -> None:
    assert hold_time_from_env(env) == want


@pytest.mark.parametrize("bad", ["x", "2", "70000", "-1"])
def test_bad_hold_time_is_refused(bad: str) -> None:
    with pytest.raises(LabOptionError, match="TORTIE_BGP_HOLD_TIME"):
        hold_time_from_env({"TORTIE_BGP_HOLD_TIME": bad})


# -- manifests and the peering they give -------------------------------------------------------


def test_tor_manifests_one_peer_per_rack_mesh_off() -> None:
    t = tor_lab()
    assert bgp_configuration(t).spec.node_to_node_mesh_enabled is False
    peers = {p.name: p for p in bgp_peers(t)}
    assert set(peers) == {"rack-1-tor", "rack-2-tor"}
    rack2 = peers["rack-2-tor"].to_document()["spec"]
    assert rack2 == {
        "nodeSelector": "rack == 'rack-2'",
        "peerIP": "192.168.50.1",
        "asNumber": 64513,
    }
    assert [node_manifest(t, n).metadata.labels["rack"] for n in t.nodes] == [
        "rack-1",
        "rack-1",
        "rack-2",
        "rack-2",
    ]
    assert lab_writes_nodes(t)
    assert not lab_writes_nodes(build_topology(LabOptions(nodes=2), 1))


def test_every_node_peers_with_its_racks_tor_only() -> None:
    """What each agent will compute from exactly what the lab writes."""
    t = tor_lab()
    configs = [r for r in cluster_manifests(t) if isinstance(r, BGPConfiguration)]
    peers = [r for r in cluster_manifests(t) if isinstance(r, BGPPeer)]
    nodes = node_manifests(t)
    for node in t.nodes:
        config = compute_speaker_config(node.name, nodes, configs, peers).config
        (peer,) = config.peers
        assert peer.address == t.subnet(node.subnet).gateway
        assert peer.asn == 64513 and config.asn == 64512
        assert peer.peer_type == "node specific"
        assert not peer.passive  # the node dials; the ToR is passive
        assert not config.is_route_reflector


# -- the BIRD config ---------------------------------------------------------------------------


def test_config_has_one_protocol_per_node_on_its_subnets_leg() -> None:
    text = render_config(tor_lab(), hold_time=9)
    assert "router id 192.168.49.1;" in text
    assert "protocol bgp node1 from tor_node {" in text
    node3 = text[text.index("protocol bgp node3") :].split("}", 1)[0]
    assert "local 192.168.50.1 as 64513;" in node3
    assert "neighbor 192.168.50.2 as 64512;" in node3
    assert "passive on;" in text
    assert "hold time 9;" in text and "keepalive time 3;" in text
    assert "error wait time 1, 10;" in text
    assert "graceful restart on;" in text


def test_config_exports_to_the_kernel_and_overrides_the_nodes_as() -> None:
    text = render_config(tor_lab())
    kernel = text[text.index("protocol kernel") :].split("}\n", 1)[0]
    assert "export where source = RTS_BGP" in kernel and "import none" in kernel
    assert "if net ~ [ 10.244.0.0/16+ ] then accept;" in text
    assert "bgp_path.delete(64512);" in text
    assert f"hold time {DEFAULT_HOLD_TIME};" in text


@pytest.mark.parametrize(
    ("mode", "policy"),
    [("bgp", "self"), ("ipip", "keep"), ("crosssubnet", "keep"), ("vxlan", "keep")],
)
def test_next_hop_policy_follows_the_mode(mode: str, policy: str) -> None:
    assert next_hop_policy(mode) == policy  # type: ignore[arg-type]
    text = render_config(tor_lab(mode))
    assert ("next hop keep;" in text) == (policy == "keep")


def test_hold_time_zero_has_no_keepalive() -> None:
    text = render_config(tor_lab(), hold_time=0)
    assert "hold time 0;" in text and "keepalive time" not in text


@needs_bird
@pytest.mark.parametrize("mode", ["bgp", "ipip", "crosssubnet", "vxlan"])
@pytest.mark.parametrize(("nodes", "subnets"), [(1, 1), (4, 2), (10, 3)])
def test_bird_accepts_the_config(tmp_path: Path, mode: str, nodes: int, subnets: int) -> None:
    path = tmp_path / "bird.conf"
    path.write_text(render_config(tor_lab(mode, nodes, subnets), hold_time=3))
    check_config(path)  # bird -p -c


@needs_bird
def test_a_broken_config_is_reported_with_birds_message(tmp_path: Path) -> None:
    path = tmp_path / "bird.conf"
    path.write_text(render_config(tor_lab()).replace("passive on;", "passive maybe;"))
    with pytest.raises(LabBuildError, match="BIRD rejects"):
        check_config(path)


def test_paths_live_in_the_lab_dir() -> None:
    paths = tor_paths("/run/tortie/labs/x")
    assert paths.control == Path("/run/tortie/labs/x/tor/bird.ctl")
    assert birdc_argv("/run/tortie/labs/x", "show", "route") == [
        "birdc",
        "-s",
        "/run/tortie/labs/x/tor/bird.ctl",
        "show",
        "route",
    ]


def test_router_id_is_an_address_of_the_router() -> None:
    t = tor_lab(nodes=3, subnets=3)
    text = render_config(t)
    assert f"router id {t.subnets[0].gateway};" in text
    assert IPv4Address("192.168.51.1") == t.subnets[2].gateway
    assert "local 192.168.51.1 as 64513;" in text


# -- the build order ---------------------------------------------------------------------------


def test_up_starts_the_tor_and_writes_the_nodes_before_any_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ToR is listening and every Node carries its rack label when the agents start;
    the ToR's convergence is waited for after the pods."""
    from lab_fake_kernel import FakeKernel

    from tortie.datastore.factory import open_datastore
    from tortie.datastore.resources import ResourceStore
    from tortie.lab import builder
    from tortie.lab import tor as tor_module
    from tortie.lab.registry import LabPaths
    from tortie.lab.state import Journal
    from tortie.model.resources import Node

    (tmp_path / "netns").mkdir()
    paths = LabPaths(root=tmp_path / "labs", ids_dir=tmp_path / "ids", netns_dir=tmp_path / "netns")
    events: list[str] = []

    def fake_start_tor(journal: Journal, topology: Topology, **kw: object) -> object:
        events.append(f"tor hold={kw['hold_time']}")
        from tortie.lab.state import ProcessRecord

        return ProcessRecord("tor", 1, 1, ("bird",))

    def fake_agents(topology: Topology, journal: Journal, *a: object, **kw: object) -> list[object]:
        store = open_datastore(journal.state.datastore or "")
        try:
            racks = [
                (
                    n.metadata.labels.get("rack")
                    if (n := ResourceStore(store).get(Node, s.name))
                    else None
                )
                for s in topology.nodes
            ]
        finally:
            store.close()
        events.append(f"agents racks={racks}")
        return []

    def fake_pods(*a: object, **kw: object) -> list[object]:
        events.append("pods")
        return []

    def fake_converged(*a: object, **kw: object) -> tuple[bool, str]:
        events.append("converged")
        return True, "tor: ok"

    monkeypatch.setattr(builder, "require_cni", lambda agents: None)
    monkeypatch.setattr(tor_module, "start_tor", fake_start_tor)
    monkeypatch.setattr(tor_module, "wait_converged", fake_converged)
    monkeypatch.setattr(builder, "start_node_agents", fake_agents)
    monkeypatch.setattr(builder, "create_pods", fake_pods)
    monkeypatch.setenv("TORTIE_BGP_HOLD_TIME", "3")
    options = LabOptions(name="tor", nodes=3, subnets=2, tor=True, agents=True, mode="bgp")
    state = builder.lab_up(options, paths, kernel=FakeKernel(paths.lab_dir("tor")))
    assert state.phase == "up"
    assert events == [
        "tor hold=3",
        "agents racks=['rack-1', 'rack-1', 'rack-2']",
        "pods",
        "converged",
    ]
    assert "tor" in state.timings and "tor-converged" in state.timings
