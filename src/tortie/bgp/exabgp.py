"""ExaBGP as a node's BGP speaker: config, process, and the agent's side of the helper.

Problem: on an ordinary node the agent needs a BGP speaker that announces the node's pod
blocks, tells it every route the other nodes announce, keeps sessions with the peers that
:mod:`tortie.bgp.peering` chose, follows config changes without disturbing the sessions that
did not change, and survives its own crashes and the agent's restarts. ExaBGP (PyPI 5.0.15)
speaks BGP but has traps (field notes section 4); this module runs it so that the agent sees
none of them.

Pieces:
- :func:`render_config` / :func:`exabgp_env`: ExaBGP's config file and environment. Bound
  to the node IP (``exabgp.tcp.bind``: ExaBGP listens nowhere by default), run as root (by
  default it drops to ``nobody``), ``manual-eor`` (the helper sends End-of-RIB after its own
  announcements), graceful restart advertised with the configured restart time.
- ExaBGP forks :mod:`tortie.bgp.exabgp_helper`, which keeps the state and serves a unix
  socket in the state directory (``exabgp.sock``).
- :class:`ExaBGPSpeaker`: starts (or adopts) ExaBGP in the node's namespace, restarts it with
  backoff when it dies, connects to the helper, mirrors learned routes and peer states, and
  delivers them as events.

What ExaBGP does *not* do, and how that is covered:
- It never installs routes in the kernel (neither do we: the agent programs routes).
- No route reflection or best-path selection: reflectors run BIRD (:mod:`tortie.bgp.bird`).
- Graceful restart: it advertises the capability (restart time, forwarding state kept) and
  sets the restart bit after its own restart, but as a *receiver* it keeps nothing: a peer's
  ``down`` is just ``down``. The helper implements the receiving side (stale routes kept
  until the peer's End-of-RIB or the restart time); the mirror here does the same across a
  restart of our own ExaBGP, so the agent sees no route flap when only the speaker restarts.
- No separate keepalive setting: ExaBGP sends keepalives at a third of the negotiated hold
  time, so ``BGPPeerSpec.keepalive`` is not honoured (BIRD honours it).
- No command adds a neighbour: a changed peer list rewrites the config and sends ``reload``
  (sessions whose definition did not change stay up; a changed one is re-established).
- The local address and listen port are process-wide (environment), so changing them
  restarts ExaBGP (peers keep our routes through graceful restart meanwhile).

Liveness (issue 17, 9b; :mod:`tortie.bgp.liveness`): a running process is not enough. The
speaker asks its helper for ``status`` every 2 s; the helper says whether ExaBGP has answered
its last command (it sends a comment command as a probe when ExaBGP is quiet); and
``/proc/PID/stat`` says whether ExaBGP or the helper is stopped. Any of these wrong for 5 s
makes the speaker "not responding" (a :class:`SpeakerHealth` event, and
:meth:`ExaBGPSpeaker.liveness`); after :func:`tortie.bgp.liveness.restart_after` (a third of
the hold time, at least 10 s) ExaBGP is killed and the supervisor restarts it, so peers see a
closed session (graceful restart keeps our routes) instead of a hold-timer expiry.

Invariants: events are delivered on this object's thread, one at a time, in order; the
mirror of learned routes equals what was delivered; only the ExaBGP we started (or a
previous agent started, identified by its PID file and command line) is ever signalled.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tortie.bgp.exabgp_helper import (
    Desired,
    DesiredPeer,
    route_from_json,
    status_from_json,
)
from tortie.bgp.liveness import (
    ANSWER_DEADLINE,
    PROBE_INTERVAL,
    LivenessTracker,
    restart_after,
    stopped_detail,
)
from tortie.bgp.process import Supervised
from tortie.bgp.routes import LearnedTable, RouteEvent
from tortie.bgp.speaker_base import DaemonSpeaker
from tortie.bgp.types import (
    BGPConfigError,
    EventCallback,
    PeerChanged,
    PeerStatus,
    Speaker,
    SpeakerConfig,
    SpeakerEvent,
    SpeakerHealth,
)

__all__ = [
    "CONFIG_NAME",
    "SOCKET_NAME",
    "ExaBGPSpeaker",
    "exabgp_env",
    "render_config",
]

log = logging.getLogger(__name__)

CONFIG_NAME = "exabgp.conf"
DESIRED_NAME = "exabgp-desired.json"
SOCKET_NAME = "exabgp.sock"
PID_NAME = "exabgp.pid"
LOG_NAME = "exabgp.log"
PROCESS_NAME = "tortie-helper"

_SAFE_PATH = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+")


def _check_path(path: Path) -> str:
    text = str(path)
    # ExaBGP's config tokeniser splits on whitespace and ';': such a path cannot be written.
    if not set(text) <= _SAFE_PATH:
        raise BGPConfigError(f"{text!r}: ExaBGP cannot use a path with spaces or punctuation")
    return text


def helper_argv(state_dir: Path, python: str) -> list[str]:
    return [
        _check_path(Path(python)),
        "-m",
        "tortie.bgp.exabgp_helper",
        "--socket",
        _check_path(state_dir / SOCKET_NAME),
        "--desired",
        _check_path(state_dir / DESIRED_NAME),
    ]


def render_config(config: SpeakerConfig, helper: Sequence[str]) -> str:
    """ExaBGP's configuration for ``config``; ``helper`` is the helper's command line."""
    if config.is_route_reflector:
        raise BGPConfigError(
            f"node {config.node_name} is a route reflector: run BIRD (tortie.bgp.bird), "
            "ExaBGP cannot reflect routes"
        )
    lines = [
        f"# Generated by tortie for node {config.node_name}; rewritten on every change.",
        f"process {PROCESS_NAME} {{",
        f"    run {' '.join(helper)};",
        "    encoder json;",
        "}",
    ]
    for peer in config.peers:
        lines += [
            "",
            f"# {peer.peer_type}" + (f" {peer.node_name}" if peer.node_name else ""),
            f"neighbor {peer.address} {{",
            f"    router-id {config.router_id};",
            f"    local-address {config.local_address};",
            f"    local-as {config.asn};",
            f"    peer-as {peer.asn};",
            f"    hold-time {peer.hold_time};",
            f"    passive {'true' if peer.passive else 'false'};",
        ]
        if peer.port != 179:
            lines.append(f"    connect {peer.port};")
        if peer.password is not None:
            # base64 keeps any character of the password away from the config tokeniser.
            encoded = base64.b64encode(peer.password.encode()).decode()
            lines += [f"    md5-password {encoded};", "    md5-base64 true;"]
        lines += [
            # The helper sends End-of-RIB after re-announcing, so a peer that kept our stale
            # routes through our restart drops only what we no longer announce.
            "    manual-eor true;",
            "    capability {",
            f"        graceful-restart {config.graceful_restart};"
            if config.graceful_restart
            else "        graceful-restart disable;",
            "    }",
            "    family {",
            "        ipv4 unicast;",
            "    }",
            "    api {",
            f"        processes [ {PROCESS_NAME} ];",
            "        neighbor-changes;",
            "        receive {",
            "            parsed;",
            "            update;",
            "            open;",
            "            notification;",
            "        }",
            "    }",
            "}",
        ]
    return "\n".join(lines) + "\n"


LIVENESS_CHECK_EVERY = 0.5  # seconds between two looks at /proc and the helper's answers
REACTOR_SPEED = "10.0"  # ExaBGP's reactor.speed: idle poll timeout 100 ms (exabgp_env)


def exabgp_env(config: SpeakerConfig, log_level: str = "INFO") -> dict[str, str]:
    """ExaBGP's settings that only exist as environment variables."""
    return {
        # Listen on the node IP only; the default is not to listen at all.
        "exabgp_tcp_bind": str(config.local_address),
        "exabgp_tcp_port": str(config.listen_port),
        # The default drops privileges to nobody, which cannot bind port 179 after a reload.
        "exabgp_daemon_user": "root",
        "exabgp_daemon_drop": "false",
        "exabgp_daemon_daemonize": "false",
        # No named pipes for exabgpcli in /run: we talk through our helper only.
        "exabgp_api_cli": "false",
        "exabgp_api_encoder": "json",
        "exabgp_api_ack": "true",
        "exabgp_api_respawn": "true",
        "exabgp_log_destination": "stdout",
        "exabgp_log_level": log_level,
        "exabgp_log_statistics": "false",
        "exabgp_log_packets": "false",
        "exabgp_tcp_attempts": "0",
        # The reactor's idle poll timeout is speed/100 s. At the default (1.0: 10 ms, 100
        # wake-ups a second) an idle speaker costs about 2 % of a core. Sockets with work (our
        # helper's pipe, peers with messages) end the poll at once whatever the timeout, so a
        # longer one delays only timers and accept() of a new session, by at most 100 ms.
        "exabgp_reactor_speed": REACTOR_SPEED,
    }


