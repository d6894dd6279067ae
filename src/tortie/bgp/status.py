"""``tortie node status``: read the live speaker's peer table and print it like calicoctl.

Problem: an operator asks "are my BGP sessions up?" on a node and expects calicoctl's
answer::

    tortie agent is running.

    IPv4 BGP status
    +--------------+-------------------+-------+----------+-------------+
    | PEER ADDRESS |     PEER TYPE     | STATE |  SINCE   |    INFO     |
    +--------------+-------------------+-------+----------+-------------+
    | 10.99.0.2    | node-to-node mesh | up    | 09:14:03 | Established |
    +--------------+-------------------+-------+----------+-------------+

The rows come from the running speaker, not from the datastore: :func:`fetch_status` asks
the ExaBGP helper's socket (``exabgp.sock``) or BIRD's control socket (``bird.ctl``) in the
node's BGP state directory, whichever answers.

A speaker that runs but does not answer (issue 17, 9b: ExaBGP stopped with SIGSTOP; see
:mod:`tortie.bgp.liveness`) must not look healthy: :func:`fetch` also returns a
:class:`SpeakerCheck` (the helper says how long ExaBGP has owed it an answer, ``/proc`` says
whether the process is stopped), and :func:`render_status` then says so in a line before the
table and shows each session's state as ``unknown``, its last known state in the Info column.

Invariants: rendering is pure (``now`` and the time zone are parameters for tests); cells
are centred in the header and left-aligned in rows, as calicoctl's table writer does; the
``since`` column shows the time of day when the change was less than 20 hours ago and the
date otherwise (BIRD's convention, which calicoctl shows verbatim).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any

from tortie.bgp import bird, exabgp
from tortie.bgp.bird import CONTROL_NAME, BirdControl, BirdError, parse_protocols, peer_of_protocol
from tortie.bgp.exabgp import SOCKET_NAME
from tortie.bgp.exabgp_helper import status_from_json
from tortie.bgp.liveness import ANSWER_DEADLINE, stopped_detail
from tortie.bgp.types import BGPError, PeerStatus

__all__ = [
    "SpeakerCheck",
    "fetch",
    "fetch_status",
    "format_since",
    "render_status",
    "status_json",
]


@dataclass(frozen=True, slots=True)
class SpeakerCheck:
    """Whether the speaker that answered for the rows is itself alive and answering."""

    speaker: str  # "ExaBGP" or "BIRD"
    pid: int | None
    responding: bool = True
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "speaker": self.speaker,
            "pid": self.pid,
            "responding": self.responding,
            "detail": self.detail,
        }


_HEADERS = ("PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO")


def format_since(since: float | None, now: float | None = None, tz: tzinfo | None = None) -> str:
    """``HH:MM:SS`` if less than 20 hours ago, else ``YYYY-MM-DD`` (local time by default)."""
    if since is None:
        return ""
    now = time.time() if now is None else now
    moment = datetime.fromtimestamp(since, tz) if tz is not None else datetime.fromtimestamp(since)
    if abs(now - since) < 20 * 3600:
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%Y-%m-%d")


def _centre(text: str, width: int) -> str:
    # calicoctl's table writer puts the odd space on the right; str.center puts it left.
    left = (width - len(text)) // 2
    return " " * left + text + " " * (width - len(text) - left)


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(_HEADERS)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    head = "|" + "|".join(f" {_centre(h, w)} " for h, w in zip(_HEADERS, widths, strict=True)) + "|"
    out = [rule, head, rule]
    for row in rows:
        out.append(
            "|" + "|".join(f" {c.ljust(w)} " for c, w in zip(row, widths, strict=True)) + "|"
        )
    out.append(rule)
    return out


def render_status(
    rows: Sequence[PeerStatus],
    agent_running: bool,
    *,
    now: float | None = None,
    tz: tzinfo | None = None,
    speaker: SpeakerCheck | None = None,
) -> str:
    """calicoctl's ``node status`` text for ``rows`` (see the module docstring)."""
    lines = ["tortie agent is running." if agent_running else "tortie agent is not running."]
    lines.append("")
    if speaker is not None and not speaker.responding:
        pid = f" (PID {speaker.pid})" if speaker.pid else ""
        lines += [
            f"BGP speaker {speaker.speaker}{pid} is NOT RESPONDING: {speaker.detail}.",
            "The sessions below are its last known state; no keepalive leaves this node, so",
            "its peers drop them when their hold timers expire (the agent restarts it first).",
            "",
        ]
        rows = unresponsive_rows(rows)
    lines.append("IPv4 BGP status")
    if rows:
        cells = [
            (r.address, r.peer_type, r.state, format_since(r.since, now, tz), r.info) for r in rows
        ]
        lines += _table(cells)
    else:
        lines.append("No IPv4 peers found.")
    return "\n".join(lines) + "\n"


