"""ExaBGP speakers in node namespaces: exchange, withdraw, failure, reload, restart, status.

Each test builds its own lab (``tt<4 hex>`` namespaces on one bridge, removed at teardown)
and stops the speakers it started by PID. Timers are short (hold 3 s) so failures show
within seconds; latency bounds are generous because other test runs share the 2 cores.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest
from bgp_lab import Events, Lab, block, lab, node_ip, sh, wait_for

from tortie.bgp.exabgp import ExaBGPSpeaker
from tortie.bgp.liveness import process_state
from tortie.bgp.peering import compute_speaker_config
from tortie.bgp.status import fetch, fetch_status, render_status
from tortie.bgp.types import (
    BGPPeerSpec,
    LearnedRoute,
    PeerChanged,
    RouteAdded,
    RouteRemoved,
    SpeakerConfig,
    SpeakerHealth,
)
from tortie.model.resources import Node

HOLD = 3


@pytest.fixture
def the_lab() -> Iterator[Lab]:
    with lab() as L:
        yield L


def mesh_peer(i: int, j: int, hold: int = HOLD) -> BGPPeerSpec:
    return BGPPeerSpec(
        node_ip(j),
        64512,
        "node-to-node mesh",
        hold_time=hold,
        passive=node_ip(j) > node_ip(i),
        node_name=f"n{j}",
    )


def speaker(
    L: Lab, i: int, peers: list[int], *, gr: int = 0, events: Events | None = None
) -> ExaBGPSpeaker:
    if L.ns(f"n{i}") not in L.namespaces:
        L.node(i)
    cfg = SpeakerConfig(
        f"n{i}",
        node_ip(i),
        node_ip(i),
        64512,
        peers=tuple(mesh_peer(i, j) for j in peers),
        graceful_restart=gr,
    )
    sp = ExaBGPSpeaker(cfg, L.state_dir(f"n{i}"), events, netns=L.ns(f"n{i}"))
    L.cleanups.append(lambda: sp.stop(withdraw=False, timeout=3))
    return sp


def is_up(sp: ExaBGPSpeaker, peer: int) -> bool:
    return any(r.address == str(node_ip(peer)) and r.state == "up" for r in sp.peer_status())


def route(i: int, via: int, j: int = 0) -> LearnedRoute:
    """Node ``via``'s block ``j`` as learned directly from node ``via``... by someone."""
    return LearnedRoute(block(i, j), node_ip(via), node_ip(via))


def test_two_speakers_exchange_and_withdraw(the_lab: Lab) -> None:
    ev1, ev2 = Events(), Events()
    s1 = speaker(the_lab, 1, [2], events=ev1)
    s2 = speaker(the_lab, 2, [1], events=ev2)
    t0 = time.monotonic()
    s1.start()
    s2.start()
    s1.set_announced([block(1)])
    s2.set_announced([block(2), block(2, 1)])
    wait_for(lambda: is_up(s1, 2) and is_up(s2, 1), 10, "session up")
    session_up = time.monotonic() - t0
    wait_for(lambda: s2.learned_routes() == {route(1, 1)}, 5, "n2 learns n1's block")
    wait_for(lambda: len(s1.learned_routes()) == 2, 5, "n1 learns n2's blocks")
    # Announce -> learned on the other side, timed by the event callback.
    latencies = []
    for j in range(10):
        prefix = IPv4Network(f"10.245.{j}.0/26")
        expected = LearnedRoute(prefix, node_ip(1), node_ip(1))
        t = time.monotonic()
        s1.announce(prefix)
        stamp = wait_for(
            lambda e=expected, t=t: next(
                (ts for ts, ev in ev2.items if ev == RouteAdded(e) and ts >= t), None
            ),
            5,
            f"RouteAdded {expected}",
            step=0.002,
        )
        latencies.append(stamp - t)
        s1.withdraw(prefix)
        wait_for(lambda e=expected: e not in s2.learned_routes(), 5, "withdrawn")
    assert max(latencies) < 1.0, latencies
    # set_announced is a diff; an identical call sends nothing and changes nothing.
    s1.set_announced([block(1)])
    s1.set_announced([block(1)])
    assert s1.announced() == {block(1)}
    # The speakers never touch the kernel: no pod routes in either namespace.
    for i in (1, 2):
        assert "10.244." not in sh("ip", "-n", the_lab.ns(f"n{i}"), "route", "show", "table", "all")
    latencies.sort()
    print(
        f"session up {session_up:.2f}s; announce->learned p50 {latencies[5] * 1000:.1f} ms, "
        f"max {latencies[-1] * 1000:.1f} ms"
    )
    # Status, from the helper's socket, the way `tortie node status` reads it.
    rows = fetch_status(the_lab.state_dir("n1"))
    assert [(r.address, r.peer_type, r.state, r.info) for r in rows] == [
        ("10.99.0.2", "node-to-node mesh", "up", "Established")
    ]
    assert "| 10.99.0.2    | node-to-node mesh | up    |" in render_status(rows, True)
    assert any(isinstance(e, SpeakerHealth) and e.running for _, e in ev1.items)


