"""The ExaBGP helper: its logic (HelperState) and its I/O (pipes + unix socket), no ExaBGP."""

from __future__ import annotations

import io
import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from tortie.bgp import exabgp_api as api
from tortie.bgp.exabgp_helper import Desired, DesiredPeer, Helper, HelperState, is_respawn

P2, P3 = IPv4Address("10.99.0.2"), IPv4Address("10.99.0.3")
B1, B2 = IPv4Network("10.244.1.0/26"), IPv4Network("10.244.1.64/26")
R3 = IPv4Network("10.244.3.0/26")


def desired(
    *blocks: IPv4Network, gr: int = 120, peers: tuple[IPv4Address, ...] = (P2, P3)
) -> Desired:
    return Desired(
        tuple(
            DesiredPeer(p, "node-to-node mesh", passive=p > IPv4Address("10.99.0.1")) for p in peers
        ),
        frozenset(blocks),
        gr,
    )


def state(*blocks: IPv4Network, gr: int = 120) -> HelperState:
    s = HelperState()
    s.set_desired(desired(*blocks, gr=gr), 0.0)
    s.commands.clear()
    s.events.clear()
    return s


def routes(s: HelperState) -> list[tuple[str, str]]:
    return [(e["op"], e["route"][0]) for e in s.events if e["type"] == "route"]


def test_up_reannounces_everything_then_eor() -> None:
    s = state(B1, B2)
    s.handle(api.State(P2, "up"), 1.0)
    assert s.commands == [
        api.cmd_announce(B1, P2),
        api.cmd_announce(B2, P2),
        api.cmd_eor(P2),
    ]
    assert s.peers[P2].state == "up" and s.peers[P2].info == "Established"
    assert s.events[-1]["type"] == "peer" and s.events[-1]["status"]["state"] == "up"


def test_desired_changes_are_diffs_to_all_neighbours() -> None:
    s = state(B1)
    s.set_desired(desired(B2), 1.0)
    assert s.commands == [api.cmd_announce(B2), api.cmd_withdraw(B1)]
    s.commands.clear()
    s.set_desired(desired(B2), 2.0)
    assert s.commands == []


def test_down_after_up_withdraws_everything_from_that_peer() -> None:
    s = state(gr=0)
    s.handle(api.State(P2, "up"), 1.0)
    s.handle(api.Update(P2, announce=((R3, P3), (B2, P2))), 1.1)
    s.events.clear()
    s.handle(api.State(P2, "down", "closing connection"), 2.0)
    assert sorted(routes(s)) == [("remove", str(B2)), ("remove", str(R3))]
    assert s.peers[P2].state == "start" and "closing connection" in s.peers[P2].info


def test_connect_noise_never_changes_the_state() -> None:
    s = state()
    for _ in range(3):
        s.handle(api.State(P2, "connected"), 1.0)
        s.handle(api.State(P2, "down", "closing connection"), 1.0)
    assert s.events == [] and s.peers[P2].state == "start"
    s.handle(api.State(P2, "down", "Connection refused"), 1.0)
    assert s.events == [] and "Connection refused" in s.peers[P2].info


def test_graceful_restart_keeps_routes_until_end_of_rib() -> None:
    s = state(gr=120)
    s.handle(api.Open(P2, 30), 0.5)
    s.handle(api.State(P2, "up"), 1.0)
    s.handle(api.Update(P2, announce=((R3, P3), (B2, P2))), 1.1)
    s.events.clear()
    s.handle(api.State(P2, "down", "closing connection"), 2.0)  # TCP closed, no NOTIFICATION
    assert routes(s) == [] and s.table.stale_count(P2) == 2
    assert s.next_deadline() == 32.0  # the peer's 30 s, shorter than our 120 s
    s.handle(api.State(P2, "up"), 3.0)
    s.handle(api.Update(P2, announce=((R3, P3),)), 3.1)
    assert routes(s) == []  # refreshed, not re-added
    s.handle(api.Update(P2, eor=True), 3.2)
    assert routes(s) == [("remove", str(B2))]
    assert {"type": "synced", "peer": str(P2)} in s.events


