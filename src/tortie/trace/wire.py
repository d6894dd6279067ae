"""Predicted packets next to captured ones: where to listen, how to read tcpdump, what differs.

Problem: ``trace --capture`` must show, at each wire the journey crosses, the packet the trace
predicts and the one tcpdump saw, and say where they differ ("predicted IPIP but saw plain").
This module is the pure half: the capture points a pair of journeys implies, the parsing of
``tcpdump -n -l`` lines (plain ICMP, IPIP's nested ``IP a > b: IP c > d: ICMP ...``, VXLAN's
two lines) into :class:`~tortie.trace.model.Packet`, and the comparison.

Invariants:
- a capture point is a wire device (pod eth0, node uplink, router leg) some hop of the request
  or the reply enters or leaves; one tcpdump per point sees both directions;
- only packets of our probe count (its ICMP id), so other traffic in the lab cannot make or
  hide a difference;
- compared: the shape (plain, IPIP, VXLAN), outer source/destination/protocol (and UDP port and
  VNI), inner source/destination and the ICMP type. Not compared: the VXLAN source port
  (a flow hash), TTL, lengths.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tortie.trace.model import (
    PROTO_ICMP,
    PROTO_IPIP,
    PROTO_UDP,
    Header,
    Journey,
    Packet,
    Place,
)

_TIMESTAMP = re.compile(r"^\d{2}:\d{2}:\d{2}\.\d+ ")
_ICMP = r"ICMP echo (?P<icmp>request|reply), id (?P<id>\d+)"
_PLAIN = re.compile(rf"^IP (?P<src>[\d.]+) > (?P<dst>[\d.]+): {_ICMP}")
_IPIP = re.compile(
    rf"^IP (?P<osrc>[\d.]+) > (?P<odst>[\d.]+): IP (?P<src>[\d.]+) > (?P<dst>[\d.]+): {_ICMP}"
)
_VXLAN = re.compile(
    r"^IP (?P<osrc>\d+\.\d+\.\d+\.\d+)\.\d+ > (?P<odst>\d+\.\d+\.\d+\.\d+)\.(?P<dport>\d+): "
    r"VXLAN.*?vni (?P<vni>\d+)(?: \| |\s+)"
    rf"IP (?P<src>[\d.]+) > (?P<dst>[\d.]+): {_ICMP}"
)


@dataclass(frozen=True)
class Observed:
    packet: Packet
    icmp_id: int
    line: str


def join_packets(lines: Iterable[str]) -> list[str]:
    """tcpdump lines -> one string per packet (continuations, e.g. VXLAN's inner packet, are
    joined with ' | '), without the timestamps."""
    packets: list[str] = []
    for raw in lines:
        line = raw.rstrip()
        if not line:
            continue
        if _TIMESTAMP.match(line):
            packets.append(_TIMESTAMP.sub("", line, count=1))
        elif packets:
            packets[-1] += " | " + line.strip()
    return packets


def parse_packet(text: str) -> Observed | None:
    """One joined tcpdump packet line -> the packet, or None if it is not an ICMP echo."""
    if m := _VXLAN.match(text):
        outer = Header(m["osrc"], m["odst"], PROTO_UDP, int(m["dport"]), int(m["vni"]))
    elif m := _IPIP.match(text):
        outer = Header(m["osrc"], m["odst"], PROTO_IPIP)
    elif m := _PLAIN.match(text):
        outer = None
    else:
        return None
    inner = Header(m["src"], m["dst"], PROTO_ICMP)
    return Observed(Packet(inner, f"echo {m['icmp']}", outer), int(m["id"]), text)


def same_packet(predicted: Packet, seen: Packet) -> bool:
    if (predicted.inner.src, predicted.inner.dst, predicted.icmp) != (
        seen.inner.src,
        seen.inner.dst,
        seen.icmp,
    ):
        return False
    if predicted.outer is None or seen.outer is None:
        return predicted.outer is None and seen.outer is None
    p, o = predicted.outer, seen.outer
    same = (p.src, p.dst, p.proto) == (o.src, o.dst, o.proto)
    if p.proto == PROTO_UDP:
        same = same and (p.dport, p.vni) == (o.dport, o.vni)
    return same


@dataclass
class CapturePoint:
    place: Place
    dev: str
    predicted: dict[str, Packet] = field(default_factory=dict)  # direction -> packet

    @property
    def label(self) -> str:
        return f"{self.place.name} {self.dev}"


def capture_points(journeys: Iterable[Journey | None]) -> list[CapturePoint]:
    """Every wire device the journeys cross, in order, with the packet predicted there."""
    points: dict[tuple[str, str], CapturePoint] = {}
    for journey in journeys:
        if journey is None:
            continue
        for hop in journey.hops:
            seen = [(hop.in_dev, hop.arrives), (hop.out_dev, hop.leaves)]
            for dev, packet in seen:
                if dev is None or packet is None or not hop.place.wire_device(dev):
                    continue
                point = points.setdefault((hop.place.name, dev), CapturePoint(hop.place, dev))
                point.predicted.setdefault(journey.direction, packet)
    return list(points.values())


@dataclass(frozen=True)
class PointResult:
    point: CapturePoint
    observed: dict[str, list[Observed]]  # direction -> our probe's packets seen there
    differences: tuple[str, ...]
    raw_lines: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "place": self.point.place.name,
            "netns": self.point.place.netns,
            "dev": self.point.dev,
            "differences": list(self.differences),
        }
        for direction in ("request", "reply"):
            predicted = self.point.predicted.get(direction)
            out[direction] = {
                "predicted": predicted.to_json() if predicted else None,
                "captured": [o.line for o in self.observed.get(direction, [])],
                "match": not any(d.startswith(f"{self.point.label} {direction}")
                                 for d in self.differences),
            }  # fmt: skip
        return out


def compare_point(point: CapturePoint, lines: Iterable[str], icmp_id: int) -> PointResult:
    """What tcpdump saw at ``point`` next to the prediction, and every difference."""
    raw = tuple(lines)
    observed: dict[str, list[Observed]] = {"request": [], "reply": []}
    for text in join_packets(raw):
        seen = parse_packet(text)
        if seen is not None and seen.icmp_id == icmp_id:
            direction = "request" if seen.packet.icmp == "echo request" else "reply"
            observed[direction].append(seen)
    diffs: list[str] = []
    for direction in ("request", "reply"):
        predicted = point.predicted.get(direction)
        seen_here = observed[direction]
        where = f"{point.label} {direction}"
        if predicted is None:
            if seen_here:
                diffs.append(f"{where}: not predicted here, saw {_shown(seen_here[0].packet)}")
            continue
        if not seen_here:
            diffs.append(f"{where}: predicted {_shown(predicted)}, saw nothing")
            continue
        for seen in seen_here:
            if not same_packet(predicted, seen.packet):
                diffs.append(f"{where}: predicted {_shown(predicted)}, saw {_shown(seen.packet)}")
                break
    return PointResult(point, observed, tuple(diffs), raw)


def _shown(packet: Packet) -> str:
    return f"{packet.shape()} [{packet.wire()}]"