def desired_state(config: SpeakerConfig, announced: Iterable[IPv4Network]) -> Desired:
    return Desired(
        peers=tuple(DesiredPeer(p.address, p.peer_type, p.passive) for p in config.peers),
        announced=frozenset(announced),
        graceful_restart=config.graceful_restart,
    )


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # may hold passwords
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)


class ExaBGPSpeaker(DaemonSpeaker):
    """ExaBGP driven for the agent (implements :class:`tortie.bgp.types.Speaker`).

    ``state_dir`` holds the config, the helper's socket, the PID file and ExaBGP's log (keep
    its path short: unix socket paths are limited to 107 bytes). ``netns`` runs ExaBGP in that
    network namespace (tests, labs); the agent itself already runs in the node's namespace
    and leaves it ``None``. ``on_event`` receives learned-route, peer and health events on
    this object's thread.
    """

    def __init__(
        self,
        config: SpeakerConfig,
        state_dir: Path | str,
        on_event: EventCallback | None = None,
        *,
        netns: str | None = None,
        exabgp: Sequence[str] | None = None,
        python: str | None = None,
        log_level: str = "INFO",
        min_backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        self.state_dir = Path(state_dir).absolute()
        self._config = config
        self._on_event = on_event
        self._python = python or sys.executable
        self._exabgp = list(exabgp) if exabgp else [self._python, "-m", "exabgp"]
        self._log_level = log_level
        self._lock = threading.RLock()
        self._send_lock = threading.Lock()
        self._announced: frozenset[IPv4Network] = frozenset()
        self._table = LearnedTable()
        self._peers: dict[str, PeerStatus] = {}
        self._sock: socket.socket | None = None
        self._inbuf = b""
        self._instance: str | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._left = threading.Event()
        self._needs_restart = False
        # Liveness (tortie.bgp.liveness): the helper is asked for its status every
        # PROBE_INTERVAL on our connection; its answer says whether ExaBGP answers it.
        self._liveness = LivenessTracker(restart_after(config))
        self._status_sent_at: float | None = None  # monotonic; None: no question pending
        self._next_status = 0.0
        self._exabgp_silent = 0.0
        self._helper_pid: int | None = None
        self._next_check = 0.0
        self._conf_path = self.state_dir / CONFIG_NAME
        self._socket_path = self.state_dir / SOCKET_NAME
        if len(str(self._socket_path)) > 107:
            raise BGPConfigError(f"{self._socket_path}: too long for a unix socket path")
        self._helper = helper_argv(self.state_dir, self._python)
        self._daemon = Supervised(
            "exabgp",
            lambda restarting: [*self._exabgp, str(self._conf_path)],
            pid_path=self.state_dir / PID_NAME,
            log_path=self.state_dir / LOG_NAME,
            marker=str(self._conf_path),
            env=exabgp_env(config, log_level),
            netns=netns,
            min_backoff=min_backoff,
            max_backoff=max_backoff,
        )

    # -- Speaker ---------------------------------------------------------------------------

    def start(self) -> None:
        """Write the config and start ExaBGP (or adopt ours, left running by an earlier agent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._lock:
            self._write_files()
        self._daemon.start()
        self._emit(
            [
                SpeakerHealth(
                    True, f"adopted PID {self._daemon.pid}" if self._daemon.adopted else "started"
                )
            ]
        )
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="exabgp-speaker", daemon=True)
        self._thread.start()

    def stop(self, *, withdraw: bool = True, timeout: float = 10.0) -> None:
        """Stop ExaBGP. ``withdraw``: withdraw every route first, so peers drop them at once
        (a node leaving); otherwise just stop, and peers keep our routes for the
        graceful-restart time (a restart). No events are sent afterwards."""
        deadline = time.monotonic() + min(timeout, 2.0)
        if withdraw and self._daemon.running:
            # Just started, or restarting: give the helper connection a moment.
            while self._sock is None and time.monotonic() < deadline:
                time.sleep(0.02)
            self._left.clear()
            if self._send({"op": "leave"}) and self._left.wait(
                max(0.0, deadline - time.monotonic())
            ):
                # ExaBGP has the withdrawals; give it a moment to put them on the wire
                # (about 3 ms when idle) before its sessions close.
                time.sleep(0.3)
        self._stop_thread()
        self._daemon.stop(timeout=timeout)

    def detach(self) -> None:
        """Stop watching but leave ExaBGP running (the agent is restarting; the next agent's
        :meth:`start` adopts it, so sessions and routes do not move at all)."""
        self._stop_thread()
        self._daemon.detach()

    def update_config(self, config: SpeakerConfig) -> None:
        """Follow a new configuration: added/removed peers by a reload (other sessions stay
        up); a new local address or port by a restart."""
        with self._lock:
            old, self._config = self._config, config
            if config == old:
                return
            self._write_files()
            self._liveness.restart_after = restart_after(config)
            events: list[SpeakerEvent] = list(
                self._table.keep_only_peers(p.address for p in config.peers)
            )
            for address in list(self._peers):
                if config.peer(IPv4Address(address)) is None:
                    del self._peers[address]
            process_wide = (old.local_address, old.listen_port) != (
                config.local_address,
                config.listen_port,
            )
            if process_wide:
                self._daemon.env = exabgp_env(config, self._log_level)
                self._needs_restart = True
        self._emit(events)
        if not process_wide:
            self._send_desired(reload=True)

    def set_announced(self, prefixes: Iterable[IPv4Network]) -> None:
        """Announce exactly ``prefixes`` (idempotent; only the difference is sent)."""
        wanted = frozenset(IPv4Network(p) for p in prefixes)
        with self._lock:
            if wanted == self._announced:
                return
            self._announced = wanted
            self._write_files(config=False)
        self._send_desired(reload=False)

    # -- files ---------------------------------------------------------------------------------

    def _write_files(self, *, config: bool = True) -> None:
        if config:
            _write_atomic(self._conf_path, render_config(self._config, self._helper))
        doc = desired_state(self._config, self._announced).to_json()
        _write_atomic(self.state_dir / DESIRED_NAME, json.dumps(doc, indent=1) + "\n")

    # -- the helper connection ---------------------------------------------------------------

    def _send_desired(self, *, reload: bool) -> None:
        with self._lock:
            doc = desired_state(self._config, self._announced).to_json()
        self._send({"op": "desired", "desired": doc, "reload": reload})

    def _send(self, obj: Mapping[str, Any]) -> bool:
        data = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
        with self._send_lock:
            sock = self._sock
            if sock is None:
                return False
            try:
                sock.sendall(data)
            except OSError as exc:
                log.info("helper connection lost while sending: %s", exc)
                return False
        return True

    def _connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(1.0)
            sock.connect(str(self._socket_path))
        except OSError:
            sock.close()
            return
        sock.settimeout(5.0)  # sendall must never hang the agent forever
        with self._send_lock:
            self._sock = sock
        self._inbuf = b""
        self._helper_pid = _peer_pid(sock)
        self._status_sent_at, self._next_status, self._exabgp_silent = None, 0.0, 0.0
        with self._lock:
            doc = desired_state(self._config, self._announced).to_json()
        # Subscribe first: the snapshot reflects the helper before our desired state lands.
        # Always reload: a config written while we were not connected (ExaBGP starting,
        # restarting, or adopted from an older agent) must reach ExaBGP, and a reload that
        # changes nothing disturbs no session.
        self._send({"op": "subscribe"})
        self._send({"op": "desired", "desired": doc, "reload": True})
        log.info("connected to the ExaBGP helper at %s", self._socket_path)

    def _disconnect(self, why: str) -> None:
        with self._send_lock:
            sock, self._sock = self._sock, None
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.close()
        self._helper_pid, self._status_sent_at, self._exabgp_silent = None, None, 0.0
        log.info("helper connection closed: %s", why)
        with self._lock:
            # Until the helper (maybe a new one) tells us again, what we learned is stale.
            self._table.mark_stale(time.time() + self._config.graceful_restart)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception:  # the speaker thread must survive its own bugs
                log.exception("exabgp speaker loop")
                time.sleep(0.5)
        self._disconnect("stopping")

    def _tick(self) -> None:
        if self._needs_restart:
            self._needs_restart = False
            self._disconnect("restarting ExaBGP for a new address or port")
            self._daemon.stop(sig=signal.SIGTERM)
            self._daemon.start(adopt=False)
            self._emit([SpeakerHealth(True, "restarted for a new local address or port")])
        what = self._daemon.poll()
        if what is not None:
            if what.startswith("exited"):
                self._disconnect(what)
            self._emit([SpeakerHealth(what == "restarted", what)])
        self._check_liveness()
        sock = self._sock
        if sock is None:
            if self._daemon.running:
                self._connect()
            if self._sock is None:
                self._stop.wait(0.05)
            self._expire()
            return
        timeout = 0.2
        with self._lock:
            deadline = self._table.next_deadline()
        if deadline is not None:
            timeout = max(0.0, min(timeout, deadline - time.time()))
        try:
            ready, _, _ = select.select([sock], [], [], timeout)
        except (OSError, ValueError):
            self._disconnect("socket error")
            return
        if ready:
            try:
                data = sock.recv(1 << 20)
            except OSError:
                data = b""
            if not data:
                self._disconnect("helper closed the connection")
                return
            self._inbuf += data
            *lines, self._inbuf = self._inbuf.split(b"\n")
            for line in lines:
                if line.strip():
                    self._handle_line(line)
        self._expire()

    def _expire(self) -> None:
        with self._lock:
            events = self._table.expire(time.time())
        self._emit(events)

    # -- liveness (tortie.bgp.liveness) --------------------------------------------------------

    def _check_liveness(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + LIVENESS_CHECK_EVERY
        ask = self._sock is not None and self._status_sent_at is None and now >= self._next_status
        if ask and self._send({"op": "status"}):
            self._status_sent_at = now
        self._judge(self._liveness_problem(now), "ExaBGP")

    def _liveness_problem(self, now: float) -> str | None:
        if not self._daemon.running:
            return None  # an exit is the supervisor's business (reported, restarted)
        stopped = stopped_detail("ExaBGP", self._daemon.pid) or stopped_detail(
            "the ExaBGP helper", self._helper_pid
        )
        if stopped is not None:
            return stopped
        if self._sock is None:
            if self._daemon.uptime > ANSWER_DEADLINE:
                return f"its helper does not accept connections on {self._socket_path}"
            return None  # starting: the helper's socket comes a moment later
        if self._status_sent_at is not None and now - self._status_sent_at > ANSWER_DEADLINE:
            return f"its helper (PID {self._helper_pid}) does not answer"
        if self._exabgp_silent > ANSWER_DEADLINE:
            return f"ExaBGP (PID {self._daemon.pid}) has not answered a command"
        return None

    def _on_wedged(self) -> None:
        self._disconnect("killing an unresponsive ExaBGP")

    def _status_answer(self, msg: Mapping[str, Any]) -> None:
        self._status_sent_at = None
        self._next_status = time.monotonic() + PROBE_INTERVAL
        exa = msg.get("exabgp")
        silent = exa.get("silent_for") if isinstance(exa, dict) else None
        # An older helper (adopted from an older agent) says nothing: take that as answered.
        self._exabgp_silent = float(silent) if isinstance(silent, int | float) else 0.0

    def _handle_line(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
            kind = msg["type"]
        except (ValueError, KeyError, TypeError):
            log.warning("bad line from the helper: %r", line[:200])
            return
        events: list[SpeakerEvent] = []
        try:
            with self._lock:
                if kind == "snapshot":
                    events = self._apply_snapshot(msg)
                elif kind == "route":
                    route = route_from_json(msg["route"])
                    route_events: list[RouteEvent]
                    if msg["op"] == "add":
                        route_events = self._table.set(route.peer, route.prefix, route.next_hop)
                    else:
                        route_events = self._table.remove(route.peer, route.prefix)
                    events = list(route_events)
                elif kind == "synced":
                    events = list(self._table.sweep_stale(IPv4Address(msg["peer"])))
                elif kind == "peer":
                    row = status_from_json(msg["status"])
                    if self._config.peer(IPv4Address(row.address)) is not None:
                        self._peers[row.address] = row
                        events = [PeerChanged(row)]
                elif kind == "left":
                    self._left.set()
                elif kind == "status":
                    self._status_answer(msg)
                elif kind == "error":
                    log.warning("the helper refused a request: %s", msg.get("error"))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("bad %s message from the helper (%s): %r", kind, exc, line[:200])
        self._emit(events)

    def _apply_snapshot(self, msg: Mapping[str, Any]) -> list[SpeakerEvent]:
        self._instance = str(msg.get("instance"))
        by_peer: dict[IPv4Address, list[tuple[IPv4Network, IPv4Address]]] = {}
        for item in msg.get("routes", []):
            route = route_from_json(item)
            by_peer.setdefault(route.peer, []).append((route.prefix, route.next_hop))
        events: list[SpeakerEvent] = []
        for peer in sorted(set(by_peer) | set(self._table.peers())):
            events.extend(self._table.replace_peer(peer, by_peer.get(peer, [])))
        for peer in msg.get("synced", []):
            events.extend(self._table.sweep_stale(IPv4Address(peer)))
        events.extend(self._table.keep_only_peers(p.address for p in self._config.peers))
        for doc in msg.get("peers", []):
            row = status_from_json(doc)
            if self._config.peer(IPv4Address(row.address)) is not None:
                if self._peers.get(row.address) != row:
                    events.append(PeerChanged(row))
                self._peers[row.address] = row
        return events

    def _stop_thread(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)
        self._thread = None
        self._disconnect("stopped")


def _peer_pid(sock: socket.socket) -> int | None:
    """The PID at the other end of a unix socket (SO_PEERCRED), if the kernel says."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid = struct.unpack("3i", creds)[0]
    return pid if pid > 0 else None


if TYPE_CHECKING:  # mypy proves ExaBGPSpeaker is a Speaker; nothing runs at import

    def _is_a_speaker(speaker: ExaBGPSpeaker) -> Speaker:
        return speaker
