"""ExaBGP's API, both directions: parse the JSON lines it writes, format the commands it reads.

Problem: ExaBGP (5.0.15) talks to its helper process over the helper's stdin/stdout. On
stdin come one JSON object per line (``encoder json``) interleaved with plain ``done`` /
``error`` acknowledgements; on stdout go text commands. We need typed messages out of the
first and well-formed lines for the second, and nothing in here may ever take the helper
down: ExaBGP's JSON has changed shape between versions and a line can be cut or garbled.

Shapes relied on (seen from 5.0.15, see the field notes section 4)::

    {"type": "state", "neighbor": {"address": {"peer": P}, "state": "up"|"down"|"connected",
                                   "reason": "..."}}
    {"type": "open", "neighbor": {"address": {"peer": P}, "direction": "receive",
                                  "open": {"capabilities": {"64": {"name": "graceful restart",
                                                                   "time": T}}}}}
    {"type": "update", "neighbor": {"address": {"peer": P}, "direction": "receive",
        "message": {"update": {"announce": {"ipv4 unicast": {NH: [{"nlri": PFX}]}},
                               "withdraw": {"ipv4 unicast": [{"nlri": PFX}]}}
                    | {"eor": {"afi": "ipv4", "safi": "unicast"}}}}}
    {"type": "notification", "notification": "shutdown"}

Invariants:
- :func:`parse_line` never raises: anything it cannot use becomes :class:`Ignored` with the
  reason (the caller logs it). Prefixes and next hops are validated (IPv4 only; other
  families and malformed entries are skipped individually, not the whole update).
- Command formatting only accepts ``ipaddress`` values, so no user text reaches ExaBGP.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any

__all__ = [
    "Ack",
    "ApiMessage",
    "Ignored",
    "Notification",
    "Open",
    "Shutdown",
    "State",
    "Update",
    "cmd_announce",
    "cmd_eor",
    "cmd_withdraw",
    "parse_line",
]


@dataclass(frozen=True, slots=True)
class Ack:
    """``done`` or ``error``: ExaBGP's answer to our last command."""

    ok: bool


@dataclass(frozen=True, slots=True)
class State:
    """A session state change: ``up``, ``down`` (with ``reason``) or ``connected``."""

    peer: IPv4Address
    state: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Open:
    """The peer's OPEN: its graceful-restart time, or ``None`` if it does not do GR."""

    peer: IPv4Address
    graceful_restart: int | None
    hold_time: int | None = None


@dataclass(frozen=True, slots=True)
class Update:
    """Received routes. ``eor`` is an End-of-RIB marker for IPv4 unicast."""

    peer: IPv4Address
    announce: tuple[tuple[IPv4Network, IPv4Address], ...] = ()
    withdraw: tuple[IPv4Network, ...] = ()
    eor: bool = False
    skipped: tuple[str, ...] = field(default=(), compare=False)


@dataclass(frozen=True, slots=True)
class Notification:
    """A NOTIFICATION sent to or received from a peer."""

    peer: IPv4Address
    code: int
    subcode: int
    direction: str


@dataclass(frozen=True, slots=True)
class Shutdown:
    """ExaBGP is exiting."""


@dataclass(frozen=True, slots=True)
class Ignored:
    """A line we cannot or need not use; ``reason`` says which (for the log)."""

    reason: str


ApiMessage = Ack | State | Open | Update | Notification | Shutdown | Ignored

_IPV4_UNICAST = "ipv4 unicast"
_PLAIN_TEXT = re.compile(r"^[a-z][a-z ]{0,60}$")


def parse_line(line: str | bytes) -> ApiMessage:
    """One line from ExaBGP as a typed message (never raises; see the module docstring)."""
    try:
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        text = text.strip()
        if not text:
            return Ignored("empty line")
        if text in ("done", "error"):
            return Ack(text == "done")
        try:
            obj = json.loads(text)
        except ValueError as exc:
            if _PLAIN_TEXT.match(text):
                # ExaBGP answers some commands in words ("reload in progress").
                return Ignored(f"text from ExaBGP: {_clip(text)}")
            return Ignored(f"not JSON ({exc.__class__.__name__}: {exc}): {_clip(text)}")
        if not isinstance(obj, dict):
            return Ignored(f"not a JSON object: {_clip(text)}")
        return _parse_object(obj, text)
    except Exception as exc:  # a parser bug must not take the helper down
        return Ignored(f"unparseable ({exc.__class__.__name__}: {exc}): {_clip(str(line))}")


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _parse_object(obj: Mapping[str, Any], text: str) -> ApiMessage:
    kind = obj.get("type")
    if kind == "notification" and obj.get("notification") == "shutdown":
        return Shutdown()
    neighbor = obj.get("neighbor")
    if not isinstance(neighbor, dict):
        return Ignored(f"{kind!r} message without a neighbor: {_clip(text)}")
    peer = _peer_address(neighbor)
    if peer is None:
        return Ignored(f"{kind!r} message without an IPv4 peer address: {_clip(text)}")
    if kind == "state":
        state = neighbor.get("state")
        if not isinstance(state, str):
            return Ignored(f"state message without a state: {_clip(text)}")
        reason = neighbor.get("reason")
        return State(peer, state, reason if isinstance(reason, str) else "")
    if kind == "open":
        if neighbor.get("direction") != "receive":
            return Ignored("our own OPEN")
        return _parse_open(peer, neighbor.get("open"))
    if kind == "update":
        if neighbor.get("direction", "receive") != "receive":
            return Ignored("an update we sent")
        message = neighbor.get("message")
        if not isinstance(message, dict):
            return Ignored(f"update without a message: {_clip(text)}")
        return _parse_update(peer, message)
    if kind == "notification":
        body = neighbor.get("notification")
        if isinstance(body, dict):
            code, subcode = body.get("code"), body.get("subcode")
            if isinstance(code, int) and isinstance(subcode, int):
                return Notification(peer, code, subcode, str(neighbor.get("direction", "")))
        return Ignored(f"notification without code: {_clip(text)}")
    return Ignored(f"message type {kind!r} not used")


