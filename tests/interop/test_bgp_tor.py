"""BIRD 2 as a ToR router between two subnets, peering with tortie nodes (ExaBGP) over eBGP.

The issue's evidence: the router between the subnets learns the pod blocks and then carries
pod traffic in BGP mode (the seed's fourth drawback), checked in BIRD (``birdc show route
all``: AS path and next hop as the nodes sent them) and in every kernel (the router's and the
nodes'); and a dead node's block leaves the ToR, and through it every other node, within the
hold time. The cluster is a real lab (``tortie lab up --mode bgp --subnets 2 --tor``): real
agents and speakers, pods through the CNI plugin; the ToR's config is
:func:`tortie.lab.tor.render_config`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from tortie.lab.builder import lab_up
from tortie.lab.ops import Lab, open_lab
from tortie.lab.registry import LabPaths
from tortie.lab.teardown import lab_down
from tortie.lab.topology import LabOptions
from tortie.lab.tor import birdc_argv, read_tor, tor_paths

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
    pytest.mark.skipif(shutil.which("bird") is None, reason="bird2 is not installed"),
]

HOLD = 3


@pytest.fixture
def tor_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    monkeypatch.setenv("TORTIE_BGP_HOLD_TIME", str(HOLD))  # the agents' and the ToR's
    paths = LabPaths(root=tmp_path / "labs")
    name = f"tor-{os.getpid()}"
    options = LabOptions(name=name, nodes=4, subnets=2, mode="bgp", tor=True, agents=True)
    try:
        lab_up(options, paths)
        yield open_lab(paths, name)
    finally:
        if paths.lab_dir(name).exists():
            lab_down(paths, name)


def wait_until(what: str, ok: Callable[[], bool], timeout: float = 30.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if ok():
            return time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def sh(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout


def in_ns(lab: Lab, netns: str, *argv: str) -> str:
    return sh("nsenter", f"--net=/run/netns/{netns}", "--", *argv)


def kernel_routes(lab: Lab, netns: str) -> dict[IPv4Network, str]:
    """``ip route`` of a namespace, pod space only: prefix -> the rest of the line."""
    out = {}
    for line in in_ns(
        lab, netns, "ip", "-4", "route", "show", "root", "10.244.0.0/16"
    ).splitlines():
        head, _, rest = line.replace("blackhole ", "").partition(" ")
        out[IPv4Network(head)] = rest
    return out


def blocks(lab: Lab) -> dict[str, IPv4Network]:
    """Node -> the block its pod's address came from."""
    return {
        p.node: IPv4Network(f"{lab.address(p.name)}/26", strict=False) for p in lab.topology.pods
    }


def tx_packets(lab: Lab, netns: str, iface: str) -> int:
    (link,) = json.loads(in_ns(lab, netns, "ip", "-j", "-s", "link", "show", "dev", iface))
    return int(link["stats64"]["tx"]["packets"])


def ping(lab: Lab, src: str, dst: str) -> bool:
    argv = lab.ping_argv(src, dst, count=2, interval=0.2, wait=2)
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0


def test_bird_tor_learns_the_blocks_and_routes_pods_between_subnets(tor_lab: Lab) -> None:
    lab, topo = tor_lab, tor_lab.topology
    router = topo.router.netns
    owned = blocks(lab)

    # BIRD: one Established eBGP session per node; each block from its owner, as sent.
    view = read_tor(tor_paths(lab.state.lab_dir).control)
    assert view.established == ["node1", "node2", "node3", "node4"]
    for node in topo.nodes:
        assert view.routes[owned[node.name]] == [node.ip]
        detail = sh(
            *birdc_argv(lab.state.lab_dir, "show", "route", "for", str(owned[node.name]), "all")
        )
        assert "BGP.as_path: 64512" in detail, detail
        assert f"BGP.next_hop: {node.ip}" in detail, detail
    protocols = sh(*birdc_argv(lab.state.lab_dir, "show", "protocols", "all", "node3"))
    assert "Neighbor AS:      64512" in protocols and "Local AS:         64513" in protocols

    # The router's kernel: every block towards its owner, on the owner's leg.
    r = kernel_routes(lab, router)
    for node in topo.nodes:
        leg = topo.subnet(node.subnet).router_ifname
        assert r[owned[node.name]].startswith(f"via {node.ip} dev {leg} proto bird"), r

    # The nodes' kernels: the same rack direct, the other rack through the ToR (next hop
    # rewritten by BIRD across legs, kept on the same segment).
    def nodes_routed() -> bool:
        for node in topo.nodes:
            k = kernel_routes(lab, node.netns)
            for other in topo.nodes:
                hop = other.ip if other.subnet == node.subnet else node.gateway
                want = "" if other is node else f"via {hop} dev eth0 proto 80"
                if other is not node and not k.get(owned[other.name], "").startswith(want):
                    return False
        return True

    wait_until("every node routes every other block", nodes_routed)

    # Pod traffic across the subnets, natively through the router.
    p3 = IPv4Address(lab.address("pod3"))
    assert f"via {topo.node('node3').ip} dev eth1" in in_ns(
        lab, router, "ip", "route", "get", str(p3)
    )
    before = tx_packets(lab, router, "eth1")
    wait_until(
        "pod1 -> pod3 and pod4 -> pod2",
        lambda: ping(lab, "pod1", "pod3") and ping(lab, "pod4", "pod2"),
    )
    assert tx_packets(lab, router, "eth1") > before
    assert not re.search(r"\btunl0\b", in_ns(lab, topo.nodes[0].netns, "ip", "route"))


def test_a_dead_nodes_block_leaves_the_tor_and_the_nodes_within_the_hold_time(
    tor_lab: Lab,
) -> None:
    lab, topo = tor_lab, tor_lab.topology
    owned = blocks(lab)
    dead = topo.node("node4")
    gone = owned["node4"]
    wait_until(
        "node1 routes node4's block", lambda: gone in kernel_routes(lab, topo.nodes[0].netns)
    )
    # The node dies: its cable is cut (no FIN, no NOTIFICATION: only the hold timer tells).
    in_ns(lab, dead.netns, "ip", "link", "set", "eth0", "down")
    took = wait_until(
        "node4's block gone from the ToR, the router's kernel and node1",
        lambda: (
            gone not in read_tor(tor_paths(lab.state.lab_dir).control).routes
            and gone not in kernel_routes(lab, topo.router.netns)
            and gone not in kernel_routes(lab, topo.nodes[0].netns)
        ),
        HOLD + 10,
    )
    assert took < HOLD + 5, f"{took:.1f}s: the hold time is {HOLD}s"
    view = read_tor(tor_paths(lab.state.lab_dir).control)
    assert "node4" not in view.established and len(view.established) == 3
    for node in ("node1", "node2", "node3"):
        assert owned[node] in view.routes  # the healthy nodes stay
    assert ping(lab, "pod1", "pod3")