def test_dead_speaker_routes_are_withdrawn_within_the_hold_time(the_lab: Lab) -> None:
    """Without graceful restart, a speaker killed outright: peers see TCP close at once."""
    ev2 = Events()
    s1 = speaker(the_lab, 1, [2, 3])
    s2 = speaker(the_lab, 2, [1, 3], events=ev2)
    s3 = speaker(the_lab, 3, [1, 2])
    for sp in (s1, s2, s3):
        sp.start()
    s1.set_announced([block(1)])
    s3.set_announced([block(3)])
    wait_for(lambda: len(s2.learned_routes()) == 2, 10, "n2 learns both")
    pid = s1.pid
    assert pid is not None
    s1._daemon.stop(timeout=2, sig=signal.SIGKILL)  # the speaker dies; nobody restarts it
    t = time.monotonic()
    wait_for(lambda: route(1, 1) not in s2.learned_routes(), HOLD + 1, "n1's block withdrawn")
    print(f"withdrawn {time.monotonic() - t:.2f}s after the kill")
    assert route(3, 3) in s2.learned_routes() and route(1, 1) not in s3.learned_routes()
    assert RouteRemoved(route(1, 1)) in ev2.of(RouteRemoved)


def test_dead_node_routes_are_withdrawn_within_the_hold_time_even_with_gr(the_lab: Lab) -> None:
    """A node that goes silent (cable cut): the hold timer expires, a NOTIFICATION is sent,
    and graceful restart does not apply (RFC 4724)."""
    s1 = speaker(the_lab, 1, [2], gr=120)
    s2 = speaker(the_lab, 2, [1], gr=120)
    s1.start()
    s2.start()
    s1.set_announced([block(1)])
    wait_for(lambda: route(1, 1) in s2.learned_routes(), 10, "learned")
    time.sleep(0.2)
    the_lab.link(1, up=False)
    t = time.monotonic()
    wait_for(lambda: route(1, 1) not in s2.learned_routes(), HOLD + 4, "withdrawn at hold expiry")
    elapsed = time.monotonic() - t
    print(f"withdrawn {elapsed:.2f}s after the cable cut (hold {HOLD}s)")
    assert elapsed <= HOLD + 2.5  # the hold timer, plus a loaded 2-core machine's slack
    row = next(r for r in s2.peer_status() if r.address == str(node_ip(1)))
    assert row.state == "start" and "notification" in row.info.lower()
    # The cable comes back: the session and the route return without any restart.
    the_lab.link(1, up=True)
    wait_for(lambda: route(1, 1) in s2.learned_routes(), 15, "route back after reconnect")


def _since(sp: ExaBGPSpeaker, peer: int) -> float | None:
    return next(r.since for r in sp.peer_status() if r.address == str(node_ip(peer)))


def _node(i: int) -> Node:
    doc: dict[str, Any] = {
        "apiVersion": "projectcalico.org/v3",
        "kind": "Node",
        "metadata": {"name": f"n{i}"},
        "spec": {"bgp": {"ipv4Address": f"{node_ip(i)}/24"}},
    }
    return Node.from_document(doc)


