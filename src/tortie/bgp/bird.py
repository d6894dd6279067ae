"""BIRD 2 as the speaker of a route-reflector node: config, process, control socket, polling.

Problem: a node with ``spec.bgp.routeReflectorClusterID`` reflects routes between its
clients (ExaBGP cannot: no reflection, no best path). BIRD 2 (Debian ``bird2``) does, and it
is then that node's only speaker: it announces the node's own blocks, and the agent needs
the routes it learned, like on any node, without BIRD touching the kernel.

Choices:
- Config (:func:`render_config`): ``router id``; our blocks as a ``static`` protocol of
  blackhole routes (BGP sends them with ourselves as next hop); one ``bgp`` protocol per peer
  with ``rr client`` + ``rr cluster id`` for clients; ``import all`` and export of static and
  BGP routes only (never connected subnets); **no kernel export**: the kernel protocol only
  *imports* into a private table ``tortie_igp`` that serves BIRD's next-hop resolution, and
  the agent programs every route. ``error wait time 1, 10`` and ``connect retry time 2``
  (BIRD's defaults, 60-300 s and 120 s, would leave a restarted peer unconnected for minutes),
  graceful restart on (BIRD keeps a restarting peer's routes until its End-of-RIB).
- Protocol names say the peer type (``Mesh_``, ``Global_``, ``Node_``, ``RR_`` + the address
  with ``_``), as Calico's do, so ``show protocols`` alone gives ``tortie node status``.
- Learned routes: BIRD has no event stream, so :class:`BirdSpeaker` polls ``show route
  where source = RTS_BGP all`` over the control socket every ``poll_interval`` (0.2 s by
  default: p50 latency about 0.1 s on a reflector, which only matters for the reflector's own
  pods) and diffs it (:class:`tortie.bgp.routes.LearnedTable`). The control socket is spoken
  directly (the protocol ``birdc`` uses), so polling forks nothing.
- Changes (peers, announced blocks) rewrite the config and send ``configure``: BIRD keeps
  every protocol whose definition did not change.

Hazards:
- BIRD strings have no escapes: a password containing ``"``, ``\\`` or a newline cannot be
  written and is refused (:class:`BGPConfigError`).
- ``stop(withdraw=False)`` kills BIRD with SIGKILL: on SIGTERM BIRD sends a Cease to every
  peer, after which graceful restart does not apply and peers drop our routes at once. A
  restart after a crash runs ``bird -R`` (graceful restart recovery).
- BIRD has no End-of-RIB in its CLI; after our own restart a peer counts as resynced once its
  session has been up ``sync_delay`` seconds (1 s), then routes it did not resend go.
- A BIRD that runs but does not answer (stopped, wedged) is what calico-node's ``-bird-live``
  probe catches: here the poll is the probe. No answer for 5 s (or ``/proc`` says stopped):
  "not responding"; after :func:`tortie.bgp.liveness.restart_after` it is killed (SIGKILL,
  so peers keep our routes through graceful restart) and restarted with ``-R``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import TYPE_CHECKING

from tortie.bgp.liveness import (
    ANSWER_DEADLINE,
    LivenessTracker,
    restart_after,
    stopped_detail,
)
from tortie.bgp.process import Supervised
from tortie.bgp.routes import LearnedTable
from tortie.bgp.speaker_base import DaemonSpeaker
from tortie.bgp.types import (
    BGPConfigError,
    BGPError,
    BGPPeerSpec,
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
    "CONTROL_NAME",
    "BirdControl",
    "BirdError",
    "BirdSpeaker",
    "ProtocolRow",
    "parse_bgp_routes",
    "parse_protocols",
    "peer_of_protocol",
    "protocol_name",
    "render_config",
]

log = logging.getLogger(__name__)

CONFIG_NAME = "bird.conf"
CONTROL_NAME = "bird.ctl"
PID_NAME = "bird.pid"
LOG_NAME = "bird.log"

_TYPE_PREFIX = {
    "node-to-node mesh": "Mesh",
    "global": "Global",
    "node specific": "Node",
    "route reflector": "RR",
}
_PREFIX_TYPE = {v: k for k, v in _TYPE_PREFIX.items()}


class BirdError(BGPError):
    """BIRD refused a command or its control socket failed."""


def protocol_name(peer: BGPPeerSpec) -> str:
    """``Mesh_10_0_0_2`` and so on: the BIRD protocol of a peer (type + address)."""
    return f"{_TYPE_PREFIX[peer.peer_type]}_{str(peer.address).replace('.', '_')}"


def peer_of_protocol(name: str) -> tuple[str, IPv4Address] | None:
    """The inverse of :func:`protocol_name`: (peer type, address), or ``None``."""
    kind, _, rest = name.partition("_")
    peer_type = _PREFIX_TYPE.get(kind)
    if peer_type is None:
        return None
    try:
        return peer_type, IPv4Address(rest.replace("_", "."))
    except ValueError:
        return None


def _bird_string(text: str, what: str) -> str:
    if any(c in text for c in '"\\\n\r'):
        raise BGPConfigError(f"{what} contains a quote, backslash or newline; BIRD cannot use it")
    return f'"{text}"'


def render_config(
    config: SpeakerConfig, announced: Iterable[IPv4Network], *, log_path: Path | None = None
) -> str:
    """BIRD 2's configuration for ``config``, announcing ``announced``."""
    lines = [
        f"# Generated by tortie for node {config.node_name}; rewritten on every change.",
        f"router id {config.router_id};",
        # Unix seconds in `show protocols`, so status parsing needs no date formats.
        'timeformat protocol "%s";',
    ]
    classes = "{ info, remote, warning, error, auth, fatal, bug }"
    if log_path is not None:
        lines.append(f"log {_bird_string(str(log_path), 'the log path')} {classes};")
    else:
        lines.append(f"log stderr {classes};")
    lines += [
        "",
        "# Next-hop resolution only: connected and kernel routes are imported into a private",
        "# table. Nothing is ever exported to the kernel: the tortie agent programs routes.",
        "ipv4 table tortie_igp;",
        "protocol device { scan time 10; }",
        "protocol direct tortie_direct { ipv4 { table tortie_igp; import all; export none; }; }",
        "protocol kernel tortie_kernel {",
        "    ipv4 { table tortie_igp; import all; export none; };",
        "    learn;",
        "    scan time 10;",
        "}",
        "",
        "# This node's blocks; BGP announces them with this node as next hop.",
        "protocol static tortie_announce {",
        "    ipv4;",
    ]
    lines += [f"    route {prefix} blackhole;" for prefix in sorted(set(announced))]
    lines += [
        "}",
        "",
        "template bgp tortie_peer {",
        f"    local {config.local_address} port {config.listen_port} as {config.asn};",
        "    connect delay time 1;",
        "    connect retry time 2;",
        "    error wait time 1, 10;",
    ]
    if config.graceful_restart:
        lines += [
            "    graceful restart on;",
            f"    graceful restart time {config.graceful_restart};",
        ]
    else:
        lines.append("    graceful restart off;")
    lines += [
        "    ipv4 {",
        "        import all;",
        "        export where source ~ [ RTS_STATIC, RTS_BGP ];",
        "        igp table tortie_igp;",
        "    };",
        "}",
    ]
    for peer in config.peers:
        lines += [
            "",
            f"protocol bgp {protocol_name(peer)} from tortie_peer {{",
            f"    description {_bird_string(_describe(peer), 'the description')};",
            f"    neighbor {peer.address} port {peer.port} as {peer.asn};",
            f"    hold time {peer.hold_time};",
        ]
        if peer.hold_time:
            lines.append(f"    keepalive time {peer.effective_keepalive};")
        if peer.passive:
            lines.append("    passive on;")
        if peer.password is not None:
            lines.append(f"    password {_bird_string(peer.password, 'a BGP password')};")
        if peer.route_reflector_client and config.rr_cluster_id is not None:
            lines += ["    rr client;", f"    rr cluster id {config.rr_cluster_id};"]
        lines.append("}")
    return "\n".join(lines) + "\n"


