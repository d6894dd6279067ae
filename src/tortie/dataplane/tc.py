"""Attaching pinned BPF programs to tc hooks (clsact ingress/egress), idempotently.

Problem: the IPIP programs must be attached to tunl0 (egress) and the uplink (ingress) of a
node that may be another network namespace, and re-running setup on a node that is already
set up (an agent restart) must not detach or re-attach anything: a re-attach is a window in
which packets miss the program.

How: iproute2's ``tc`` run inside the target network namespace (network namespace only, so the
bpffs pin paths stay visible, unlike ``tc -n`` / ``ip netns exec`` which remount /sys). We read
the attached filter's program id (``tc -j``) and only ``replace`` when it differs from the
pinned program's id; ``replace`` at a fixed preference/handle swaps programs atomically.

Invariants: tortie's filters live at preference :data:`TC_PREF`, handle 1; other filters on the
same hook are never touched. The clsact qdisc is added once, reported as a change of its own, and
never deleted (removing tortie's filter leaves it).

Hazards: adding (or deleting) a clsact qdisc on a device that is up costs packets, whatever
BPF runs: the kernel grafts it with the device's transmit queues deactivated (``qdisc_graft``
-> ``dev_deactivate``: the queues point at ``noop_qdisc`` across an RCU grace period), so what
the device sends in that moment is dropped (reason ``QDISC_DROP``, counted in the device's
``tx_dropped``). Adding, replacing or deleting a filter on an existing clsact drops nothing.
docs/bpf-attach.md has the measurements.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tortie.dataplane.errors import DataplaneError, kernel_call
from tortie.dataplane.netns import NetnsRef, run_in_netns

TC_PREF = 100
TC_HANDLE = 1
Direction = Literal["ingress", "egress"]


class TcError(DataplaneError):
    """``tc`` refused a command (its stderr is the message)."""


def tc(args: list[str], netns: NetnsRef = None) -> str:
    """Run ``tc ARGS`` in ``netns``; stdout, or TcError with tc's stderr."""

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["tc", *args], capture_output=True, text=True, check=False)

    with kernel_call(f"tc {' '.join(args)}", TcError):
        proc = run_in_netns(netns, run)
    if proc.returncode != 0:
        raise TcError(f"tc {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


@dataclass(frozen=True, slots=True)
class BpfFilter:
    pref: int
    handle: int
    prog_id: int
    name: str


def ensure_clsact(dev: str, netns: NetnsRef = None) -> bool:
    """Add the clsact qdisc to ``dev`` unless present; True if added."""
    qdiscs = json.loads(tc(["-j", "qdisc", "show", "dev", dev], netns) or "[]")
    if any(q.get("kind") == "clsact" for q in qdiscs):
        return False
    tc(["qdisc", "add", "dev", dev, "clsact"], netns)
    return True


def bpf_filters(dev: str, direction: Direction, netns: NetnsRef = None) -> list[BpfFilter]:
    out = tc(["-j", "filter", "show", "dev", dev, direction], netns)
    filters = []
    for item in json.loads(out or "[]"):
        options = item.get("options") or {}
        prog = options.get("prog") or {}
        if item.get("kind") != "bpf" or "id" not in prog:
            continue
        filters.append(
            BpfFilter(
                pref=int(item.get("pref", 0)),
                handle=int(str(options.get("handle", "0")), 0),
                prog_id=int(prog["id"]),
                name=str(prog.get("name", "")),
            )
        )
    return filters


def ensure_bpf_filter(
    dev: str, direction: Direction, pinned_prog: str, prog_id: int, netns: NetnsRef = None
) -> list[str]:
    """Make ``pinned_prog`` (kernel id ``prog_id``) tortie's filter on ``dev``; what changed.

    The device's first filter needs a clsact qdisc: its creation is reported on its own, since
    the device drops what it sends while the kernel grafts it (the hazard above)."""
    changes = []
    if ensure_clsact(dev, netns):
        changes.append(f"added the clsact qdisc to {dev}")
    for f in bpf_filters(dev, direction, netns):
        if (f.pref, f.handle) == (TC_PREF, TC_HANDLE) and f.prog_id == prog_id:
            return changes
    tc(
        [
            "filter", "replace", "dev", dev, direction,
            "pref", str(TC_PREF), "handle", str(TC_HANDLE),
            "bpf", "direct-action", "object-pinned", pinned_prog,
        ],
        netns,
    )  # fmt: skip
    changes.append(f"attached {Path(pinned_prog).name} to {dev} {direction}")
    return changes


def remove_bpf_filter(dev: str, direction: Direction, netns: NetnsRef = None) -> bool:
    """Remove tortie's filter from ``dev``; True if there was one."""
    present = any(
        (f.pref, f.handle) == (TC_PREF, TC_HANDLE) for f in bpf_filters(dev, direction, netns)
    )
    if present:
        tc(
            ["filter", "del", "dev", dev, direction, "pref", str(TC_PREF),
             "handle", str(TC_HANDLE), "bpf"],
            netns,
        )  # fmt: skip
    return present
