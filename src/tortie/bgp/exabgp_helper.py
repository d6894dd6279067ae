"""The process ExaBGP forks (``python -m tortie.bgp.exabgp_helper``): relay and state keeper.

Problem: ExaBGP only talks to processes it forks itself, over their stdin/stdout, and it has
traps (field notes section 4): routes announced before a session comes up, or to a
neighbour added by a reload, are not sent; a session that goes down carries no withdrawals;
failed connects emit ``connected``/``down`` noise. The agent must not care. This helper sits
between the two: it owns what this node announces and what it learned, fixes the traps, and
serves the agent (and ``tortie node status``) on a unix socket.

Behaviour:
- Announced set: on every session ``up`` it is re-announced to that neighbour, followed by an
  End-of-RIB (ExaBGP runs with ``manual-eor`` so the EOR comes *after* our routes: a peer
  holding our stale routes from before a restart then drops only what we no longer
  announce). Changes are sent as diffs to all neighbours.
- Learned routes (:class:`tortie.bgp.routes.LearnedTable`): a ``down`` after ``up`` withdraws
  everything from that peer, unless the session ended without a NOTIFICATION and both sides
  do graceful restart: then the routes stay, stale, until the peer's End-of-RIB or the
  restart time (the smaller of the peer's and ours).
- Status: one row per configured peer; ``connected``/``down`` noise before a session ever
  came up only updates the row's info, never its state.
- The desired state (peers, announced set, graceful restart time) is read at start from the
  JSON file the agent writes next to ExaBGP's config, so after an ExaBGP restart the helper
  re-announces at once, before the agent has even reconnected.
- Liveness (:mod:`tortie.bgp.liveness`): ExaBGP acknowledges every command, so the helper
  notes when it wrote one that has had no line from ExaBGP since, and writes a harmless
  comment command (``# tortie-probe``) whenever ExaBGP has been silent for 2 s. ``status``
  answers say how long ExaBGP has owed an answer (``exabgp.silent_for``) and its PID: a
  frozen ExaBGP shows up there while this helper, a separate process, still answers.

Socket protocol (JSON, one object per line). Requests: ``{"op": "subscribe"}`` (answered by a
``snapshot``, then every ``route``/``peer``/``synced`` event), ``{"op": "desired", ...}``
(the desired-state document; ``"reload": true`` also makes ExaBGP re-read its config),
``{"op": "status"}`` (one ``status`` answer: peer rows, counts, ExaBGP's PID and liveness),
``{"op": "leave"}`` (withdraw everything and announce nothing any more, answered by ``left``
once the withdrawals are written to ExaBGP: used before a deliberate stop, see
:meth:`HelperState.leave`).

Invariants: nothing ExaBGP or a client sends can crash the helper (bad lines are logged to
stderr, which is ExaBGP's log); a client that stops reading is dropped once 16 MB are queued
for it; the helper exits when ExaBGP closes its stdin.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import selectors
import signal
import socket
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, TextIO

from tortie.bgp import exabgp_api as api
from tortie.bgp.liveness import PROBE_COMMAND, PROBE_INTERVAL
from tortie.bgp.routes import LearnedTable, RouteEvent
from tortie.bgp.types import LearnedRoute, PeerStatus, RouteAdded

__all__ = ["Desired", "HelperState", "main"]

log = logging.getLogger("tortie.bgp.exabgp_helper")

MAX_CLIENT_BACKLOG = 16 * 1024 * 1024
MAX_LINE = 1024 * 1024  # an ExaBGP line longer than this is garbage, not an update


@dataclass(frozen=True, slots=True)
class DesiredPeer:
    address: IPv4Address
    peer_type: str
    passive: bool = False


@dataclass(frozen=True, slots=True)
class Desired:
    """What the agent wants: written as JSON next to ExaBGP's config, and sent on the socket."""

    peers: tuple[DesiredPeer, ...] = ()
    announced: frozenset[IPv4Network] = frozenset()
    graceful_restart: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "peers": [
                {"address": str(p.address), "peer_type": p.peer_type, "passive": p.passive}
                for p in self.peers
            ],
            "announced": sorted(str(p) for p in self.announced),
            "graceful_restart": self.graceful_restart,
        }

    @classmethod
    def from_json(cls, doc: Any) -> Desired:
        """Parse the desired-state document; raises ``ValueError``/``TypeError`` when bad."""
        if not isinstance(doc, dict):
            raise TypeError("the desired state is not an object")
        peers = tuple(
            DesiredPeer(IPv4Address(p["address"]), str(p["peer_type"]), bool(p.get("passive")))
            for p in doc.get("peers", [])
        )
        announced = frozenset(IPv4Network(p) for p in doc.get("announced", []))
        graceful = int(doc.get("graceful_restart", 0))
        return cls(peers, announced, graceful)


