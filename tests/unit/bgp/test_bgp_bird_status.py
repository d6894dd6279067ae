"""BIRD CLI parsing, the control-socket client against a fake BIRD, and `node status`."""

from __future__ import annotations

import json
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from datetime import UTC
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from tortie.bgp.bird import BirdControl, BirdError, parse_bgp_routes, parse_protocols
from tortie.bgp.status import fetch_status, format_since, render_status, status_json
from tortie.bgp.types import BGPError, PeerStatus

# Captured from BIRD 2.0.12 over its control socket (timeformat protocol "%s").
SHOW_PROTOCOLS = """\
2002-Name       Proto      Table      State  Since         Info
1002-device1    Device     ---        up     1795693001    
 direct1    Direct     ---        up     1795693001    
 tortie_announce Static     master4    up     1795693001    
 Node_10_99_0_2 BGP        ---        up     1795693001    Established   
 Mesh_10_99_0_3 BGP        ---        start  1795693002    Active        Socket: Connection refused
 RR_10_99_0_4 BGP        ---        start  1795693003    Passive       
0000 
"""  # noqa: W291 - BIRD pads its columns with trailing spaces

SHOW_ROUTES = """\
1007-Table master4:
 10.244.3.0/26        unicast [Node_10_99_0_3 11:36:41.802] * (100) [i]
 \tvia 10.99.0.3 on eth0
1008-\tType: BGP univ
1012-\tBGP.origin: IGP
 \tBGP.as_path: 
 \tBGP.next_hop: 10.99.0.3
 \tBGP.local_pref: 100
1007-                     unicast [Node_10_99_0_2 11:36:41.900] (100) [i]
 \tvia 10.99.0.3 on eth0
1008-\tType: BGP univ
1012-\tBGP.origin: IGP
 \tBGP.next_hop: 10.99.0.3
1007-10.244.2.0/26        unreachable [Node_10_99_0_2 11:36:41.816] * (100) [i]
1008-\tType: BGP univ
1012-\tBGP.next_hop: 192.168.7.7
1007-10.244.9.0/26        unicast [Node_10_99_0_2 11:36:41.816] * (100) [i]
 \tvia 10.99.0.2 on eth0
1008-\tType: BGP univ
0000 
"""  # noqa: W291


def reply_lines(text: str) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    code = 0
    for line in text.splitlines():
        if line[:4].isdigit() and line[4:5] in ("-", " "):
            code = int(line[:4])
            out.append((code, line[5:]))
        else:
            out.append((code, line[1:]))
    return out


def test_parse_protocols() -> None:
    rows = parse_protocols(reply_lines(SHOW_PROTOCOLS))
    bgp = [r for r in rows if r.proto == "BGP"]
    assert [(r.name, r.state, r.since, r.info) for r in bgp] == [
        ("Node_10_99_0_2", "up", 1795693001.0, "Established"),
        ("Mesh_10_99_0_3", "start", 1795693002.0, "Active Socket: Connection refused"),
        ("RR_10_99_0_4", "start", 1795693003.0, "Passive"),
    ]
    assert len(rows) == 6


def test_parse_routes_all_alternatives_and_next_hops() -> None:
    got = parse_bgp_routes(reply_lines(SHOW_ROUTES))
    n = IPv4Network
    assert got == {
        "Node_10_99_0_3": [(n("10.244.3.0/26"), IPv4Address("10.99.0.3"))],
        "Node_10_99_0_2": [
            (n("10.244.3.0/26"), IPv4Address("10.99.0.3")),  # the non-best alternative
            (n("10.244.2.0/26"), IPv4Address("192.168.7.7")),  # unresolved: BGP next hop
            (n("10.244.9.0/26"), IPv4Address("10.99.0.2")),  # no BGP.next_hop: gateway
        ],
    }
    assert parse_bgp_routes([]) == {}


# -- a fake BIRD control socket ---------------------------------------------------------------


class FakeBird:
    """Speaks BIRD's control protocol: greeting, then canned replies per command."""

    def __init__(self, path: Path, replies: dict[str, str]) -> None:
        self.path = path
        self.replies = replies
        self.commands: list[str] = []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(4)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn, conn.makefile("rwb") as f:
                f.write(b"0001 BIRD 2.0.12 ready.\n")
                f.flush()
                for raw in f:
                    command = raw.decode().strip()
                    self.commands.append(command)
                    f.write(self.replies.get(command, "9001 syntax error\n").encode())
                    f.flush()

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="tt-b-") as tmp:
        yield Path(tmp)