def test_graceful_restart_deadline() -> None:
    s = state(gr=10)
    s.handle(api.Open(P2, 120), 0.5)
    s.handle(api.State(P2, "up"), 1.0)
    s.handle(api.Update(P2, announce=((R3, P3),)), 1.1)
    s.events.clear()
    s.handle(api.State(P2, "down", "peer reset"), 2.0)
    s.expire(11.9)
    assert routes(s) == []
    s.expire(12.0)
    assert routes(s) == [("remove", str(R3))]


@pytest.mark.parametrize(
    "reason", ["notification sent (4,0) Hold timer expired", "notification received (6,2)"]
)
def test_notification_ends_graceful_restart(reason: str) -> None:
    """RFC 4724: a session ended by a NOTIFICATION (hold timer, Cease) is not a restart."""
    s = state(gr=120)
    s.handle(api.Open(P2, 120), 0.5)
    s.handle(api.State(P2, "up"), 1.0)
    s.handle(api.Update(P2, announce=((R3, P3),)), 1.1)
    s.events.clear()
    s.handle(api.State(P2, "down", reason), 2.0)
    assert routes(s) == [("remove", str(R3))]


def test_peer_without_graceful_restart_is_flushed() -> None:
    s = state(gr=120)
    s.handle(api.Open(P2, None), 0.5)
    s.handle(api.State(P2, "up"), 1.0)
    s.handle(api.Update(P2, announce=((R3, P3),)), 1.1)
    s.events.clear()
    s.handle(api.State(P2, "down", "closing connection"), 2.0)
    assert routes(s) == [("remove", str(R3))]


def test_removed_peer_loses_its_routes_and_unknown_peers_are_ignored() -> None:
    s = state()
    s.handle(api.State(P2, "up"), 1.0)
    s.handle(api.Update(P2, announce=((R3, P3),)), 1.1)
    s.events.clear()
    s.set_desired(desired(peers=(P3,)), 2.0)
    assert routes(s) == [("remove", str(R3))] and P2 not in s.peers
    s.events.clear()
    s.commands.clear()
    s.handle(api.State(P2, "up"), 3.0)
    s.handle(api.Update(P2, announce=((R3, P3),)), 3.1)
    assert s.events == [] and s.commands == []


def test_leave_withdraws_everything_and_announces_nothing_more() -> None:
    s = state(B1, B2)
    s.handle(api.State(P3, "up"), 1.0)
    s.commands.clear()
    s.leave()
    assert s.commands == [api.cmd_withdraw(B1), api.cmd_withdraw(B2)]
    s.commands.clear()
    s.handle(api.State(P2, "up"), 2.0)
    assert s.commands == [api.cmd_eor(P2)]


def test_snapshot_and_rows() -> None:
    s = state(B1)
    s.handle(api.State(P2, "up"), 1.0)
    s.handle(api.Update(P2, announce=((R3, P3),)), 1.1)
    s.handle(api.Update(P2, eor=True), 1.2)
    snap = s.snapshot()
    assert snap["routes"] == [[str(R3), str(P3), str(P2)]]
    assert snap["synced"] == [str(P2)] and snap["announced"] == [str(B1)]
    assert [r.state for r in s.rows()] == ["up", "start"]
    assert s.rows()[1].info == "Passive"  # .3 > .1: it dials us


def test_desired_json_round_trip_and_rejects_bad() -> None:
    d = desired(B1, B2)
    assert Desired.from_json(json.loads(json.dumps(d.to_json()))) == d
    for bad in (
        [],
        {"peers": [{"address": "nope", "peer_type": "x"}]},
        {"announced": ["1.2.3.4/8"]},
    ):
        with pytest.raises((ValueError, TypeError, KeyError)):
            Desired.from_json(bad)


# -- the process around it: real pipes and a real unix socket ------------------------------------


class Rig:
    def __init__(self, tmp: Path, desired_doc: dict[str, Any] | None) -> None:
        self.sock_path = tmp / "h.sock"
        desired_path = tmp / "desired.json"
        if desired_doc is not None:
            desired_path.write_text(json.dumps(desired_doc))
        self.exa_r, self.helper_in = os.pipe()  # what "ExaBGP" writes, the helper reads
        os.set_blocking(self.exa_r, False)
        self.out = io.StringIO()
        self.helper = Helper(self.sock_path, desired_path, stdin_fd=self.exa_r, stdout=self.out)
        self.thread = threading.Thread(target=self.helper.run, daemon=True)
        self.thread.start()

    def exabgp_says(self, *lines: str | bytes) -> None:
        for line in lines:
            data = line if isinstance(line, bytes) else line.encode()
            os.write(self.helper_in, data + b"\n")

    def client(self) -> tuple[socket.socket, Any]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        sock.connect(str(self.sock_path))
        return sock, sock.makefile("rb")

    def close(self) -> None:
        os.close(self.helper_in)  # EOF: the helper exits as when ExaBGP dies
        self.thread.join(5)
        os.close(self.exa_r)


