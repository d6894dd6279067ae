"""``trace --capture``: a real probe, with tcpdump listening at every wire of the journey.

Problem: a prediction is only worth something next to what really crossed the wire. For each
capture point (:func:`~tortie.trace.wire.capture_points`) we start ``tcpdump -n -l`` in
that namespace, wait until every one of them listens, send a ping with an ICMP id of our own,
stop the captures and compare (:func:`~tortie.trace.wire.compare_point`).

Invariants:
- exactly the tcpdump processes started here are stopped here (each :class:`Capture` ends its
  own process, in a ``finally``), whatever fails; they carry the lab's token too, so ``lab
  down`` would find one that survived a crash of this process;
- the probe only goes between addresses inside the lab's namespaces (the caller refuses a
  destination outside the lab);
- ``--immediate-mode``: tcpdump hands each packet over at once instead of after its buffer
  timeout, so stopping it right after the ping loses nothing.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from tortie.lab.capture import Capture
from tortie.trace.model import Evidence, Place
from tortie.trace.wire import CapturePoint, PointResult, compare_point

CAPTURE_FILTER = "icmp or ip proto 4 or udp port 4789"
PROBE_COUNT = 2
SETTLE_SECONDS = 0.15  # after the last reply, before the captures stop


@dataclass(frozen=True)
class Probe:
    place: Place
    dst: str
    src: str | None  # ping -I: only when the user named the source address
    icmp_id: int
    count: int = PROBE_COUNT

    def argv(self) -> list[str]:
        argv = ["ping", "-n", "-c", str(self.count), "-i", "0.2", "-W", "1"]
        argv += ["-e", str(self.icmp_id)]
        if self.src is not None:
            argv += ["-I", self.src]
        return [*argv, self.dst]


def new_probe(place: Place, dst: str, src: str | None) -> Probe:
    return Probe(place, dst, src, icmp_id=1 + secrets.randbelow(65534))


@dataclass(frozen=True)
class CaptureReport:
    probe: Probe
    probe_result: Evidence
    points: tuple[PointResult, ...]
    differences: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "probe": {
                "from": self.probe.place.name,
                "command": " ".join(self.probe.argv()),
                "icmpId": self.probe.icmp_id,
                "ok": self.probe_result.ok,
                "output": self.probe_result.output,
            },
            "points": [p.to_json() for p in self.points],
            "differences": list(self.differences),
        }


def _nsenter(place: Place, argv: list[str]) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{place.netns}", "--", *argv]


def tcpdump_argv(place: Place, dev: str) -> list[str]:
    return _nsenter(place, ["tcpdump", "-n", "-l", "--immediate-mode", "-i", dev, CAPTURE_FILTER])


def run_capture(
    points: list[CapturePoint], probe: Probe, marks: dict[str, str], delivered: bool
) -> CaptureReport:
    """Listen at ``points``, send ``probe``, compare. ``marks``: the lab's environment marks
    (:func:`~tortie.trace.places.lab_env`); ``delivered``: the prediction."""
    env = {**os.environ, **marks}
    captures: list[Capture] = []
    lines: list[list[str]] = []
    try:
        for point in points:
            captures.append(Capture(tcpdump_argv(point.place, point.dev), env))
        for capture in captures:
            capture.wait_ready(timeout=10.0)  # tcpdump starts slowly on a loaded host
        result = _ping(probe, env)
        time.sleep(SETTLE_SECONDS)
    finally:
        for capture in captures:
            lines.append(capture.stop())
    compared = tuple(
        compare_point(p, ls, probe.icmp_id) for p, ls in zip(points, lines, strict=True)
    )
    differences = [d for p in compared for d in p.differences]
    if delivered and not result.ok:
        differences.append(f"probe: predicted delivery both ways, but {result.output}")
    if not delivered and result.ok:
        differences.append("probe: predicted no reply, but the ping was answered")
    return CaptureReport(probe, result, compared, tuple(differences))


def _ping(probe: Probe, env: dict[str, str]) -> Evidence:
    argv = probe.argv()
    timeout = probe.count * 1.5 + 5
    try:
        proc = subprocess.run(
            _nsenter(probe.place, argv),
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Evidence(probe.place.name, tuple(argv), f"no answer in {timeout:.0f} s", ok=False)
    summary = [ln for ln in proc.stdout.splitlines() if "transmitted" in ln]
    output = summary[0] if summary else (proc.stderr.strip() or proc.stdout.strip())
    return Evidence(probe.place.name, tuple(argv), output, proc.returncode == 0)
