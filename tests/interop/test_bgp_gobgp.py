"""GoBGP (Debian ``gobgpd``) as an external peer of a tortie node (a ToR in another AS).

The node's BGPPeer says ``peerIP: 10.99.0.9, asNumber: 65009``; GoBGP runs in its own
namespace, passive, and is checked with its own CLI (``gobgp global rib``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "netns" / "bgp"))
from bgp_lab import Events, Lab, block, lab, node_ip, sh, wait_for

from tortie.bgp.exabgp import ExaBGPSpeaker
from tortie.bgp.peering import compute_speaker_config
from tortie.bgp.status import fetch_status
from tortie.bgp.types import LearnedRoute, RouteAdded, RouteRemoved
from tortie.model.resources import BGPPeer, Node

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
    pytest.mark.skipif(shutil.which("gobgpd") is None, reason="gobgpd is not installed"),
]

TOR = 9
TOR_AS = 65009
EXTERNAL = IPv4Network("10.250.0.0/24")

GOBGP_CONF = """\
[global.config]
  as = {tor_as}
  router-id = "{tor_ip}"
  port = 179
  local-address-list = ["{tor_ip}"]

[[neighbors]]
  [neighbors.config]
    neighbor-address = "{node_ip}"
    peer-as = 64512
{auth}
  [neighbors.timers.config]
    hold-time = 9
    keepalive-interval = 3
    connect-retry = 1
  [neighbors.transport.config]
    passive-mode = true
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
"""


@pytest.fixture
def the_lab() -> Iterator[Lab]:
    with lab() as L:
        yield L


def gobgp(the_lab: Lab, *args: str) -> str:
    """GoBGP's CLI in its namespace; a gRPC deadline on a loaded machine is retried."""
    for attempt in range(3):
        try:
            return sh("nsenter", f"--net=/run/netns/{the_lab.ns(f'n{TOR}')}", "gobgp", *args)
        except RuntimeError as exc:
            if "deadline exceeded" not in str(exc) or attempt == 2:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")


def gobgp_ready(the_lab: Lab) -> bool:
    """gobgpd answers its API (it takes a moment to start, longer on a loaded machine)."""
    try:
        gobgp(the_lab, "global")
    except RuntimeError:
        return False
    return True


def gobgp_rib(the_lab: Lab) -> dict[str, list[str]]:
    """``gobgp global rib -j``: prefix -> next hops."""
    doc: Any = json.loads(gobgp(the_lab, "global", "rib", "-a", "ipv4", "-j") or "{}")
    out: dict[str, list[str]] = {}
    for prefix, paths in doc.items():
        for path in paths:
            for attr in path.get("attrs", []):
                if "nexthop" in attr:
                    out.setdefault(prefix, []).append(attr["nexthop"])
    return out


@pytest.mark.parametrize("password", [None, "s3cr et;{x}"], ids=["plain", "md5"])
def test_gobgp_peer_learns_and_teaches(the_lab: Lab, password: str | None) -> None:
    the_lab.node(1)
    the_lab.node(TOR)
    conf = the_lab.state_dir("gobgp") / "gobgpd.toml"
    auth = f'    auth-password = "{password}"' if password else ""
    conf.write_text(
        GOBGP_CONF.format(tor_as=TOR_AS, tor_ip=node_ip(TOR), node_ip=node_ip(1), auth=auth)
    )
    the_lab.popen(
        ["gobgpd", "-f", str(conf), "-p", "--api-hosts=127.0.0.1:50051", "--pprof-disable"],
        the_lab.ns(f"n{TOR}"),
        the_lab.state_dir("gobgp") / "gobgpd.log",
    )
    wait_for(lambda: gobgp_ready(the_lab), 20, "gobgpd's API", step=0.1)
    node = Node.from_document(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "Node",
            "metadata": {"name": "n1"},
            "spec": {"bgp": {"ipv4Address": f"{node_ip(1)}/24"}},
        }
    )
    tor = BGPPeer.from_document(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "BGPPeer",
            "metadata": {"name": "tor"},
            "spec": {
                "peerIP": str(node_ip(TOR)),
                "asNumber": TOR_AS,
                "holdTime": "9s",
                **({"password": password} if password else {}),
            },
        }
    )
    config = compute_speaker_config("n1", [node], [], [tor]).config
    assert [(p.peer_type, p.asn, p.passive) for p in config.peers] == [("global", TOR_AS, False)]
    events = Events()
    sp = ExaBGPSpeaker(config, the_lab.state_dir("n1"), events, netns=the_lab.ns("n1"))
    the_lab.cleanups.append(lambda: sp.stop(withdraw=False, timeout=3))
    t0 = time.monotonic()
    sp.start()
    sp.set_announced([block(1), block(1, 1)])
    # GoBGP learns the node's blocks, next hop the node (checked with GoBGP's own CLI).
    wait_for(
        lambda: (
            gobgp_rib(the_lab).get(str(block(1))) == [str(node_ip(1))]
            and str(block(1, 1)) in gobgp_rib(the_lab)
        ),
        20,
        "GoBGP's RIB has the node's blocks",
        step=0.1,
    )
    print(f"GoBGP has both blocks {time.monotonic() - t0:.2f}s after the speaker started")
    assert "Establ" in gobgp(the_lab, "neighbor")
    # GoBGP originates a route: the node learns it, next hop GoBGP.
    gobgp(the_lab, "global", "rib", "add", str(EXTERNAL), "-a", "ipv4")
    learned = LearnedRoute(EXTERNAL, node_ip(TOR), node_ip(TOR))
    wait_for(lambda: learned in sp.learned_routes(), 10, "the node learns GoBGP's route")
    assert RouteAdded(learned) in events.of(RouteAdded)
    # Withdrawals, both ways.
    gobgp(the_lab, "global", "rib", "del", str(EXTERNAL), "-a", "ipv4")
    wait_for(lambda: learned not in sp.learned_routes(), 10, "GoBGP's withdrawal")
    assert RouteRemoved(learned) in events.of(RouteRemoved)
    sp.withdraw(block(1, 1))
    wait_for(
        lambda: str(block(1, 1)) not in gobgp_rib(the_lab), 10, "the node's withdrawal", step=0.1
    )
    assert str(block(1)) in gobgp_rib(the_lab)
    rows = fetch_status(the_lab.state_dir("n1"))
    assert [(r.address, r.peer_type, r.state) for r in rows] == [
        (str(node_ip(TOR)), "global", "up")
    ]
    # The node leaves: GoBGP drops its routes at once.
    sp.stop(withdraw=True)
    wait_for(lambda: not gobgp_rib(the_lab), 5, "GoBGP's RIB empty after the node left", step=0.1)