@dataclass(slots=True)
class _Peer:
    address: IPv4Address
    peer_type: str
    passive: bool
    state: str = "start"  # "up" or "start", as BIRD/Calico show it
    since: float = 0.0
    info: str = ""
    graceful_restart: int | None = None  # from the peer's last OPEN
    synced: bool = False  # up and its End-of-RIB received

    def row(self) -> PeerStatus:
        return PeerStatus(str(self.address), self.peer_type, self.state, self.since, self.info)


def status_to_json(row: PeerStatus) -> dict[str, Any]:
    return {
        "address": row.address,
        "peer_type": row.peer_type,
        "state": row.state,
        "since": row.since,
        "info": row.info,
    }


def status_from_json(doc: Any) -> PeerStatus:
    since = doc.get("since")
    return PeerStatus(
        address=str(doc["address"]),
        peer_type=str(doc["peer_type"]),
        state=str(doc["state"]),
        since=float(since) if isinstance(since, int | float) else None,
        info=str(doc.get("info", "")),
    )


def route_to_json(route: LearnedRoute) -> list[str]:
    return [str(route.prefix), str(route.next_hop), str(route.peer)]


def route_from_json(doc: Any) -> LearnedRoute:
    prefix, next_hop, peer = doc
    return LearnedRoute(IPv4Network(prefix), IPv4Address(next_hop), IPv4Address(peer))