def _describe(peer: BGPPeerSpec) -> str:
    return f"{peer.peer_type}" + (f" {peer.node_name}" if peer.node_name else "")


# -- the control socket -----------------------------------------------------------------------


class BirdControl:
    """BIRD's control socket (what ``birdc`` speaks): one request at a time, thread-safe.

    Each reply line is ``CODE-text`` (more follows), ``CODE text`` (last line) or `` text``
    (continuation of the previous code). Codes 8xxx/9xxx are errors.
    """

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._sock = None
        self._buf = b""

    def _connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except OSError as exc:
            sock.close()
            raise BirdError(f"cannot reach BIRD at {self.path}: {exc}") from exc
        self._sock = sock
        self._buf = b""
        self._read_reply()  # the greeting: 0001 BIRD x.y ready.

    def request(self, command: str) -> list[tuple[int, str]]:
        """Send ``command``; return its reply as (code, text) lines, or raise BirdError."""
        if "\n" in command:
            raise BirdError("a BIRD command is one line")
        with self._lock:
            try:
                if self._sock is None:
                    self._connect()
                assert self._sock is not None
                self._sock.sendall(command.encode() + b"\n")
                reply = self._read_reply()
            except (OSError, BirdError) as exc:
                self._close()
                if isinstance(exc, BirdError):
                    raise
                raise BirdError(f"BIRD control socket {self.path}: {exc}") from exc
        errors = [text for code, text in reply if code >= 8000]
        if errors:
            raise BirdError(f"BIRD refused {command!r}: {'; '.join(errors)}")
        return reply

    def _readline(self) -> bytes:
        assert self._sock is not None
        while b"\n" not in self._buf:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise BirdError("BIRD closed the control connection")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def _read_reply(self) -> list[tuple[int, str]]:
        out: list[tuple[int, str]] = []
        code = 0
        while True:
            line = self._readline().decode(errors="replace")
            if len(line) >= 5 and line[:4].isdigit() and line[4] in "- ":
                code = int(line[:4])
                out.append((code, line[5:]))
                if line[4] == " ":
                    return out
            else:
                out.append((code, line[1:] if line.startswith(" ") else line))


