"""The data of a trace: packets, the evidence behind each claim, hops, journeys.

Problem: the trace walks a packet through a lab and must say, at every hop, what the kernel
answered and what the packet looks like on the wire; the text renderer, the JSON output, the
capture comparison and the tests all read the same record. This module is that record, plain
frozen dataclasses plus ``to_json``, with no I/O and no knowledge of how it was filled.

Invariants:
- every claim a step makes carries its :class:`Evidence` (the command a user would type in that
  namespace and the kernel's answer verbatim), so a reader can re-run and check it;
- a :class:`Packet` is the packet *as it is on the wire* at one point: the inner (pod) header,
  and the outer header only while it is encapsulated; :meth:`Packet.wire` renders it the way
  ``tcpdump -n`` prints it, so predictions and captures can be put side by side;
- addresses are kept as dotted strings (what the tools print and JSON carries).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

PlaceKind = Literal["pod", "node", "router"]
Outcome = Literal["delivered", "dropped", "left-lab", "loop"]
ICMP_REQUEST = "echo request"
ICMP_REPLY = "echo reply"
PROTO_IPIP = "ipip"
PROTO_UDP = "udp"
PROTO_ICMP = "icmp"


@dataclass(frozen=True)
class Evidence:
    """One command run in one namespace, and what it printed (stdout, or stderr on failure)."""

    place: str
    argv: tuple[str, ...]
    output: str
    ok: bool = True

    def command(self) -> str:
        return " ".join(self.argv)

    def to_json(self) -> dict[str, Any]:
        return {
            "place": self.place,
            "command": self.command(),
            "output": self.output,
            "ok": self.ok,
        }


@dataclass(frozen=True)
class Header:
    """An IPv4 header (and, for UDP, the ports and the VXLAN VNI that matter here)."""

    src: str
    dst: str
    proto: str  # PROTO_ICMP, PROTO_IPIP, PROTO_UDP
    dport: int | None = None
    vni: int | None = None
    inner_mac: str | None = None  # VXLAN: the inner frame's destination MAC (not compared)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"src": self.src, "dst": self.dst, "proto": self.proto}
        if self.dport is not None:
            out["dport"] = self.dport
        if self.vni is not None:
            out["vni"] = self.vni
        if self.inner_mac is not None:
            out["innerDstMac"] = self.inner_mac
        return out


@dataclass(frozen=True)
class Packet:
    """An ICMP echo packet, possibly inside an outer header (IPIP or VXLAN)."""

    inner: Header
    icmp: str  # ICMP_REQUEST or ICMP_REPLY
    outer: Header | None = None

    @property
    def top(self) -> Header:
        """The header routers look at: the outer one while encapsulated."""
        return self.outer or self.inner

    def with_inner(self, src: str | None = None, dst: str | None = None) -> Packet:
        inner = replace(self.inner, src=src or self.inner.src, dst=dst or self.inner.dst)
        return replace(self, inner=inner)

    def encapsulated(self, outer: Header) -> Packet:
        return replace(self, outer=outer)

    def decapsulated(self) -> Packet:
        return replace(self, outer=None)

    def shape(self) -> str:
        """One word for what kind of packet this is: plain, IPIP or VXLAN."""
        if self.outer is None:
            return "plain"
        return "IPIP" if self.outer.proto == PROTO_IPIP else "VXLAN"

    def wire(self) -> str:
        """The packet as ``tcpdump -n`` prints it (VXLAN's two lines joined by ' | ')."""
        inner = f"IP {self.inner.src} > {self.inner.dst}: ICMP {self.icmp}"
        if self.outer is None:
            return inner
        if self.outer.proto == PROTO_IPIP:
            return f"IP {self.outer.src} > {self.outer.dst}: {inner}"
        return (
            f"IP {self.outer.src}.* > {self.outer.dst}.{self.outer.dport}: "
            f"VXLAN, vni {self.outer.vni} | {inner}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "shape": self.shape(),
            "wire": self.wire(),
            "outer": self.outer.to_json() if self.outer else None,
            "inner": self.inner.to_json(),
            "icmp": self.icmp,
        }


@dataclass(frozen=True)
class Step:
    """One thing that happens to the packet in one namespace, with the evidence for it.

    ``kind``: route (the kernel's lookup), arp (proxy ARP / neighbour), firewall (an nftables
    verdict), nat, encap, decap, deliver, drop. ``verdict`` is a short word for scripts
    (accept, drop, masquerade, none, local, ...).
    """

    kind: str
    summary: str
    verdict: str = ""
    evidence: tuple[Evidence, ...] = ()
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "summary": self.summary,
            "verdict": self.verdict,
            "data": self.data,
            "evidence": [e.to_json() for e in self.evidence],
        }