def test_control_client_requests_and_errors(short_tmp: Path) -> None:
    fake = FakeBird(short_tmp / "bird.ctl", {"show protocols": SHOW_PROTOCOLS})
    try:
        control = BirdControl(short_tmp / "bird.ctl")
        assert len(parse_protocols(control.request("show protocols"))) == 6
        with pytest.raises(BirdError, match="syntax error"):
            control.request("show nonsense")
        assert len(control.request("show protocols")) == 8  # same connection still fine
        with pytest.raises(BirdError, match="one line"):
            control.request("a\nb")
        control.close()
    finally:
        fake.close()
    with pytest.raises(BirdError, match="cannot reach"):
        BirdControl(short_tmp / "nothing.ctl").request("show status")


# -- status ------------------------------------------------------------------------------------

ROWS = [
    PeerStatus("10.30.0.17", "node-to-node mesh", "up", 1_700_000_000.0, "Established"),
    PeerStatus("172.31.13.116", "global", "start", 1_600_000_000.0, "Connect"),
]


def test_render_status_matches_calicoctl() -> None:
    text = render_status(ROWS, True, now=1_700_000_100.0, tz=UTC)
    assert text == (
        "tortie agent is running.\n"
        "\n"
        "IPv4 BGP status\n"
        "+---------------+-------------------+-------+------------+-------------+\n"
        "| PEER ADDRESS  |     PEER TYPE     | STATE |   SINCE    |    INFO     |\n"
        "+---------------+-------------------+-------+------------+-------------+\n"
        "| 10.30.0.17    | node-to-node mesh | up    | 22:13:20   | Established |\n"
        "| 172.31.13.116 | global            | start | 2020-09-13 | Connect     |\n"
        "+---------------+-------------------+-------+------------+-------------+\n"
    )


def test_render_status_empty_and_not_running() -> None:
    text = render_status([], False)
    assert text.startswith("tortie agent is not running.\n")
    assert "No IPv4 peers found." in text


def test_format_since() -> None:
    assert format_since(None) == ""
    assert format_since(0.0, now=3600.0, tz=UTC) == "00:00:00"
    assert format_since(0.0, now=30 * 3600.0, tz=UTC) == "1970-01-01"


def test_status_json() -> None:
    doc = status_json(ROWS, True)
    assert doc["agentRunning"] is True
    assert doc["ipv4"][0] == {
        "peerAddress": "10.30.0.17",
        "peerType": "node-to-node mesh",
        "state": "up",
        "since": "2023-11-14T22:13:20+00:00",
        "sinceUnix": 1_700_000_000.0,
        "info": "Established",
    }
    json.dumps(doc)


def _serve_once(path: Path, answer: Callable[[bytes], bytes]) -> socket.socket:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def run() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(answer(conn.recv(1024)))

    threading.Thread(target=run, daemon=True).start()
    return server


def test_fetch_status_from_the_exabgp_helper(short_tmp: Path) -> None:
    reply = {
        "type": "status",
        "peers": [
            {
                "address": "10.0.0.2",
                "peer_type": "node-to-node mesh",
                "state": "up",
                "since": 5.0,
                "info": "Established",
            }
        ],
    }
    server = _serve_once(
        short_tmp / "exabgp.sock",
        lambda req: json.dumps(reply).encode() + b"\n" if b"status" in req else b"",
    )
    try:
        assert fetch_status(short_tmp) == [
            PeerStatus("10.0.0.2", "node-to-node mesh", "up", 5.0, "Established")
        ]
    finally:
        server.close()


def test_fetch_status_from_bird(short_tmp: Path) -> None:
    fake = FakeBird(short_tmp / "bird.ctl", {"show protocols": SHOW_PROTOCOLS})
    try:
        rows = fetch_status(short_tmp)
    finally:
        fake.close()
    assert [(r.address, r.peer_type, r.state) for r in rows] == [
        ("10.99.0.2", "node specific", "up"),
        ("10.99.0.3", "node-to-node mesh", "start"),
        ("10.99.0.4", "route reflector", "start"),
    ]


def test_fetch_status_without_a_speaker(short_tmp: Path) -> None:
    with pytest.raises(BGPError, match="no BGP speaker is running"):
        fetch_status(short_tmp)
    (short_tmp / "exabgp.sock").touch()  # a dead socket file
    with pytest.raises(BGPError, match="cannot read the BGP status"):
        fetch_status(short_tmp)