@dataclass(frozen=True, slots=True)
class ProtocolRow:
    """One line of ``show protocols``."""

    name: str
    proto: str
    table: str
    state: str
    since: float | None
    info: str


def parse_protocols(reply: Iterable[tuple[int, str]]) -> list[ProtocolRow]:
    """Rows of ``show protocols`` (with ``timeformat protocol "%s"``)."""
    rows = []
    for code, text in reply:
        if code != 1002:
            continue
        parts = text.split(None, 5)
        if len(parts) < 5:
            continue
        name, proto, table, state, since_text = parts[:5]
        info = " ".join(parts[5].split()) if len(parts) > 5 else ""
        try:
            since: float | None = float(since_text)
        except ValueError:
            since = None  # another timeformat: keep the row, lose the time
            info = " ".join([since_text, info]).strip()
        rows.append(ProtocolRow(name, proto, table, state, since, info))
    return rows


_ROUTE_LINE = re.compile(r"^(?P<prefix>\d+\.\d+\.\d+\.\d+/\d+)?\s+\S+\s+\[(?P<proto>[^\s\]]+)")


def parse_bgp_routes(
    reply: Iterable[tuple[int, str]],
) -> dict[str, list[tuple[IPv4Network, IPv4Address]]]:
    """``show route ... all`` as ``{protocol: [(prefix, BGP next hop)]}``."""
    out: dict[str, list[tuple[IPv4Network, IPv4Address]]] = {}
    prefix: IPv4Network | None = None
    current: tuple[str, IPv4Network] | None = None
    via: IPv4Address | None = None
    next_hop: IPv4Address | None = None

    def finish() -> None:
        if current is not None:
            hop = next_hop or via
            if hop is not None:
                out.setdefault(current[0], []).append((current[1], hop))

    for _code, text in reply:
        match = _ROUTE_LINE.match(text)
        if match:
            finish()
            current, via, next_hop = None, None, None
            if match["prefix"]:
                try:
                    prefix = IPv4Network(match["prefix"])
                except ValueError:
                    prefix = None
            if prefix is not None:
                current = (match["proto"], prefix)
            continue
        body = text.strip()
        if body.startswith("BGP.next_hop:"):
            with contextlib.suppress(ValueError, IndexError):
                next_hop = IPv4Address(body.split(":", 1)[1].split()[0])
        elif body.startswith("via ") and via is None:
            with contextlib.suppress(ValueError, IndexError):
                via = IPv4Address(body.split()[1])
    finish()
    return out


# -- the speaker ----------------------------------------------------------------------------