def test_mesh_join_and_leave_by_reload_keeps_existing_sessions(the_lab: Lab) -> None:
    """n3 joins the mesh: n1 and n2 add it by config reload, their own session stays up, and
    n3 receives routes announced before it existed (re-announce on up). Then it leaves."""
    for i in (1, 2, 3):
        the_lab.node(i)
    ev1, ev2 = Events(), Events()

    def plan(i: int, members: list[int]) -> SpeakerConfig:
        cfg = compute_speaker_config(f"n{i}", [_node(m) for m in members], hold_time=HOLD)
        return cfg.config

    def make(i: int, members: list[int], events: Events | None = None) -> ExaBGPSpeaker:
        sp = ExaBGPSpeaker(
            plan(i, members), the_lab.state_dir(f"n{i}"), events, netns=the_lab.ns(f"n{i}")
        )
        the_lab.cleanups.append(lambda: sp.stop(withdraw=False, timeout=3))
        return sp

    s1, s2 = make(1, [1, 2], ev1), make(2, [1, 2], ev2)
    s1.start()
    s2.start()
    s1.set_announced([block(1)])
    s2.set_announced([block(2)])
    wait_for(lambda: route(1, 1) in s2.learned_routes(), 10, "n1-n2 session")
    wait_for(lambda: is_up(s1, 2) and is_up(s2, 1), 5, "both agents see the session")
    since = _since(s1, 2), _since(s2, 1)
    ev1.items.clear()
    ev2.items.clear()
    s3 = make(3, [1, 2, 3])
    s3.start()
    s3.set_announced([block(3)])
    s1.update_config(plan(1, [1, 2, 3]))
    s2.update_config(plan(2, [1, 2, 3]))
    wait_for(lambda: len(s3.learned_routes()) == 2, 10, "n3 learns n1 and n2 (re-announce on up)")
    wait_for(lambda: route(3, 3) in s1.learned_routes(), 5, "n1 learns n3")
    wait_for(lambda: route(3, 3) in s2.learned_routes(), 5, "n2 learns n3")
    assert (_since(s1, 2), _since(s2, 1)) == since, "the n1-n2 session was reset by the reload"
    for ev, other in ((ev1, "10.99.0.2"), (ev2, "10.99.0.1")):
        assert not [e for e in ev.of(PeerChanged) if e.status.address == other]
        assert not ev.of(RouteRemoved)
    # n3 leaves: its routes go from n1 and n2, nothing else moves.
    s3.stop(withdraw=True)
    s1.update_config(plan(1, [1, 2]))
    s2.update_config(plan(2, [1, 2]))
    wait_for(lambda: route(3, 3) not in s1.learned_routes(), 5, "n3's block gone from n1")
    assert route(2, 2) in s1.learned_routes() and route(1, 1) in s2.learned_routes()
    assert [r.address for r in s1.peer_status()] == ["10.99.0.2"]
    assert (_since(s1, 2), _since(s2, 1)) == since


def test_speaker_restart_does_not_withdraw_routes_with_graceful_restart(the_lab: Lab) -> None:
    """ExaBGP on n1 crashes and is restarted by the supervisor: n2 keeps n1's routes (stale)
    throughout, then drops only the one n1 no longer announces after its End-of-RIB; n1's
    agent keeps what it learned from n2 throughout as well."""
    ev1, ev2 = Events(), Events()
    s1 = speaker(the_lab, 1, [2], gr=30, events=ev1)
    s2 = speaker(the_lab, 2, [1], gr=30, events=ev2)
    s1._daemon.min_backoff = s1._daemon._backoff = 0.2
    s1.start()
    s2.start()
    s1.set_announced([block(1), block(1, 1)])
    s2.set_announced([block(2)])
    wait_for(lambda: len(s2.learned_routes()) == 2 and len(s1.learned_routes()) == 1, 10, "sync")
    ev1.items.clear()
    ev2.items.clear()
    # While n1's speaker is down, its agent withdraws one block.
    old_pid = s1.pid
    assert old_pid is not None
    os.kill(old_pid, signal.SIGKILL)
    wait_for(lambda: s1.pid not in (None, old_pid) and s1.running, 10, "supervisor restart")
    s1.set_announced([block(1)])
    wait_for(lambda: is_up(s1, 2) and is_up(s2, 1), 10, "session back")
    wait_for(lambda: route(1, 1, 1) not in s2.learned_routes(), 5, "the withdrawn block goes")
    time.sleep(0.5)
    assert route(1, 1) in s2.learned_routes()
    assert ev2.of(RouteRemoved) == [RouteRemoved(route(1, 1, 1))]  # nothing else ever left
    assert not ev2.of(RouteAdded)  # nor came back: it never went
    assert route(2, 2) in s1.learned_routes()
    assert not ev1.of(RouteRemoved), ev1.of(RouteRemoved)
    health = [e for e in ev1.of(SpeakerHealth)]
    assert [h.running for h in health] == [False, True]