def unresponsive_rows(rows: Sequence[PeerStatus]) -> list[PeerStatus]:
    """Rows of a speaker that does not answer: nothing about them is known now."""
    return [
        replace(r, state="unknown", info=f"Speaker not responding (last state {r.state})")
        for r in rows
    ]


def status_json(
    rows: Sequence[PeerStatus], agent_running: bool, speaker: SpeakerCheck | None = None
) -> dict[str, Any]:
    """The same as a JSON-ready object (``since`` as ISO 8601 UTC and as Unix seconds)."""
    if speaker is not None and not speaker.responding:
        rows = unresponsive_rows(rows)
    return {
        "agentRunning": agent_running,
        "speaker": speaker.to_json() if speaker is not None else None,
        "ipv4": [
            {
                "peerAddress": r.address,
                "peerType": r.peer_type,
                "state": r.state,
                "since": (
                    datetime.fromtimestamp(r.since, UTC).isoformat()
                    if r.since is not None
                    else None
                ),
                "sinceUnix": r.since,
                "info": r.info,
            }
            for r in rows
        ],
    }


def fetch_status(state_dir: Path | str, timeout: float = 2.0) -> list[PeerStatus]:
    """The live speaker's peer rows, from its socket in ``state_dir``.

    Raises :class:`BGPError` (with a message for the user) when no speaker answers.
    """
    return fetch(state_dir, timeout)[0]


def fetch(state_dir: Path | str, timeout: float = 2.0) -> tuple[list[PeerStatus], SpeakerCheck]:
    """The live speaker's peer rows and whether the speaker itself answers.

    Raises :class:`BGPError` when no speaker answers at all (the message says whether its
    process is stopped).
    """
    state = Path(state_dir)
    errors: list[str] = []
    exa = state / SOCKET_NAME
    if exa.exists():
        try:
            return _fetch_exabgp(exa, timeout)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            errors.append(f"ExaBGP helper at {exa}: {exc}")
            errors += _stopped(state / exabgp.PID_NAME, "ExaBGP")
    ctl = state / CONTROL_NAME
    if ctl.exists():
        try:
            return _fetch_bird(ctl, timeout)
        except BirdError as exc:
            errors.append(str(exc))
            errors += _stopped(state / bird.PID_NAME, "BIRD")
    if not errors:
        raise BGPError(
            f"no BGP speaker is running here (no {SOCKET_NAME} or {CONTROL_NAME} in {state})"
        )
    raise BGPError("cannot read the BGP status: " + "; ".join(errors))


def _pid_file(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _stopped(pid_file: Path, what: str) -> list[str]:
    detail = stopped_detail(what, _pid_file(pid_file))
    return [detail] if detail else []


def _fetch_exabgp(path: Path, timeout: float) -> tuple[list[PeerStatus], SpeakerCheck]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(b'{"op":"status"}\n')
        buf = b""
        while b"\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ValueError("the helper closed the connection without answering")
            buf += chunk
    reply = json.loads(buf.split(b"\n", 1)[0])
    if reply.get("type") != "status":
        raise ValueError(f"unexpected answer {reply!r}")
    rows = [status_from_json(doc) for doc in reply["peers"]]
    exa = reply.get("exabgp") if isinstance(reply.get("exabgp"), dict) else {}
    pid = (
        exa.get("pid")
        if isinstance(exa.get("pid"), int)
        else _pid_file(path.with_name(exabgp.PID_NAME))
    )
    silent = exa.get("silent_for")
    detail = stopped_detail("ExaBGP", pid)
    if detail is None and isinstance(silent, int | float) and silent > ANSWER_DEADLINE:
        detail = f"it has not answered its helper's last command for {silent:.0f} s"
    if detail is not None:
        return rows, SpeakerCheck("ExaBGP", pid, False, detail)
    return rows, SpeakerCheck("ExaBGP", pid)


def _fetch_bird(path: Path, timeout: float) -> tuple[list[PeerStatus], SpeakerCheck]:
    control = BirdControl(path, timeout)
    try:
        rows = parse_protocols(control.request("show protocols"))
    finally:
        control.close()
    out = []
    for row in rows:
        parsed = peer_of_protocol(row.name)
        if row.proto != "BGP" or parsed is None:
            continue
        peer_type, address = parsed
        out.append(PeerStatus(str(address), peer_type, row.state, row.since, row.info))
    out.sort(key=lambda r: tuple(int(x) for x in r.address.split(".")))
    return out, SpeakerCheck("BIRD", _pid_file(path.with_name(bird.PID_NAME)))
