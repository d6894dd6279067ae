"""Faults in a node's kernel, repaired (issue 17, item 8): an uplink flap, a foreign route delete.

A flap (the uplink down for a few seconds, then up) flushes every IPv4 route through it,
silently (no RTM_DELROUTE, docs/agent.md): the agent's own routes (BGP mode routes pod blocks
through the uplink) come back from the agent's kernel monitor; the node's default route, the
lab's, comes back from the node's network keeper (as a host's network manager would). Without
it proxy ARP for 169.254.1.1 stops answering and the node's pods lose their gateway for good
once their ARP entry expires: the flap case flushes the pod's neighbour table to make that
moment now.

A route of the agent's deleted by someone else (``ip route del``) comes back at once, each kind
(a block learned over BGP through the uplink, a pod's /32 through its ``cali`` interface, the
node's own block's blackhole); a route that is not the agent's is never touched, and one
deleted by someone else stays deleted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from ipaddress import IPv4Network

import pytest
from faults_e2e import DEFAULT, OURS, FaultLab, ms, report, wait_for
from lab_e2e import LabCli, lab_cli

FLAP = 3.0  # seconds down
REPAIR = 3.0  # generous on a shared machine; bench/repair.py measures the real figure


@pytest.fixture
def cli() -> Iterator[LabCli]:
    with lab_cli() as c:
        yield c


@pytest.mark.parametrize(
    ("mode", "node", "pod"), [("ipip", "node2", "pod2"), ("bgp", "node1", "pod1")]
)
def test_uplink_flap_routes_default_route_and_traffic_come_back(
    cli: LabCli, mode: str, node: str, pod: str
) -> None:
    fl = FaultLab.up(cli, "--nodes", "2", "--mode", mode, stem="flap")
    status = json.loads(cli.run("status", "--name", fl.name, "-o", "json").stdout)
    for n in status["nodes"]:
        keepers = [p for p in n["processes"] if p["role"] == "keeper"]
        assert len(keepers) == 1 and keepers[0]["alive"], n
    time.sleep(0.5)  # first passes and grace periods over
    before = fl.routes(node)
    ours = {dst for dst, r in before.items() if r.proto == OURS}
    assert DEFAULT in before and ours
    through_uplink = {d for d in ours if before[d].oif == before[DEFAULT].oif}
    if mode == "bgp":
        assert fl.block_of("pod2" if node == "node1" else "pod1") in through_uplink
    with fl.route_watch(node) as watch:
        fl.on(node, "ip", "link", "set", "eth0", "down")
        time.sleep(FLAP)
        table = watch.table()
        assert DEFAULT not in table  # flushed with the link, silently
        assert not through_uplink & table.keys()
        fl.on(node, "ip", "link", "set", "eth0", "up")
        t0 = time.monotonic()
        routes_back = default_back = None
        while routes_back is None or default_back is None:
            table = watch.table()
            now = time.monotonic() - t0
            if routes_back is None and ours <= {d for d, r in table.items() if r.proto == OURS}:
                routes_back = now
            if default_back is None and DEFAULT in table:
                default_back = now
            assert now < REPAIR, (
                f"not within {REPAIR:.0f} s of link up: {node}'s default route "
                f"({'back' if default_back is not None else 'missing'}) and every route of the "
                f"agent (missing: {sorted(map(str, ours - table.keys()))})"
            )
            time.sleep(0.002)
    after = fl.routes(node)
    assert after[DEFAULT].gateway == before[DEFAULT].gateway
    assert {d: after[d] for d in ours} == {d: before[d] for d in ours}  # the same routes
    # The pod must ARP for its gateway again now: proxy ARP answers only with the route back.
    fl.on(pod, "ip", "neigh", "flush", "all")
    traffic = wait_for("pod1 -> pod2 after the flap", lambda: fl.pings("pod1", "pod2"), 10)
    assert fl.pings("pod2", "pod1")
    flushed = (
        f"{len(through_uplink)} flushed with the link, all back in {ms(routes_back)}"
        if through_uplink
        else "none through eth0, all in place"
    )
    report(
        f"uplink-flap ({mode})",
        f"{node} eth0 down {FLAP:.0f} s, then up: {len(ours)} routes of the agent ({flushed}), "
        f"default route back in {ms(default_back)}; pod1 -> pod2 {ms(traffic)} after the "
        "pod's neighbour flush",
    )
    fl.down()  # keepers stopped with the rest


def test_foreign_route_delete_is_repaired_and_foreign_routes_are_left_alone(cli: LabCli) -> None:
    fl = FaultLab.up(cli, "--nodes", "2", "--mode", "bgp", stem="rdel")
    time.sleep(0.5)
    kept, gone = IPv4Network("198.51.100.0/24"), IPv4Network("203.0.113.0/24")
    for net in (kept, gone):  # routes that are not tortie's (proto static: an admin's)
        fl.on("node1", "ip", "route", "add", str(net), "via", "192.168.49.1", "proto", "static")
    before = fl.routes("node1")
    ours = {d: r for d, r in before.items() if r.proto == OURS}
    pod1 = IPv4Network(f"{fl.lab.address('pod1')}/32")
    cases = {
        "block via BGP": fl.block_of("pod2"),  # <block> via node2 dev eth0
        "pod /32": pod1,  # <pod1> dev caliX scope link
        "own blackhole": fl.block_of("pod1"),  # blackhole <block>
    }
    assert set(cases.values()) <= ours.keys(), ours
    took = {}
    with fl.route_watch("node1") as watch:
        for what, dst in cases.items():
            fl.on("node1", "ip", "route", "del", str(dst))
            took[what] = watch.until(f"{dst} ({what}) back", lambda t, d=dst: d in t, REPAIR)
            time.sleep(0.2)
        fl.on("node1", "ip", "route", "del", str(gone))  # someone else's delete of theirs
        quiet = max(1.5, 3 * max(took.values()))
        time.sleep(quiet)
        table = watch.table()
    assert gone not in table, "the agent re-added a route that is not its own"
    assert table[kept] == before[kept], "the agent changed a route that is not its own"
    assert {d: r for d, r in table.items() if r.proto == OURS} == ours  # each exactly as before
    assert fl.pings("pod1", "pod2") and fl.pings("pod2", "pod1")
    report(
        "route-delete",
        ", ".join(f"{what} back in {ms(t)}" for what, t in took.items())
        + f"; a foreign route kept as it was, a foreign delete not undone ({quiet:.1f} s)",
    )
    fl.down()