@dataclass
class HelperState:
    """The helper's logic without I/O: feed it messages, collect commands and events.

    ``commands`` are lines for ExaBGP; ``events`` JSON objects for subscribers. Both are
    drained by the caller after each call.
    """

    instance: str = field(default_factory=lambda: f"{uuid.uuid4().hex[:12]}-{os.getpid()}")
    desired: Desired = field(default_factory=Desired)
    peers: dict[IPv4Address, _Peer] = field(default_factory=dict)
    table: LearnedTable = field(default_factory=LearnedTable)
    commands: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    # Liveness of ExaBGP (monotonic seconds): every command we write is answered (api.ack),
    # so a command with no line from ExaBGP since is an unanswered question.
    heard_at: float = field(default_factory=time.monotonic)
    waiting_since: float | None = None
    probed_at: float | None = None  # the last probe sent while an answer was owed

    # -- ExaBGP's liveness (see tortie.bgp.liveness) ---------------------------------------

    def heard(self, now: float) -> None:
        """ExaBGP wrote a line: its reactor runs."""
        self.heard_at, self.waiting_since, self.probed_at = now, None, None

    def sent(self, now: float) -> None:
        """We wrote commands: ExaBGP owes an answer from now on (if it did not already)."""
        if self.waiting_since is None:
            self.waiting_since = now

    def probe(self, now: float) -> None:
        """Ask ExaBGP something harmless when it has been silent for PROBE_INTERVAL, and
        again every PROBE_INTERVAL while an answer is owed: should some command ever go
        unacknowledged, a live ExaBGP still answers the probe and clears the debt."""
        if self.waiting_since is None:
            if now - self.heard_at >= PROBE_INTERVAL:
                self.commands.append(PROBE_COMMAND)
        elif now - max(self.waiting_since, self.probed_at or 0.0) >= PROBE_INTERVAL:
            self.commands.append(PROBE_COMMAND)
            self.probed_at = now

    def silent_for(self, now: float) -> float:
        """How long the oldest unanswered command has waited (0: nothing owed)."""
        return 0.0 if self.waiting_since is None else max(0.0, now - self.waiting_since)

    # -- the agent's side ---------------------------------------------------------------

    def set_desired(self, desired: Desired, now: float) -> None:
        old = self.desired
        self.desired = desired
        # Announce changes go to every neighbour; sessions that are down get everything
        # again when they come up.
        for prefix in sorted(desired.announced - old.announced):
            self.commands.append(api.cmd_announce(prefix))
        for prefix in sorted(old.announced - desired.announced):
            self.commands.append(api.cmd_withdraw(prefix))
        wanted = {p.address: p for p in desired.peers}
        for address in sorted(set(self.peers) - set(wanted)):
            del self.peers[address]
        self._route_events(self.table.keep_only_peers(wanted))
        for address, spec in wanted.items():
            peer = self.peers.get(address)
            if peer is None:
                peer = _Peer(address, spec.peer_type, spec.passive, since=now)
                peer.info = "Passive" if spec.passive else "Connect"
                self.peers[address] = peer
                self._peer_event(peer)
            elif (peer.peer_type, peer.passive) != (spec.peer_type, spec.passive):
                peer.peer_type, peer.passive = spec.peer_type, spec.passive
                self._peer_event(peer)

    def leave(self) -> None:
        """The node is leaving: withdraw everything, and announce nothing from now on.

        Withdrawals, not NOTIFICATIONs: with graceful restart negotiated ExaBGP closes
        sessions silently, even on ``teardown``, and peers would keep our routes (stale) for
        the restart time. After the withdrawals the agent stops ExaBGP; peers then hold
        nothing of ours.
        """
        for prefix in sorted(self.desired.announced):
            self.commands.append(api.cmd_withdraw(prefix))
        self.desired = Desired(self.desired.peers, frozenset(), self.desired.graceful_restart)

    def snapshot(self) -> dict[str, Any]:
        return {
            "type": "snapshot",
            "instance": self.instance,
            "routes": [route_to_json(r) for r in sorted(self.table.routes())],
            "peers": [status_to_json(r) for r in self.rows()],
            "synced": [str(a) for a, p in sorted(self.peers.items()) if p.synced],
            "announced": sorted(str(p) for p in self.desired.announced),
        }

    def rows(self) -> list[PeerStatus]:
        return [self.peers[a].row() for a in sorted(self.peers)]

    # -- ExaBGP's side --------------------------------------------------------------------

    def handle(self, message: api.ApiMessage, now: float) -> None:
        if isinstance(message, api.State):
            self._state(message, now)
        elif isinstance(message, api.Open):
            peer = self.peers.get(message.peer)
            if peer is not None:
                peer.graceful_restart = message.graceful_restart
        elif isinstance(message, api.Update):
            self._update(message)
        elif isinstance(message, api.Notification):
            log.info(
                "NOTIFICATION %s %s (%d,%d)",
                message.direction or "seen",
                message.peer,
                message.code,
                message.subcode,
            )
        elif isinstance(message, api.Ack):
            if not message.ok:
                log.warning("ExaBGP answered 'error' to a command (see ExaBGP's log above)")
        elif isinstance(message, api.Ignored):
            log.debug("ignored: %s", message.reason)

    def expire(self, now: float) -> None:
        self._route_events(self.table.expire(now))

    def next_deadline(self) -> float | None:
        return self.table.next_deadline()

    def _state(self, message: api.State, now: float) -> None:
        peer = self.peers.get(message.peer)
        if peer is None:
            return  # a neighbour the agent no longer wants (removed by a reload in flight)
        if message.state == "up":
            peer.state, peer.since, peer.info, peer.synced = "up", now, "Established", False
            # Re-announce on every up: ExaBGP does not send routes announced before a
            # neighbour was added by a reload, and an idempotent resend costs little.
            for prefix in sorted(self.desired.announced):
                self.commands.append(api.cmd_announce(prefix, peer.address))
            self.commands.append(api.cmd_eor(peer.address))
            self._peer_event(peer)
        elif message.state == "down":
            reason = message.reason or "closed"
            if peer.state == "up":
                peer.state, peer.since, peer.synced = "start", now, False
                peer.info = f"Connect: {reason}"
                self._session_lost(peer, reason, now)
                self._peer_event(peer)
            elif reason != "closing connection":
                # Noise from failed connects changes only the detail, never the state.
                peer.info = f"{'Passive' if peer.passive else 'Connect'}: {reason}"
        elif message.state == "connected" and peer.state != "up":
            peer.info = "OpenSent"

    def _session_lost(self, peer: _Peer, reason: str, now: float) -> None:
        ours = self.desired.graceful_restart
        theirs = peer.graceful_restart
        # RFC 4724: graceful restart applies only when the session ended without a
        # NOTIFICATION (a restarting speaker just drops TCP); a hold timer expiry or a Cease
        # means the routes are gone now.
        if reason.startswith("notification") or not ours or not theirs:
            self._route_events(self.table.drop_peer(peer.address))
        else:
            self.table.mark_stale(now + min(ours, theirs), peer.address)

    def _update(self, message: api.Update) -> None:
        peer = self.peers.get(message.peer)
        if peer is None:
            return
        if message.skipped:
            log.debug("update from %s: skipped %s", peer.address, ", ".join(message.skipped))
        if message.eor:
            if peer.state == "up" and not peer.synced:
                peer.synced = True
                self._route_events(self.table.sweep_stale(peer.address))
                self.events.append({"type": "synced", "peer": str(peer.address)})
            return
        events: list[RouteEvent] = []
        for prefix in message.withdraw:
            events.extend(self.table.remove(peer.address, prefix))
        for prefix, next_hop in message.announce:
            events.extend(self.table.set(peer.address, prefix, next_hop))
        self._route_events(events)

    def _route_events(self, events: Iterable[RouteEvent]) -> None:
        for event in events:
            op = "add" if isinstance(event, RouteAdded) else "remove"
            self.events.append({"type": "route", "op": op, "route": route_to_json(event.route)})

    def _peer_event(self, peer: _Peer) -> None:
        self.events.append({"type": "peer", "status": status_to_json(peer.row())})