class BirdSpeaker(DaemonSpeaker):
    """BIRD 2 driven for the agent (implements :class:`tortie.bgp.types.Speaker`).

    Files live in ``state_dir`` (``bird.conf``, control socket ``bird.ctl``, ``bird.pid``,
    ``bird.log``). ``netns`` runs BIRD in that namespace (tests); the agent leaves it None.
    """

    def __init__(
        self,
        config: SpeakerConfig,
        state_dir: Path | str,
        on_event: EventCallback | None = None,
        *,
        netns: str | None = None,
        bird: str = "bird",
        poll_interval: float = 0.2,
        sync_delay: float = 1.0,
        min_backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        self.state_dir = Path(state_dir).absolute()
        self._config = config
        self._on_event = on_event
        self.poll_interval = poll_interval
        self.sync_delay = sync_delay
        self._conf_path = self.state_dir / CONFIG_NAME
        self._ctl_path = self.state_dir / CONTROL_NAME
        if len(str(self._ctl_path)) > 107:
            raise BGPConfigError(f"{self._ctl_path}: too long for a unix socket path")
        self._control = BirdControl(self._ctl_path)
        self._lock = threading.RLock()
        self._announced: frozenset[IPv4Network] = frozenset()
        self._table = LearnedTable()
        self._peers: dict[str, PeerStatus] = {}
        self._up_since: dict[IPv4Address, float] = {}
        self._synced: set[IPv4Address] = set()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._pending_configure = False
        self._liveness = LivenessTracker(restart_after(config))
        self._answered_at = 0.0  # monotonic: the last poll BIRD answered
        self._poll_error = ""
        self._daemon = Supervised(
            "bird",
            self._argv,
            pid_path=self.state_dir / PID_NAME,
            log_path=self.state_dir / LOG_NAME,
            marker=str(self._conf_path),
            netns=netns,
            min_backoff=min_backoff,
            max_backoff=max_backoff,
        )
        self._bird = bird

    def _argv(self, restarting: bool) -> Sequence[str]:
        argv = [self._bird, "-f", "-c", str(self._conf_path), "-s", str(self._ctl_path)]
        if restarting:
            argv.append("-R")  # graceful restart recovery: peers keep our routes meanwhile
        return argv

    # -- Speaker ---------------------------------------------------------------------------

    def start(self) -> None:
        """Write the config and start BIRD (or adopt ours, left running by an earlier agent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._lock:
            self._write_config()
        self._daemon.start()
        self._emit(
            [
                SpeakerHealth(
                    True, f"adopted PID {self._daemon.pid}" if self._daemon.adopted else "started"
                )
            ]
        )
        if self._daemon.adopted:
            # An adopted BIRD runs an older config: bring it up to date.
            with contextlib.suppress(BirdError):
                self._configure()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="bird-speaker", daemon=True)
        self._thread.start()

    def stop(self, *, withdraw: bool = True, timeout: float = 10.0) -> None:
        """``withdraw``: SIGTERM (BIRD sends a Cease, peers drop our routes at once); else
        SIGKILL, so peers keep our routes through graceful restart."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5.0)
        self._thread = None
        self._control.close()
        self._daemon.stop(timeout=timeout, sig=signal.SIGTERM if withdraw else signal.SIGKILL)

    def detach(self) -> None:
        """Stop watching but leave BIRD running for the next agent to adopt."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5.0)
        self._thread = None
        self._control.close()
        self._daemon.detach()

    def update_config(self, config: SpeakerConfig) -> None:
        """Rewrite the config and ``configure``: unchanged sessions stay up. Raises
        :class:`BirdError` if BIRD rejects the config (it keeps running the old one)."""
        with self._lock:
            if config == self._config:
                return
            old, self._config = self._config, config
            try:
                self._write_config()
            except BGPConfigError:
                self._config = old
                raise
            self._liveness.restart_after = restart_after(config)
            events: list[SpeakerEvent] = list(
                self._table.keep_only_peers(p.address for p in config.peers)
            )
            for address in list(self._peers):
                if config.peer(IPv4Address(address)) is None:
                    del self._peers[address]
        self._emit(events)
        self._configure_if_running()
        self._wake.set()

    def set_announced(self, prefixes: Iterable[IPv4Network]) -> None:
        wanted = frozenset(IPv4Network(p) for p in prefixes)
        with self._lock:
            if wanted == self._announced:
                return
            self._announced = wanted
            self._write_config()
        self._configure_if_running()

    def request(self, command: str) -> list[tuple[int, str]]:
        """A raw BIRD CLI command (``show route``...), for diagnostics and tests."""
        return self._control.request(command)

    # -- internals -------------------------------------------------------------------------

    def _write_config(self) -> None:
        text = render_config(self._config, self._announced, log_path=None)
        tmp = self._conf_path.with_name(f".{self._conf_path.name}.tmp")
        tmp.write_text(text)
        tmp.chmod(0o600)  # may hold BGP passwords
        tmp.replace(self._conf_path)

    def _configure_if_running(self) -> None:
        if not self._daemon.running:
            return  # the next start reads the file
        try:
            self._configure()
        except BirdError as exc:
            if not self._daemon.running or "cannot reach" in str(exc):
                # Starting (it may have read the previous file already, before its control
                # socket existed) or restarting: the loop configures as soon as it answers.
                log.info("BIRD not reachable for configure (%s); retrying from the loop", exc)
                self._pending_configure = True
                return
            raise

    def _configure(self) -> None:
        self._pending_configure = False
        reply = self._control.request(f'configure "{self._conf_path}"')
        codes = {code for code, _ in reply}
        if not codes & {3, 4, 18, 19, 20}:
            log.info("BIRD configure answered %s", reply)

    def _loop(self) -> None:
        next_poll = 0.0
        while not self._stop.is_set():
            try:
                what = self._daemon.poll()
                if what is not None:
                    self._on_daemon(what)
                now = time.monotonic()
                if now >= next_poll and self._daemon.running:
                    next_poll = now + self.poll_interval
                    if self._pending_configure:
                        try:
                            self._configure()
                        except BirdError as exc:
                            self._pending_configure = True
                            log.debug("configure still pending: %s", exc)
                    if self._poll():
                        self._answered_at = time.monotonic()
                    self._judge(self._liveness_problem(), "BIRD")
                with self._lock:
                    events = self._table.expire(time.time())
                self._emit(events)
            except Exception:  # the speaker thread must survive its own bugs
                log.exception("bird speaker loop")
            self._wake.wait(max(0.0, min(self.poll_interval, next_poll - time.monotonic())))
            self._wake.clear()

    def _on_daemon(self, what: str) -> None:
        if what.startswith("exited"):
            self._control.close()
            with self._lock:
                self._table.mark_stale(time.time() + self._config.graceful_restart)
                self._up_since.clear()
                self._synced.clear()
        self._emit([SpeakerHealth(what == "restarted", what)])

    def _liveness_problem(self) -> str | None:
        """BIRD is stopped, or its control socket has not answered for ANSWER_DEADLINE."""
        if not self._daemon.running:
            return None
        stopped = stopped_detail("BIRD", self._daemon.pid)
        if stopped is not None:
            return stopped
        quiet = time.monotonic() - max(self._answered_at, time.monotonic() - self._daemon.uptime)
        if quiet > ANSWER_DEADLINE:
            return f"BIRD (PID {self._daemon.pid}) does not answer on {self._ctl_path}" + (
                f": {self._poll_error}" if self._poll_error else ""
            )
        return None

    def _on_wedged(self) -> None:
        self._control.close()

    def _poll(self) -> bool:
        """Read sessions and learned routes from BIRD; False if it did not answer."""
        try:
            protocols = parse_protocols(self._control.request("show protocols"))
            routes = parse_bgp_routes(
                self._control.request("show route where source = RTS_BGP all")
            )
        except BirdError as exc:
            log.debug("poll failed: %s", exc)
            self._poll_error = str(exc)
            return False
        self._poll_error = ""
        now = time.time()
        events: list[SpeakerEvent] = []
        with self._lock:
            by_address: dict[IPv4Address, ProtocolRow] = {}
            for row in protocols:
                parsed = peer_of_protocol(row.name)
                if row.proto == "BGP" and parsed is not None:
                    by_address[parsed[1]] = row
            for peer in self._config.peers:
                found = by_address.get(peer.address)
                if found is None:
                    continue
                status = PeerStatus(
                    str(peer.address), peer.peer_type, found.state, found.since, found.info
                )
                if self._peers.get(status.address) != status:
                    self._peers[status.address] = status
                    events.append(PeerChanged(status))
                established = found.state == "up"
                if not established:
                    self._up_since.pop(peer.address, None)
                    self._synced.discard(peer.address)
                else:
                    self._up_since.setdefault(peer.address, now)
            wanted = {p.address for p in self._config.peers}
            learned: dict[IPv4Address, list[tuple[IPv4Network, IPv4Address]]] = {}
            for name, items in routes.items():
                parsed = peer_of_protocol(name)
                if parsed is not None and parsed[1] in wanted:
                    learned.setdefault(parsed[1], []).extend(items)
            for address in sorted(wanted | set(self._table.peers())):
                events.extend(self._table.replace_peer(address, learned.get(address, [])))
            for address, since in self._up_since.items():
                if address not in self._synced and now - since >= self.sync_delay:
                    self._synced.add(address)
                    events.extend(self._table.sweep_stale(address))
            events.extend(self._table.keep_only_peers(wanted))
        self._emit(events)
        return True


if TYPE_CHECKING:  # mypy proves BirdSpeaker is a Speaker; nothing runs at import

    def _is_a_speaker(speaker: BirdSpeaker) -> Speaker:
        return speaker
