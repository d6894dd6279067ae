"""Repair after an uplink flap, in real labs (issue 17, item 8).

A flap (the uplink down for a few seconds, then up) flushes every IPv4 route through it: the
agent's own routes (BGP mode routes pod blocks through the uplink) come back from the agent's
kernel monitor; the node's default route, the lab's, comes back from the node's network keeper
(as a host's network manager would). Without it proxy ARP for 169.254.1.1 stops answering and
the node's pods lose their gateway for good once their ARP entry expires: each test flushes the
pod's neighbour table to make that moment now.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lab_e2e import LabCli, footprint, lab_cli, unique_name

from tortie.lab.naming import lab_prefix
from tortie.lab.ops import Lab

FLAP = 3.0  # seconds down
REPAIR = 3.0  # generous on a shared machine; bench/repair.py measures the real figure


@pytest.fixture
def cli() -> Iterator[LabCli]:
    with lab_cli() as c:
        yield c


def on(lab: Lab, name: str, *argv: str) -> str:
    cmd, env = lab.exec_argv(name, list(argv))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=30)
    return proc.stdout


def routes(lab: Lab, node: str) -> dict[str, dict[str, object]]:
    return {r["dst"]: r for r in json.loads(on(lab, node, "ip", "-j", "-4", "route", "show"))}


def pings(lab: Lab, src: str, dst: str) -> bool:
    argv = lab.ping_argv(src, dst, count=3, interval=0.2, wait=1)
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0


def wait_for(what: str, ok: object, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if ok():  # type: ignore[operator]
            return time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout:.0f} s: {what}")


def flap_and_check(cli: LabCli, mode: str, node: str, pod: str) -> None:
    name = unique_name("r")
    cli.run("up", "--name", name, "-q", "--nodes", "2", "--mode", mode, timeout=120)
    lab = cli.open(name)
    status = json.loads(cli.run("status", "--name", name, "-o", "json").stdout)
    for n in status["nodes"]:
        keepers = [p for p in n["processes"] if p["role"] == "keeper"]
        assert len(keepers) == 1 and keepers[0]["alive"], n
    wait_for("pod1 <-> pod2", lambda: pings(lab, "pod1", "pod2"), 20)
    before = routes(lab, node)
    ours = {dst for dst, r in before.items() if r.get("protocol") == "80"}
    assert "default" in before
    on(lab, node, "ip", "link", "set", "eth0", "down")
    time.sleep(FLAP)
    assert "default" not in routes(lab, node)  # flushed with the link, silently
    on(lab, node, "ip", "link", "set", "eth0", "up")
    wait_for(
        f"{node}'s default route and every route of the agent back",
        lambda: {"default", *ours} <= routes(lab, node).keys(),
        REPAIR,
    )
    assert routes(lab, node)["default"]["gateway"] == before["default"]["gateway"]
    # The pod must ARP for its gateway again now: proxy ARP answers only with the route back.
    subprocess.run(lab.nsenter(pod, ["ip", "neigh", "flush", "all"]), check=True)
    wait_for("pod1 <-> pod2 after the flap", lambda: pings(lab, "pod1", "pod2"), 10)
    assert pings(lab, "pod2", "pod1")
    token, lab_dir = lab.state.token, Path(lab.state.lab_dir)
    cli.run("down", "--name", name, "-q")
    left = footprint(lab_dir, lab_prefix(lab.state.lab_id or 0), token)
    assert left.empty, left  # keepers stopped with the rest


def test_ipip_pods_keep_their_gateway_after_an_uplink_flap(cli: LabCli) -> None:
    flap_and_check(cli, "ipip", "node2", "pod2")


def test_bgp_mode_routes_come_back_after_an_uplink_flap(cli: LabCli) -> None:
    flap_and_check(cli, "bgp", "node1", "pod1")
