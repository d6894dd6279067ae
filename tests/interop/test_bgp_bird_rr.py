"""BIRD 2 as route reflector for ExaBGP nodes, configured by Calico's rules.

The cluster: n1 is a reflector (``routeReflectorClusterID``, label ``route-reflector``), n2..n4
are ordinary nodes; the node-to-node mesh is off and Calico's documented BGPPeer
``peer-with-route-reflectors`` (all nodes -> reflectors) applies. Every config comes from
:func:`tortie.bgp.peering.compute_speaker_config`; routes are checked with BIRD's own
``birdc`` as well as through tortie's speakers.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "netns" / "bgp"))
from bgp_lab import Events, Lab, block, lab, node_ip, sh, wait_for

from tortie.bgp.bird import BirdSpeaker
from tortie.bgp.exabgp import ExaBGPSpeaker
from tortie.bgp.peering import compute_speaker_config
from tortie.bgp.status import fetch_status
from tortie.bgp.types import LearnedRoute, PeerChanged, RouteRemoved
from tortie.model.resources import BGPConfiguration, BGPPeer, Node

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
    pytest.mark.skipif(shutil.which("bird") is None, reason="bird2 is not installed"),
]

HOLD = 3
CLUSTER = "244.0.0.1"


def _node(i: int, reflector: bool = False) -> Node:
    bgp: dict[str, Any] = {"ipv4Address": f"{node_ip(i)}/24"}
    labels = {}
    if reflector:
        bgp["routeReflectorClusterID"] = CLUSTER
        labels["route-reflector"] = "true"
    return Node.from_document(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "Node",
            "metadata": {"name": f"n{i}", "labels": labels},
            "spec": {"bgp": bgp},
        }
    )


CONFIGS = [
    BGPConfiguration.from_document(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "BGPConfiguration",
            "metadata": {"name": "default"},
            "spec": {"nodeToNodeMeshEnabled": False},
        }
    )
]
RECIPE = [
    BGPPeer.from_document(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "BGPPeer",
            "metadata": {"name": "peer-with-route-reflectors"},
            "spec": {"nodeSelector": "all()", "peerSelector": "route-reflector == 'true'"},
        }
    )
]


class Cluster:
    def __init__(self, the_lab: Lab, clients: list[int]) -> None:
        self.lab = the_lab
        self.members = [1, *clients]
        self.events: dict[int, Events] = {}
        self.clients: dict[int, ExaBGPSpeaker] = {}
        the_lab.node(1)
        self.events[1] = Events()
        self.rr = BirdSpeaker(
            self.plan(1), the_lab.state_dir("n1"), self.events[1], netns=the_lab.ns("n1")
        )
        the_lab.cleanups.append(lambda: self.rr.stop(withdraw=False, timeout=3))
        for i in clients:
            self.add_client(i)

    def nodes(self) -> list[Node]:
        return [_node(i, reflector=i == 1) for i in self.members]

    def plan(self, i: int, gr: int = 0) -> Any:
        return compute_speaker_config(
            f"n{i}", self.nodes(), CONFIGS, RECIPE, hold_time=HOLD, graceful_restart=gr
        ).config

    def add_client(self, i: int, gr: int = 0) -> ExaBGPSpeaker:
        if i not in self.members:
            self.members.append(i)
        self.lab.node(i)
        self.events[i] = Events()
        sp = ExaBGPSpeaker(
            self.plan(i, gr),
            self.lab.state_dir(f"n{i}"),
            self.events[i],
            netns=self.lab.ns(f"n{i}"),
        )
        self.lab.cleanups.append(lambda: sp.stop(withdraw=False, timeout=3))
        self.clients[i] = sp
        return sp

    def birdc(self, *args: str) -> str:
        return sh("birdc", "-s", str(self.lab.state_dir("n1") / "bird.ctl"), *args)


@pytest.fixture
def the_lab() -> Iterator[Lab]:
    with lab() as L:
        yield L


def reflected(i: int, j: int = 0) -> LearnedRoute:
    """Node i's block as a client learns it from the reflector: original next hop."""
    return LearnedRoute(block(i, j), node_ip(i), node_ip(1))