@dataclass(frozen=True)
class Place:
    """A namespace of the lab a packet can be in."""

    name: str  # pod1, node2, router
    kind: PlaceKind
    netns: str
    node: str | None = None  # pods: the node they run on
    host_ifname: str | None = None  # pods: the cali interface on that node
    ifname: str | None = None  # pods: eth0; nodes: the uplink

    def wire_device(self, dev: str) -> bool:
        """Whether ``dev`` here is a wire worth capturing (pod eth0, uplinks, router legs).

        A node's cali devices carry the same frames as the pod's eth0, and tunl0's egress is
        invisible to tcpdump (the BPF program redirects before the capture tap).
        """
        if self.kind == "router":
            return True
        return dev == self.ifname


@dataclass(frozen=True)
class Hop:
    place: Place
    in_dev: str | None  # None: the packet starts here
    arrives: Packet | None
    steps: tuple[Step, ...]
    out_dev: str | None  # None: the journey ends here
    leaves: Packet | None

    def to_json(self) -> dict[str, Any]:
        return {
            "place": self.place.name,
            "kind": self.place.kind,
            "netns": self.place.netns,
            "inDev": self.in_dev,
            "arrives": self.arrives.to_json() if self.arrives else None,
            "steps": [s.to_json() for s in self.steps],
            "outDev": self.out_dev,
            "leaves": self.leaves.to_json() if self.leaves else None,
        }


@dataclass(frozen=True)
class Masquerade:
    """A natOutgoing rewrite done at ``place``: the reply's conntrack reverses it there."""

    place: str
    original_src: str
    new_src: str

    def to_json(self) -> dict[str, Any]:
        return {"place": self.place, "originalSrc": self.original_src, "newSrc": self.new_src}


@dataclass(frozen=True)
class Journey:
    direction: Literal["request", "reply"]
    start: Packet
    hops: tuple[Hop, ...]
    outcome: Outcome
    reason: str
    end: Place | None  # where it was delivered (or dropped)
    delivered: Packet | None  # the packet as the destination got it
    masquerade: Masquerade | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "direction": self.direction,
            "start": self.start.to_json(),
            "outcome": self.outcome,
            "reason": self.reason,
            "end": self.end.name if self.end else None,
            "masquerade": self.masquerade.to_json() if self.masquerade else None,
            "hops": [h.to_json() for h in self.hops],
        }


@dataclass(frozen=True)
class Endpoint:
    """What SRC or DST named: a place and an address in it (None: outside the lab)."""

    label: str  # what the user typed
    address: str
    place: Place | None
    explicit_address: bool  # the user gave the address (a node name lets the kernel choose)
    note: str = ""  # how the address was found, when it was not given

    def describe(self) -> str:
        where = self.place.name if self.place else "outside the lab"
        if self.label == self.address:
            return f"{self.address} ({where})"
        note = f", {self.note}" if self.note else ""
        return f"{self.label} ({self.address}{note})"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.label,
            "address": self.address,
            "place": self.place.name if self.place else None,
            "note": self.note,
        }
