"""Which BPF programs run on a network namespace's tc hooks: tcx links and tc filters alike.

Problem: tortie attaches its IPIP programs as tcx links where the kernel has tcx (6.6+) and as
tc filters elsewhere, but Debian 12's tools each see only one kind: ``tc filter show``
(iproute2 6.1) lists filters only, and bpftool 7.1's ``net show`` predates tcx. Operators
(``tortie node bpf``) and the lab's trace need one answer to "what runs on tunl0's egress?".

How: tcx hooks are asked with ``BPF_PROG_QUERY`` per device (a syscall, microseconds); tc
filters with ``tc -j filter show``, only on devices that have a clsact qdisc (one ``tc -j qdisc
show`` first), so a node with a thousand pod interfaces costs two processes, not two thousand.

Invariants: read-only; every program is listed in run order per hook, tcx before tc (the
kernel runs a hook's tcx programs first, and its tc filters only if they all pass it on).

Hazards: interface names come from ``socket.if_nameindex()`` in the namespace the listing runs
in (:func:`~tortie.dataplane.netns.run_in_netns`); a device that goes away between the
listing and a query is skipped, not an error.
"""

from __future__ import annotations

import json
import socket
from dataclasses import asdict, dataclass

from tortie.dataplane import bpfsys, tc, tcx
from tortie.dataplane.netns import NetnsRef, run_in_netns

HOOKS: tuple[tc.Direction, ...] = ("ingress", "egress")


@dataclass(frozen=True, slots=True)
class HookProgram:
    """One BPF program on one tc hook of one device."""

    dev: str
    hook: str  # ingress | egress
    attach: str  # tcx | tc
    prog_id: int
    name: str
    link_id: int = 0  # tcx: the bpf_link's id (0: attached without a link)
    pref: int = 0  # tc: the filter's preference

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _interfaces(netns: NetnsRef) -> list[tuple[int, str]]:
    return run_in_netns(netns, socket.if_nameindex)


def _clsact_devices(netns: NetnsRef) -> set[str]:
    qdiscs = json.loads(tc.tc(["-j", "qdisc", "show"], netns) or "[]")
    return {str(q.get("dev")) for q in qdiscs if q.get("kind") == "clsact"}


def _name(prog_id: int) -> str:
    try:
        return bpfsys.prog_name(prog_id)
    except OSError:  # unloaded since the query
        return ""


def hook_programs(
    netns: NetnsRef = None, dev: str | None = None, hook: str | None = None
) -> list[HookProgram]:
    """The BPF programs on the tc hooks of ``netns``'s devices (or just ``dev``/``hook``)."""
    hooks = [h for h in HOOKS if hook in (None, h)]
    interfaces = [(i, n) for i, n in _interfaces(netns) if dev in (None, n)]
    has_tcx = tcx.supported(netns)
    clsact = _clsact_devices(netns) if interfaces else set()
    found: list[HookProgram] = []
    for index, name in interfaces:
        for direction in hooks:
            if has_tcx:
                try:
                    attached = tcx.query(index, direction, netns)
                except tcx.TcxError:
                    attached = []  # gone meanwhile
                found += [
                    HookProgram(name, direction, "tcx", a.prog_id, _name(a.prog_id), a.link_id)
                    for a in attached
                ]
            if name in clsact:
                try:
                    filters = tc.bpf_filters(name, direction, netns)
                except tc.TcError:
                    filters = []
                found += [
                    HookProgram(name, direction, "tc", f.prog_id, f.name, pref=f.pref)
                    for f in filters
                ]
    return found
