"""Replaying recorded namespace answers (test_trace_recordings) as a trace Runner.

``Replay`` answers exactly the commands that were recorded and fails every other one (as a
kernel tool would fail: ok=False), so a test sees at once when the trace asks something new.
``with_answers`` returns a copy of a recording with some answers replaced: the way the unit tests
build a broken lab (a missing set element, proxy ARP off, a blackhole) from a real one.
(Named test_trace_* to sit with the trace's tests; it holds no tests itself.)
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tortie.lab.ops import Lab
from tortie.lab.state import LabState, PodRecord
from tortie.lab.topology import LabOptions, build_topology
from tortie.trace.model import Evidence, Place


@dataclass
class Replay:
    commands: dict[str, tuple[bool, Any]]
    asked: list[str] = field(default_factory=list)

    def run(self, place: Place, argv: Sequence[str]) -> Evidence:
        key = f"{place.name} {' '.join(argv)}"
        self.asked.append(key)
        if key not in self.commands:
            return Evidence(place.name, tuple(argv), f"not recorded: {key}", ok=False)
        ok, out = self.commands[key]
        text = out if isinstance(out, str) else json.dumps(out)
        return Evidence(place.name, tuple(argv), text, ok)


def lab_of(recording: dict[str, Any]) -> Lab:
    """The Lab a recording was made in (its state as far as the trace reads it)."""
    options = LabOptions.from_json(recording["options"])
    topology = build_topology(options, recording["lab_id"])
    pods = {
        pod.name: PodRecord(
            name=pod.name,
            node=pod.node,
            netns=pod.netns,
            wiring="cni",
            ip=recording["pods"][pod.name]["ip"],
            host_ifname=recording["pods"][pod.name]["host_ifname"],
        )
        for pod in topology.pods
    }
    state = LabState(
        name=options.name,
        lab_dir="/nonexistent",
        token="replay",
        options=recording["options"],
        phase="up",
        lab_id=recording["lab_id"],
        pods=pods,
    )
    return Lab(state, topology)


def replay(recording: dict[str, Any]) -> Replay:
    return Replay(dict(recording["commands"]))


def with_answers(recording: dict[str, Any], answers: dict[str, tuple[bool, Any]]) -> dict[str, Any]:
    """A copy of ``recording`` with some answers replaced (each key must be recorded)."""
    out = copy.deepcopy(recording)
    for key, value in answers.items():
        assert key in out["commands"], f"not a recorded command: {key}"
        out["commands"][key] = value
    return out


def answer(recording: dict[str, Any], key: str) -> Any:
    """A recorded output (parsed JSON or text), to edit."""
    return copy.deepcopy(recording["commands"][key][1])