def test_agent_restart_adopts_the_running_speaker(the_lab: Lab) -> None:
    """The agent restarts (detach, then a new ExaBGPSpeaker on the same state directory):
    ExaBGP is adopted, no session moves, and the new agent gets the learned routes."""
    s1 = speaker(the_lab, 1, [2])
    s2 = speaker(the_lab, 2, [1])
    s1.start()
    s2.start()
    s2.set_announced([block(2)])
    wait_for(lambda: route(2, 2) in s1.learned_routes() and is_up(s1, 2), 10, "sync")
    wait_for(lambda: is_up(s2, 1), 5, "n2 sees the session")
    pid, since = s1.pid, _since(s2, 1)
    s1.set_announced([block(1)])
    wait_for(lambda: route(1, 1) in s2.learned_routes(), 5, "n1 announces")
    s1.detach()
    ev = Events()
    again = ExaBGPSpeaker(s1.config, the_lab.state_dir("n1"), ev, netns=the_lab.ns("n1"))
    the_lab.cleanups.append(lambda: again.stop(withdraw=False, timeout=3))
    again.start()
    assert again.pid == pid
    wait_for(lambda: RouteAdded(route(2, 2)) in ev.of(RouteAdded), 5, "snapshot delivered")
    again.set_announced([block(1)])
    time.sleep(0.3)
    assert _since(s2, 1) == since and route(1, 1) in s2.learned_routes()
    assert any(isinstance(e, SpeakerHealth) and "adopted" in e.detail for _, e in ev.items)


def test_deliberate_stop_withdraws_at_once_even_with_graceful_restart(the_lab: Lab) -> None:
    s1 = speaker(the_lab, 1, [2], gr=120)
    s2 = speaker(the_lab, 2, [1], gr=120)
    s1.start()
    s2.start()
    s1.set_announced([block(1)])
    wait_for(lambda: route(1, 1) in s2.learned_routes(), 10, "learned")
    t = time.monotonic()
    s1.stop(withdraw=True)
    wait_for(lambda: route(1, 1) not in s2.learned_routes(), 2, "withdrawn before the stop")
    print(f"withdrawn {time.monotonic() - t:.2f}s after stop(withdraw=True)")
    assert IPv4Address("10.99.0.1") not in {r.peer for r in s2.learned_routes()}


def _children(pid: int) -> list[int]:
    path = f"/proc/{pid}/task/{pid}/children"
    try:
        return [int(x) for x in open(path).read().split()]
    except OSError:
        return []


def test_helper_crash_restarts_exabgp_and_routes_survive(the_lab: Lab) -> None:
    """The helper dies: ExaBGP respawns it, the new helper sees it is a respawn (the routes
    received so far are lost with the old one) and stops ExaBGP; the supervisor restarts it,
    and with graceful restart nobody loses a route meanwhile."""
    ev1, ev2 = Events(), Events()
    s1 = speaker(the_lab, 1, [2], gr=30, events=ev1)
    s2 = speaker(the_lab, 2, [1], gr=30, events=ev2)
    s1._daemon.min_backoff = s1._daemon._backoff = 0.2
    s1.start()
    s2.start()
    s1.set_announced([block(1)])
    s2.set_announced([block(2)])
    wait_for(
        lambda: route(2, 2) in s1.learned_routes() and route(1, 1) in s2.learned_routes(),
        10,
        "sync",
    )
    ev1.items.clear()
    ev2.items.clear()
    exabgp_pid = s1.pid
    assert exabgp_pid is not None
    helpers = wait_for(lambda: _children(exabgp_pid), 5, "the helper process")
    os.kill(helpers[0], signal.SIGKILL)
    wait_for(lambda: s1.pid not in (None, exabgp_pid) and s1.running, 15, "ExaBGP restarted")
    wait_for(lambda: is_up(s1, 2) and is_up(s2, 1), 10, "session back")
    time.sleep(0.5)
    assert route(2, 2) in s1.learned_routes() and route(1, 1) in s2.learned_routes()
    assert not ev1.of(RouteRemoved) and not ev2.of(RouteRemoved)
    assert "respawned under ExaBGP" in (the_lab.state_dir("n1") / "exabgp.log").read_text()