def test_bird_reflects_between_exabgp_clients(the_lab: Lab) -> None:
    c = Cluster(the_lab, [2, 3, 4])
    assert c.rr.config.rr_cluster_id == IPv4Address(CLUSTER)
    assert {p.peer_type for p in c.clients[2].config.peers} == {"route reflector"}
    t0 = time.monotonic()
    c.rr.start()
    for i, sp in c.clients.items():
        sp.start()
        sp.set_announced([block(i)])
    c.rr.set_announced([block(1)])
    for i, sp in c.clients.items():
        want = {reflected(j) for j in c.clients if j != i} | {
            LearnedRoute(block(1), node_ip(1), node_ip(1))
        }
        wait_for(lambda sp=sp, want=want: sp.learned_routes() == want, 15, f"n{i} converges")
    print(f"3 clients + reflector converged {time.monotonic() - t0:.2f}s after start")
    # BIRD's own view, through its own client: the original next hop is kept.
    routes = c.birdc("show", "route", "all")
    assert "10.244.2.0/26" in routes and "BGP.next_hop: 10.99.0.2" in routes
    # The reflector's agent learns every client's block from that client.
    wait_for(
        lambda: (
            c.rr.learned_routes()
            == {LearnedRoute(block(i), node_ip(i), node_ip(i)) for i in (2, 3, 4)}
        ),
        5,
        "the reflector's learned routes",
    )
    # A new block on n2 is reflected to n3 and n4.
    t = time.monotonic()
    c.clients[2].announce(block(2, 1))
    for i in (3, 4):
        wait_for(lambda i=i: reflected(2, 1) in c.clients[i].learned_routes(), 5, "reflected")
    print(f"announce on n2 -> learned on n3 and n4: {(time.monotonic() - t) * 1000:.0f} ms")
    c.clients[2].withdraw(block(2, 1))
    for i in (3, 4):
        wait_for(lambda i=i: reflected(2, 1) not in c.clients[i].learned_routes(), 5, "gone")
    # Nothing in any kernel: BIRD exports nothing there and ExaBGP never does.
    for i in (1, 2, 3, 4):
        assert "10.244." not in sh("ip", "-n", the_lab.ns(f"n{i}"), "route", "show", "table", "all")
    # node status from both kinds of speaker.
    rr_rows = fetch_status(the_lab.state_dir("n1"))
    assert [(r.address, r.peer_type, r.state, r.info) for r in rr_rows] == [
        (str(node_ip(i)), "node specific", "up", "Established") for i in (2, 3, 4)
    ]
    client_rows = fetch_status(the_lab.state_dir("n2"))
    assert [(r.address, r.peer_type, r.state) for r in client_rows] == [
        ("10.99.0.1", "route reflector", "up")
    ]


def test_reflector_withdraws_a_dead_clients_routes_within_the_hold_time(the_lab: Lab) -> None:
    c = Cluster(the_lab, [2, 3])
    c.rr.start()
    for i, sp in c.clients.items():
        sp.start()
        sp.set_announced([block(i)])
    wait_for(lambda: reflected(2) in c.clients[3].learned_routes(), 15, "converged")
    time.sleep(0.2)
    the_lab.link(2, up=False)  # n2 dies silently
    t = time.monotonic()
    wait_for(lambda: reflected(2) not in c.clients[3].learned_routes(), HOLD + 4, "withdrawn")
    elapsed = time.monotonic() - t
    print(f"dead client's block gone from n3 {elapsed:.2f}s after the cut (hold {HOLD}s)")
    assert elapsed <= HOLD + 2.5  # the hold timer, plus a loaded 2-core machine's slack
    assert "10.244.2.0/26" not in c.birdc("show", "route")


