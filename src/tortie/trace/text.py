"""The trace as text for a newcomer: the seed's walkthrough, hop by hop, from live answers.

Problem: the JSON record (:mod:`.model`) holds everything; a person wants the story:
where the packet is, what the kernel answered there (the command to type and its answer,
verbatim), why (proxy ARP, firewall, tunnel), and what the packet looks like on the wire when
it leaves. Then the captures next to the predictions and, most visibly, the differences.

Invariant: pure (a :class:`~tortie.trace.run.TraceResult` in, lines out); no line depends on
the terminal. Long explanations are wrapped at :data:`WIDTH` with a hanging indent.
"""

from __future__ import annotations

import textwrap

from tortie.trace.capture import CaptureReport
from tortie.trace.model import Hop, Journey, Step
from tortie.trace.run import TraceResult
from tortie.trace.wire import PointResult

WIDTH = 100
KIND_WIDTH = 10
INDENT = " " * (6 + KIND_WIDTH + 1)


def _wrap(first: str, text: str, indent: str = INDENT) -> list[str]:
    return textwrap.wrap(
        text, WIDTH, initial_indent=first, subsequent_indent=indent, break_on_hyphens=False
    ) or [first.rstrip()]


def _step_lines(step: Step, verbose: bool) -> list[str]:
    head = f"      {step.kind:<{KIND_WIDTH}} "
    if step.kind == "route":
        command = step.data.get("command") or ""
        answer = step.data.get("answer") or ""
        lines = [f"{head}$ {command}", f"{INDENT}{answer}"]
        matched = step.data.get("matched")
        if matched and matched != answer:
            lines.append(f"{INDENT}(matched route: {matched})")
        if step.summary.startswith("outer"):
            lines[0] = f"{head}$ {command}   # the outer packet"
        return lines
    lines = _wrap(head, step.summary)
    if verbose:
        lines += [f"{INDENT}checked: {e.command()} (in {e.place})" for e in step.evidence]
    return lines


def _hop_lines(number: int, hop: Hop, verbose: bool) -> list[str]:
    place = hop.place
    where = "sends" if hop.in_dev is None else f"in on {hop.in_dev}"
    lines = [f" {number:>2}  {place.name} ({place.kind}, netns {place.netns}): {where}"]
    for step in hop.steps:
        lines += _step_lines(step, verbose)
    if hop.leaves is not None and hop.out_dev is not None:
        lines += _wrap(
            f"      {'wire':<{KIND_WIDTH}} ",
            f"leaves by {hop.out_dev} as {hop.leaves.wire()}   [{hop.leaves.shape()}]",
        )
    return lines


def path_text(journey: Journey) -> str:
    """The journey in one line, the way the seed tells it: namespaces and devices, with the
    encapsulation and decapsulation (and a masquerade) where they happen."""
    parts = []
    for hop in journey.hops:
        words = [hop.place.name] + ([hop.in_dev] if hop.in_dev else [])
        for step in hop.steps:
            if step.kind == "decap" and step.verdict != "drop":
                words.append(f"({step.verdict.upper()} decapsulated)")
            elif step.kind == "encap":
                words.append(f"-> {step.data.get('device')} ({step.verdict.upper()})")
            elif step.kind == "nat" and step.verdict == "masquerade":
                words.append("(masquerade)")
        if hop.out_dev:
            words.append(f"-> {hop.out_dev}")
        parts.append(" ".join(words))
    ending = {"delivered": "", "dropped": " => DROPPED", "left-lab": " => out of the lab"}
    return " => ".join(parts) + ending.get(journey.outcome, " => LOOP")


def journey_lines(journey: Journey, verbose: bool = False) -> list[str]:
    start = journey.start
    lines = [
        f"{journey.direction.upper()}: {start.inner.src} > {start.inner.dst}, ICMP {start.icmp}",
        *_wrap("  path: ", path_text(journey), " " * 8),
        "",
    ]
    for number, hop in enumerate(journey.hops, start=1):
        lines += _hop_lines(number, hop, verbose)
        lines.append("")
    verdict = {
        "delivered": "delivered",
        "dropped": "DROPPED",
        "left-lab": "LEAVES THE LAB",
        "loop": "LOOPS",
    }[journey.outcome]
    lines.append(f"  => {journey.direction} {verdict}: {journey.reason}")
    if journey.masquerade:
        m = journey.masquerade
        lines.append(f"     (masqueraded on {m.place}: {m.original_src} -> {m.new_src})")
    return lines


def _point_lines(result: PointResult) -> list[str]:
    lines = [f"  {result.point.label} (netns {result.point.place.netns})"]
    for direction in ("request", "reply"):
        predicted = result.point.predicted.get(direction)
        seen = result.observed.get(direction, [])
        if predicted is None and not seen:
            continue
        shown = f"[{predicted.shape()}] {predicted.wire()}" if predicted else "(nothing)"
        lines.append(f"    {direction:<8} predicted  {shown}")
        if not seen:
            lines.append(f"    {'':<8} captured   (nothing)")
            continue
        # One line per distinct packet shape: the probe's packets differ only in seq.
        first: dict[str, tuple[str, int]] = {}
        for observed in seen:
            key = observed.packet.wire()
            line, count = first.get(key, (observed.line, 0))
            first[key] = (line, count + 1)
        for key, (line, count) in first.items():
            shape = next(o.packet.shape() for o in seen if o.packet.wire() == key)
            times = f" (x{count})" if count > 1 else ""
            lines.append(f"    {'':<8} captured   [{shape}] {line}{times}")
    return lines


def capture_lines(report: CaptureReport) -> list[str]:
    probe = report.probe
    lines = [
        f"CAPTURE: {' '.join(probe.argv())} in {probe.place.name} (ICMP id {probe.icmp_id}): "
        f"{report.probe_result.output}",
        "",
    ]
    for point in report.points:
        lines += _point_lines(point)
    lines.append("")
    if not report.differences:
        lines.append("no differences: every wire carried what the trace predicted")
    else:
        lines.append(f"DIFFERENCES ({len(report.differences)}):")
        lines += [f"  - {d}" for d in report.differences]
    return lines


def format_trace(result: TraceResult, verbose: bool = False) -> str:
    lines = [
        f"trace {result.src.describe()} -> {result.dst.describe()} in lab {result.lab}",
        f"built with --mode {result.mode}; the pool now: {result.pool}",
        "",
        *journey_lines(result.request, verbose),
    ]
    if result.reply is not None:
        lines += ["", *journey_lines(result.reply, verbose)]
    if result.capture is not None:
        lines += ["", *capture_lines(result.capture)]
    return "\n".join(lines)