def _speaker_held(the_lab: Lab, i: int, peers: list[int], hold: int, **kw: Any) -> ExaBGPSpeaker:
    """Like :func:`speaker`, with hold time ``hold`` on every session."""
    sp = speaker(the_lab, i, peers, **kw)
    cfg = sp.config
    held = SpeakerConfig(
        cfg.node_name,
        cfg.router_id,
        cfg.local_address,
        cfg.asn,
        peers=tuple(mesh_peer(i, j, hold) for j in peers),
        graceful_restart=cfg.graceful_restart,
    )
    sp.update_config(held)
    return sp


def test_a_frozen_exabgp_is_reported_then_restarted_before_peers_drop_its_routes(
    the_lab: Lab,
) -> None:
    """ExaBGP stopped with SIGSTOP (issue 17, 9b): within seconds `node status` says the
    speaker does not answer (no "Established"), and after a third of the hold time (10 s at
    30 s) the speaker kills it and the supervisor restarts it. That is before n2's hold timer
    (20-30 s after the freeze) ends the session, so with graceful restart n2 never drops n1's
    route; once the new ExaBGP is up, status is healthy again."""
    ev1, ev2 = Events(), Events()
    s1 = _speaker_held(the_lab, 1, [2], 30, gr=60, events=ev1)
    s2 = _speaker_held(the_lab, 2, [1], 30, gr=60, events=ev2)
    s1._daemon.min_backoff = s1._daemon._backoff = 0.2
    s1.start()
    s2.start()
    s1.set_announced([block(1)])
    s2.set_announced([block(2)])
    wait_for(lambda: route(1, 1) in s2.learned_routes() and is_up(s1, 2), 15, "sync")
    rows, check = fetch(the_lab.state_dir("n1"))
    assert check.responding and [r.info for r in rows] == ["Established"]
    ev1.items.clear()
    ev2.items.clear()
    frozen = s1.pid
    assert frozen is not None
    t0 = time.monotonic()
    os.kill(frozen, signal.SIGSTOP)  # the ExaBGP this test started, by its PID
    try:
        wait_for(lambda: not s1.liveness().responding, 5, "the speaker to notice")
        noticed = time.monotonic() - t0
        rows, check = fetch(the_lab.state_dir("n1"))
        text = render_status(rows, True, speaker=check)
        assert not check.responding and "stopped" in check.detail, check
        assert "NOT RESPONDING" in text and "Established" not in text, text
        assert any(
            isinstance(e, SpeakerHealth) and not e.running and "stopped" in e.detail
            for _, e in ev1.items
        )
        wait_for(lambda: s1.pid not in (None, frozen) and s1.running, 20, "the restart")
        restarted = time.monotonic() - t0
    finally:
        if process_state(frozen) == "T":
            os.kill(frozen, signal.SIGKILL)  # the restart did not happen: do not leave it
    wait_for(lambda: is_up(s1, 2) and is_up(s2, 1), 15, "the session back")
    wait_for(lambda: fetch(the_lab.state_dir("n1"))[1].responding, 10, "a healthy status")
    rows, _ = fetch(the_lab.state_dir("n1"))
    assert [r.info for r in rows] == ["Established"]
    assert route(1, 1) in s2.learned_routes() and route(2, 2) in s1.learned_routes()
    assert not ev2.of(RouteRemoved), ev2.of(RouteRemoved)  # graceful restart held throughout
    assert s1.liveness().responding
    print(f"frozen ExaBGP noticed after {noticed:.1f} s, restarted after {restarted:.1f} s")
    assert 9.0 <= restarted < 20.0


def test_a_stopped_exabgp_that_continues_is_healthy_again_without_a_restart(
    the_lab: Lab,
) -> None:
    s1 = speaker(the_lab, 1, [2])  # hold 3 s: the restart threshold is 10 s
    s2 = speaker(the_lab, 2, [1])
    s1.start()
    s2.start()
    wait_for(lambda: is_up(s1, 2) and is_up(s2, 1), 15, "session up")
    pid = s1.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # the ExaBGP this test started, by its PID
    try:
        wait_for(lambda: not fetch(the_lab.state_dir("n1"))[1].responding, 5, "status says so")
        wait_for(lambda: not s1.liveness().responding, 5, "the speaker to notice")
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: s1.liveness().responding, 5, "the speaker to see it answer")
    wait_for(lambda: fetch(the_lab.state_dir("n1"))[1].responding, 10, "a healthy status")
    assert s1.pid == pid  # continued in time: not restarted