@pytest.fixture
def rig() -> Iterator[Rig]:
    with tempfile.TemporaryDirectory(prefix="tt-h-") as tmp:
        doc = desired(B1).to_json()
        r = Rig(Path(tmp), doc)
        try:
            yield r
        finally:
            r.close()


def wait(pred: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError("timed out")


NEIGHBOR_P2 = {"address": {"local": "10.99.0.1", "peer": str(P2)}}
STATE_UP_P2 = json.dumps({"type": "state", "neighbor": {**NEIGHBOR_P2, "state": "up"}})


def update_p2(prefix: str, next_hop: str) -> str:
    message = {"update": {"announce": {"ipv4 unicast": {next_hop: [{"nlri": prefix}]}}}}
    neighbor = {**NEIGHBOR_P2, "direction": "receive", "message": message}
    return json.dumps({"type": "update", "neighbor": neighbor})


def send(sock: socket.socket, obj: dict[str, Any]) -> None:
    sock.sendall(json.dumps(obj).encode() + b"\n")


def test_helper_process_end_to_end(rig: Rig) -> None:
    # The desired file was read at start: the block is announced before any agent connects.
    wait(lambda: "announce route 10.244.1.0/26 next-hop self" in rig.out.getvalue())
    sock, reader = rig.client()
    send(sock, {"op": "subscribe"})
    snap = json.loads(reader.readline())
    assert snap["type"] == "snapshot" and snap["announced"] == [str(B1)]
    rig.exabgp_says(
        "done",
        "this is not json",
        b"\xff\xfe garbage",
        '{"type": "state"}',
        STATE_UP_P2,
        update_p2("10.244.3.0/26", "10.99.0.3"),
    )
    events = [json.loads(reader.readline()) for _ in range(2)]
    assert events[0]["type"] == "peer" and events[0]["status"]["state"] == "up"
    assert events[1] == {
        "type": "route",
        "op": "add",
        "route": ["10.244.3.0/26", "10.99.0.3", str(P2)],
    }
    wait(lambda: "neighbor 10.99.0.2 announce eor ipv4 unicast" in rig.out.getvalue())
    # A one-shot status client, while the subscriber stays connected.
    other, other_reader = rig.client()
    send(other, {"op": "status"})
    status = json.loads(other_reader.readline())
    assert status["type"] == "status" and status["learned"] == 1
    assert [p["state"] for p in status["peers"]] == ["up", "start"]
    send(other, {"op": "bogus"})
    assert json.loads(other_reader.readline())["type"] == "error"
    other.sendall(b"not json\n")
    assert json.loads(other_reader.readline())["type"] == "error"
    other.close()
    # New desired state with reload.
    send(sock, {"op": "desired", "desired": desired(B2).to_json(), "reload": True})
    wait(lambda: "reload" in rig.out.getvalue().splitlines())
    assert "withdraw route 10.244.1.0/26 next-hop self" in rig.out.getvalue()
    sock.close()


def test_helper_replaces_a_stale_socket_file() -> None:
    with tempfile.TemporaryDirectory(prefix="tt-h-") as tmp:
        (Path(tmp) / "h.sock").write_text("left over")
        r = Rig(Path(tmp), None)
        try:
            sock, reader = r.client()
            send(sock, {"op": "status"})
            assert json.loads(reader.readline())["peers"] == []
            sock.close()
        finally:
            r.close()
        assert not (Path(tmp) / "h.sock").exists()


def test_respawn_is_detected_by_the_parent_pid(tmp_path: Path) -> None:
    marker = tmp_path / "exabgp-helper.ppid"
    assert is_respawn(marker, 100) is False  # first helper under ExaBGP 100
    assert is_respawn(marker, 100) is True  # ExaBGP 100 respawned it
    assert is_respawn(marker, 200) is False  # a new ExaBGP