# -- the process ----------------------------------------------------------------------------


class _Client:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = b""
        self.outbuf = bytearray()
        self.subscribed = False


class Helper:
    """The I/O around :class:`HelperState`: ExaBGP's pipes and the unix socket."""

    def __init__(
        self,
        socket_path: Path,
        desired_path: Path | None,
        stdin_fd: int = 0,
        stdout: TextIO | None = None,
    ) -> None:
        self.state = HelperState()
        self.socket_path = socket_path
        self.stdin_fd = stdin_fd
        self.stdout = stdout if stdout is not None else sys.stdout
        self.selector = selectors.DefaultSelector()
        self.clients: dict[int, _Client] = {}
        self.stdin_buf = b""
        self.listener = self._listen(socket_path)
        self.socket_inode = socket_path.stat().st_ino
        if desired_path is not None:
            self._load_desired(desired_path)

    def _load_desired(self, path: Path) -> None:
        try:
            doc = json.loads(path.read_text())
            self.state.set_desired(Desired.from_json(doc), time.time())
        except FileNotFoundError:
            log.info("no desired state at %s yet; waiting for the agent", path)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.error("cannot read the desired state %s: %s", path, exc)
        # The announce commands go to ExaBGP before any session is up, so they are queued
        # in its RIB for every neighbour; each up re-announces anyway.
        self._flush()

    @staticmethod
    def _listen(path: Path) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # A socket file left by a previous helper (ExaBGP restarted) must go first.
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        old_umask = os.umask(0o077)  # the socket controls routing: root only
        try:
            sock.bind(str(path))
        finally:
            os.umask(old_umask)
        sock.listen(16)
        sock.setblocking(False)
        return sock

    def run(self) -> None:
        self.selector.register(self.stdin_fd, selectors.EVENT_READ, "stdin")
        self.selector.register(self.listener, selectors.EVENT_READ, "listener")
        try:
            while self._step():
                pass
        finally:
            self.close()

    def _step(self) -> bool:
        """One turn of the loop; False when ExaBGP has gone."""
        try:
            now = time.time()
            deadline = self.state.next_deadline()
            timeout = 1.0 if deadline is None else max(0.0, min(1.0, deadline - now))
            for key, mask in self.selector.select(timeout):
                if key.data == "stdin":
                    if not self._read_stdin():
                        return False
                elif key.data == "listener":
                    self._accept()
                else:
                    self._client_io(key.data, mask)
            self.state.expire(time.time())
            self.state.probe(time.monotonic())
            self._flush()
        except Exception:  # a bug here must not lose the learned routes: log, go on
            log.exception("helper loop")
            time.sleep(0.1)
        return True

    def close(self) -> None:
        for client in list(self.clients.values()):
            self._drop(client)
        with contextlib.suppress(OSError):
            self.listener.close()
        # Only remove the socket file if it is still ours (a newer helper may have replaced it).
        with contextlib.suppress(OSError):
            if self.socket_path.stat().st_ino == self.socket_inode:
                self.socket_path.unlink()

    def _read_stdin(self) -> bool:
        try:
            data = os.read(self.stdin_fd, 65536)
        except BlockingIOError:
            return True
        except OSError as exc:
            log.error("reading from ExaBGP: %s", exc)
            return False
        if not data:
            log.info("ExaBGP closed our stdin; exiting")
            return False
        self.stdin_buf += data
        *lines, self.stdin_buf = self.stdin_buf.split(b"\n")
        if lines:
            self.state.heard(time.monotonic())
        if len(self.stdin_buf) > MAX_LINE:
            log.error("dropping %d bytes from ExaBGP without a newline", len(self.stdin_buf))
            self.stdin_buf = b""
        now = time.time()
        for line in lines:
            message = api.parse_line(line)
            if isinstance(message, api.Ignored) and not message.reason.startswith(
                ("message type", "our own", "an update we sent", "empty", "text from ExaBGP")
            ):
                log.warning("ignoring a line from ExaBGP: %s", message.reason)
            self.state.handle(message, now)
        return True

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(False)
        client = _Client(sock)
        self.clients[sock.fileno()] = client
        self.selector.register(sock, selectors.EVENT_READ, client)

    def _client_io(self, client: _Client, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._send_some(client)
        if mask & selectors.EVENT_READ:
            try:
                data = client.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._drop(client)
                return
            client.inbuf += data
            *lines, client.inbuf = client.inbuf.split(b"\n")
            if len(client.inbuf) > MAX_LINE:
                self._drop(client)
                return
            for line in lines:
                if line.strip():
                    self._request(client, line)

    def _request(self, client: _Client, line: bytes) -> None:
        try:
            req = json.loads(line)
            op = req["op"]
        except (ValueError, KeyError, TypeError):
            self._queue(client, {"type": "error", "error": "bad request"})
            return
        now = time.time()
        if op == "subscribe":
            client.subscribed = True
            self._queue(client, self.state.snapshot())
        elif op == "status":
            self._queue(
                client,
                {
                    "type": "status",
                    "instance": self.state.instance,
                    "peers": [status_to_json(r) for r in self.state.rows()],
                    "learned": len(self.state.table),
                    "announced": len(self.state.desired.announced),
                    # Who ExaBGP is and whether it answers: `tortie node status` and the
                    # agent judge its liveness by this (tortie.bgp.liveness).
                    "exabgp": {
                        "pid": os.getppid(),
                        "silent_for": round(self.state.silent_for(time.monotonic()), 1),
                    },
                },
            )
        elif op == "desired":
            try:
                desired = Desired.from_json(req.get("desired"))
            except (ValueError, TypeError, KeyError) as exc:
                self._queue(client, {"type": "error", "error": f"bad desired state: {exc}"})
                return
            self.state.set_desired(desired, now)
            if req.get("reload"):
                # ExaBGP re-reads its config: new neighbours appear, removed ones go, the
                # others keep their sessions (field notes section 4).
                self.state.commands.append("reload")
        elif op == "leave":
            self.state.leave()
            self._flush()  # the withdrawals reach ExaBGP before we say so
            self._queue(client, {"type": "left"})
        else:
            self._queue(client, {"type": "error", "error": f"unknown op {op!r}"})

    def _flush(self) -> None:
        commands, self.state.commands = self.state.commands, []
        if commands:
            self.state.sent(time.monotonic())
            try:
                self.stdout.write("".join(c + "\n" for c in commands))
                self.stdout.flush()
            except OSError as exc:
                log.error("writing to ExaBGP: %s", exc)
        events, self.state.events = self.state.events, []
        for event in events:
            for client in list(self.clients.values()):
                if client.subscribed:
                    self._queue(client, event)

    def _queue(self, client: _Client, obj: dict[str, Any]) -> None:
        client.outbuf += json.dumps(obj, separators=(",", ":")).encode() + b"\n"
        if len(client.outbuf) > MAX_CLIENT_BACKLOG:
            log.warning("a client is not reading; dropping it")
            self._drop(client)
            return
        self._send_some(client)

    def _send_some(self, client: _Client) -> None:
        if client.sock.fileno() not in self.clients:
            return
        try:
            sent = client.sock.send(client.outbuf)
            del client.outbuf[:sent]
        except BlockingIOError:
            pass
        except OSError:
            self._drop(client)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.outbuf else 0)
        self.selector.modify(client.sock, events, client)

    def _drop(self, client: _Client) -> None:
        fd = client.sock.fileno()
        if fd in self.clients:
            del self.clients[fd]
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(client.sock)
        with contextlib.suppress(OSError):
            client.sock.close()


def is_respawn(marker: Path, parent: int) -> bool:
    """True if a helper already ran under this ExaBGP (``parent``): we were respawned.

    Records ``parent`` in ``marker`` either way.
    """
    try:
        seen = marker.read_text().strip() == str(parent)
    except OSError:
        seen = False
    tmp = marker.with_name(f".{marker.name}.tmp")
    tmp.write_text(f"{parent}\n")
    tmp.replace(marker)
    return seen


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True, type=Path)
    parser.add_argument("--desired", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s tortie-helper[%(process)d] %(levelname)s %(message)s",
    )
    parent = os.getppid()
    if is_respawn(args.socket.with_name("exabgp-helper.ppid"), parent):
        # ExaBGP respawned us after our predecessor died: its sessions are up and their
        # routes were received by a helper that is gone; peers never resend them. Only a
        # fresh ExaBGP gets them back, so stop this one (ExaBGP closes its sessions without
        # a NOTIFICATION: peers keep our routes through graceful restart) and let the
        # agent's supervisor start a new one.
        log.error("respawned under ExaBGP %d: stopping it so the agent restarts it", parent)
        os.kill(parent, signal.SIGTERM)
        return 1
    os.set_blocking(0, False)
    Helper(args.socket, args.desired).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