def test_reflector_reconfigure_adds_a_client_without_touching_the_others(the_lab: Lab) -> None:
    c = Cluster(the_lab, [2, 3])
    c.rr.start()
    for i, sp in c.clients.items():
        sp.start()
        sp.set_announced([block(i)])
    wait_for(lambda: reflected(3) in c.clients[2].learned_routes(), 15, "converged")
    wait_for(lambda: all(r.state == "up" for r in c.rr.peer_status()), 5, "status polled")
    since = {r.address: r.since for r in c.rr.peer_status()}
    c.events[2].items.clear()
    n4 = c.add_client(4)
    n4.start()
    n4.set_announced([block(4)])
    c.rr.update_config(c.plan(1))  # BIRD: rewrite + configure
    for sp in (c.clients[2], c.clients[3]):
        sp.update_config(c.plan(2 if sp is c.clients[2] else 3))  # unchanged: no-op
    wait_for(lambda: reflected(4) in c.clients[2].learned_routes(), 10, "n4 reflected to n2")
    wait_for(lambda: len(n4.learned_routes()) == 2, 10, "n4 learns n2 and n3")
    rows = {r.address: r for r in c.rr.peer_status()}
    assert {a: rows[a].since for a in since} == since, "an existing session was reset"
    assert not c.events[2].of(RouteRemoved)
    assert not [e for e in c.events[2].of(PeerChanged) if e.status.state != "up"]


def test_reflector_restart_keeps_clients_routes_with_graceful_restart(the_lab: Lab) -> None:
    """BIRD crashes (SIGKILL, so no Cease) and the supervisor restarts it with -R: the
    clients keep every reflected route (stale) until BIRD is back, then resync."""
    c = Cluster(the_lab, [])
    for i in (2, 3):
        c.add_client(i, gr=60)
    c.rr = BirdSpeaker(
        c.plan(1, gr=60), the_lab.state_dir("n1"), c.events[1], netns=the_lab.ns("n1")
    )
    c.rr._daemon.min_backoff = c.rr._daemon._backoff = 0.2
    the_lab.cleanups.append(lambda: c.rr.stop(withdraw=False, timeout=3))
    c.rr.start()
    for i, sp in c.clients.items():
        sp.start()
        sp.set_announced([block(i)])
    wait_for(lambda: reflected(3) in c.clients[2].learned_routes(), 15, "converged")
    c.events[2].items.clear()
    old = c.rr.pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: c.rr.pid not in (None, old) and c.rr.running, 10, "BIRD restarted")
    wait_for(lambda: all(r.state == "up" for r in c.clients[2].peer_status()), 15, "back up")
    time.sleep(1.0)
    assert reflected(3) in c.clients[2].learned_routes()
    assert not c.events[2].of(RouteRemoved), c.events[2].of(RouteRemoved)
    assert "-R" in Path(f"/proc/{c.rr.pid}/cmdline").read_bytes().decode(errors="replace")


def test_agent_restart_adopts_the_running_bird(the_lab: Lab) -> None:
    c = Cluster(the_lab, [2])
    c.rr.start()
    c.clients[2].start()
    c.clients[2].set_announced([block(2)])
    c.rr.set_announced([block(1)])
    wait_for(lambda: len(c.rr.learned_routes()) == 1, 15, "the reflector learns n2")
    wait_for(lambda: all(r.state == "up" for r in c.clients[2].peer_status()), 5, "up")
    pid, since = c.rr.pid, c.clients[2].peer_status()[0].since
    c.rr.detach()
    events = Events()
    again = BirdSpeaker(c.rr.config, the_lab.state_dir("n1"), events, netns=the_lab.ns("n1"))
    the_lab.cleanups.append(lambda: again.stop(withdraw=False, timeout=3))
    again.set_announced([block(1), block(1, 1)])  # before start: applied by configure
    again.start()
    assert again.pid == pid
    wait_for(lambda: len(again.learned_routes()) == 1, 5, "learned routes delivered again")
    own = LearnedRoute(block(1, 1), node_ip(1), node_ip(1))  # the reflector's own block
    wait_for(lambda: own in c.clients[2].learned_routes(), 5, "the new block reaches n2")
    assert c.clients[2].peer_status()[0].since == since
