"""One hop of a trace being walked: its mutable state, how it ends, and the route step.

Problem: the walk (:mod:`.walk`) and the tunnel logic (:mod:`.tunnel`) both add
steps to the hop in progress and both may end the journey; they share these few types so that
neither has to know the other's internals.

Invariant: a :class:`HopState` is only mutated while its hop is walked; :meth:`HopState.hop`
freezes it into the record (:class:`~tortie.trace.model.Hop`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tortie.model.naming import TUNNEL_DEVICE, WORKLOAD_PREFIX
from tortie.trace.kernel import Lookup
from tortie.trace.model import Hop, Masquerade, Outcome, Packet, Place, Step

TUNL0 = TUNNEL_DEVICE
CALI_PREFIX = WORKLOAD_PREFIX  # the anti-spoofing rule's iifname "cali*"


@dataclass(frozen=True)
class End:
    """The journey ends in this hop."""

    outcome: Outcome
    reason: str


@dataclass(frozen=True)
class Next:
    """The packet goes on to ``place``, arriving on ``iif``."""

    place: Place
    iif: str


@dataclass
class HopState:
    """What one hop has found so far (mutable while the hop is walked)."""

    place: Place
    in_dev: str | None
    arrives: Packet | None
    pkt: Packet
    iif: str | None  # the device the next lookup is "from" (tunl0 after decapsulation)
    explicit_src: bool
    steps: list[Step] = field(default_factory=list)
    out_dev: str | None = None
    masquerade: Masquerade | None = None

    def add(self, step: Step) -> None:
        self.steps.append(step)

    def hop(self, leaves: bool) -> Hop:
        return Hop(
            place=self.place,
            in_dev=self.in_dev,
            arrives=self.arrives,
            steps=tuple(self.steps),
            out_dev=self.out_dev if leaves else None,
            leaves=self.pkt if leaves else None,
        )


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0].strip() if text.strip() else ""


def route_step(lookup: Lookup, what: str = "route") -> Step:
    """The kernel's lookup as a step: its answer verbatim and the FIB entry that matched."""
    answer = _first_line(lookup.answer.output)
    fib = _first_line(lookup.fib_answer.output) if lookup.fib_answer else ""
    data = {
        "command": lookup.answer.command(),
        "answer": answer,
        "matched": fib or None,
        "route": lookup.route.raw if lookup.route else None,
        "fib": lookup.fib.raw if lookup.fib else None,
    }
    if lookup.route is None:
        return Step(
            "route", f"{what}: the kernel refuses: {answer}", "error", lookup.evidence(), data
        )
    summary = f"{what}: {fib or answer}"
    return Step("route", summary, lookup.route.type, lookup.evidence(), data)