def _peer_address(neighbor: Mapping[str, Any]) -> IPv4Address | None:
    address = neighbor.get("address")
    if not isinstance(address, dict):
        return None
    return _ipv4(address.get("peer"))


def _ipv4(value: object) -> IPv4Address | None:
    if not isinstance(value, str):
        return None
    try:
        return IPv4Address(value)
    except ValueError:
        return None


def _prefix(value: object) -> IPv4Network | None:
    if isinstance(value, dict):
        value = value.get("nlri")
    if not isinstance(value, str):
        return None
    try:
        return IPv4Network(value)  # strict: host bits set is malformed, not "close enough"
    except ValueError:
        return None


def _parse_open(peer: IPv4Address, body: object) -> ApiMessage:
    if not isinstance(body, dict):
        return Ignored("OPEN without a body")
    hold = body.get("hold_time")
    gr: int | None = None
    capabilities = body.get("capabilities")
    if isinstance(capabilities, dict):
        for cap in capabilities.values():
            if isinstance(cap, dict) and cap.get("name") == "graceful restart":
                time = cap.get("time")
                gr = time if isinstance(time, int) and time >= 0 else 0
    return Open(peer, gr, hold if isinstance(hold, int) else None)


def _parse_update(peer: IPv4Address, message: Mapping[str, Any]) -> ApiMessage:
    eor = message.get("eor")
    if isinstance(eor, dict):
        if eor.get("afi") == "ipv4" and eor.get("safi") == "unicast":
            return Update(peer, eor=True)
        return Ignored(f"End-of-RIB for another family: {eor}")
    update = message.get("update")
    if not isinstance(update, dict):
        return Ignored("update message without an update")
    skipped: list[str] = []
    announce: list[tuple[IPv4Network, IPv4Address]] = []
    withdraw: list[IPv4Network] = []
    families = update.get("announce")
    if isinstance(families, dict):
        for family, by_next_hop in families.items():
            if family != _IPV4_UNICAST or not isinstance(by_next_hop, dict):
                skipped.append(f"announce for {family}")
                continue
            for next_hop_text, nlris in by_next_hop.items():
                next_hop = _ipv4(next_hop_text)
                if next_hop is None or not isinstance(nlris, list):
                    skipped.append(f"next hop {next_hop_text!r}")
                    continue
                for nlri in nlris:
                    prefix = _prefix(nlri)
                    if prefix is None:
                        skipped.append(f"nlri {nlri!r}")
                    else:
                        announce.append((prefix, next_hop))
    families = update.get("withdraw")
    if isinstance(families, dict):
        for family, nlris in families.items():
            if family != _IPV4_UNICAST or not isinstance(nlris, list):
                skipped.append(f"withdraw for {family}")
                continue
            for nlri in nlris:
                prefix = _prefix(nlri)
                if prefix is None:
                    skipped.append(f"nlri {nlri!r}")
                else:
                    withdraw.append(prefix)
    if not announce and not withdraw and skipped:
        return Ignored("update with nothing usable: " + ", ".join(skipped[:5]))
    return Update(peer, tuple(announce), tuple(withdraw), False, tuple(skipped))


# -- commands -------------------------------------------------------------------------------


def _target(peer: IPv4Address | None) -> str:
    return f"neighbor {peer} " if peer is not None else ""


def cmd_announce(prefix: IPv4Network, peer: IPv4Address | None = None) -> str:
    """Announce ``prefix`` with ourselves as next hop, to ``peer`` or to every peer."""
    return f"{_target(peer)}announce route {prefix} next-hop self"


def cmd_withdraw(prefix: IPv4Network, peer: IPv4Address | None = None) -> str:
    return f"{_target(peer)}withdraw route {prefix} next-hop self"


def cmd_eor(peer: IPv4Address) -> str:
    """End-of-RIB for IPv4 unicast (we run with ``manual-eor``, see :mod:`tortie.bgp.exabgp`)."""
    return f"neighbor {peer} announce eor ipv4 unicast"
