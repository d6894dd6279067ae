"""Asking one lab namespace's kernel, through the tools a user would run there.

Problem: the trace's claims must come from the live state of each namespace (the kernel's own
route lookup, the neighbour and FDB tables, the nftables sets, the BPF programs and maps that
are attached), and each claim must come with the command that shows it, so a reader can type
it. :class:`KernelView` is that question-and-answer layer: high-level questions ("route this
from there, arriving on that device") asked as ``ip``/``nft``/``tc``/``bpftool``/``sysctl``
commands through a :class:`Runner`, answers parsed by :mod:`.parse`.

Invariants:
- the only I/O is :meth:`Runner.run`; :class:`LabRunner` runs each command with ``nsenter
  --net`` in the place's namespace (never the mount namespace) and the lab's token in the
  environment; tests pass a runner that replays recorded outputs;
- answers are cached per (place, command) for the life of one view: one trace sees one
  consistent snapshot per question and does not ask twice; distinct questions may be asked
  from several threads at once (a second asker of the same question may run it again);
- read-only: every command only lists or looks up.

Hazards: BPF objects are host-wide, so ``bpftool`` finds maps by the program the namespace's
tc filter names (prog id -> map ids -> the map called ``ipip_allow``), never by name alone
(another lab or another engineer's test has maps of the same name).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from tortie.model.naming import NFT_TABLE
from tortie.trace.model import Evidence, Place
from tortie.trace.parse import (
    LinkInfo,
    Neighbour,
    NftTable,
    Route,
    parse_addresses,
    parse_fdb,
    parse_ipv4_keys,
    parse_links,
    parse_map_name,
    parse_neighbours,
    parse_nft_table,
    parse_node_bpf,
    parse_prog_map_ids,
    parse_route_get,
    parse_sysctl,
    parse_tc_bpf,
)

NFT_FAMILY = "inet"
ALLOWLIST_MAP = "ipip_allow"
DECAP_PROGRAM = "ipip_decap"
ENCAP_PROGRAM = "ipip_encap"
COMMAND_TIMEOUT = 10.0


class Runner(Protocol):
    def run(self, place: Place, argv: Sequence[str]) -> Evidence:
        """Run ``argv`` in ``place``'s namespace; Evidence.ok is the exit status."""
        ...


@dataclass(frozen=True)
class LabRunner:
    """Runs commands in a lab's namespaces (``nsenter --net``) with the lab's token."""

    env: dict[str, str]

    def run(self, place: Place, argv: Sequence[str]) -> Evidence:
        # `tortie ...` is this tortie, whether or not its console script is on PATH.
        program = [sys.executable, "-m", "tortie.ctl.main"] if argv[0] == "tortie" else [argv[0]]
        cmd = ["nsenter", f"--net=/run/netns/{place.netns}", "--", *program, *argv[1:]]
        try:
            proc = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                env={**os.environ, **self.env},
                timeout=COMMAND_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            return Evidence(place.name, tuple(argv), f"{argv[0]}: {err}", ok=False)
        ok = proc.returncode == 0
        out = proc.stdout if ok else (proc.stderr or proc.stdout)
        return Evidence(place.name, tuple(argv), out.strip(), ok)


@dataclass(frozen=True)
class Lookup:
    """The kernel's answer to ``ip route get``, and the FIB entry that gave it (fibmatch)."""

    route: Route | None
    fib: Route | None
    answer: Evidence  # the text answer, verbatim
    fib_answer: Evidence | None

    @property
    def error(self) -> str | None:
        if self.route is not None:
            return None
        return self.answer.output or "no answer"

    def evidence(self) -> tuple[Evidence, ...]:
        return (self.answer,) if self.fib_answer is None else (self.answer, self.fib_answer)


def route_get_argv(
    dst: str, src: str | None = None, iif: str | None = None, fibmatch: bool = False
) -> list[str]:
    argv = ["ip", "route", "get"]
    if fibmatch:
        argv.append("fibmatch")
    argv.append(dst)
    if src is not None:
        argv += ["from", src]
    if iif is not None:
        argv += ["iif", iif]
    return argv


def _json(argv: list[str]) -> list[str]:
    # `ip -j ...`, `bridge -j ...`, `tc -j ...`, `nft -j ...`, `bpftool -j ...`
    return [argv[0], "-j", *argv[1:]]


class KernelView:
    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self._cache: dict[tuple[str, tuple[str, ...]], Evidence] = {}

    def ask(self, place: Place, argv: Sequence[str]) -> Evidence:
        key = (place.name, tuple(argv))
        if key not in self._cache:
            self._cache[key] = self.runner.run(place, argv)
        return self._cache[key]

    # -- routing ------------------------------------------------------------------------------

    def route_get(
        self, place: Place, dst: str, src: str | None = None, iif: str | None = None
    ) -> Lookup:
        """``ip route get DST [from SRC] [iif DEV]``: text for people, JSON for the logic,
        and the matching FIB entry (``fibmatch``) for the route as it is programmed."""
        argv = route_get_argv(dst, src, iif)
        answer = self.ask(place, argv)
        route = parse_route_get(self.ask(place, _json(argv)).output) if answer.ok else None
        if route is None:
            return Lookup(None, None, answer, None)
        fib_argv = route_get_argv(dst, src, iif, fibmatch=True)
        fib_answer = self.ask(place, fib_argv)
        fib = parse_route_get(self.ask(place, _json(fib_argv)).output) if fib_answer.ok else None
        return Lookup(route, fib, answer, fib_answer)

    # -- links, addresses, neighbours -----------------------------------------------------------

    def links(self, place: Place) -> dict[str, LinkInfo]:
        return parse_links(self.ask(place, ["ip", "-j", "-d", "link", "show"]).output)

    def addresses(self, place: Place) -> tuple[Evidence, list[tuple[str, str]]]:
        ev = self.ask(place, ["ip", "-j", "-4", "addr", "show"])
        return ev, parse_addresses(ev.output)

    def neighbour(self, place: Place, dev: str, addr: str) -> tuple[Evidence, Neighbour | None]:
        ev = self.ask(place, ["ip", "-j", "neigh", "show", "to", addr, "dev", dev])
        found = [n for n in parse_neighbours(ev.output) if n.dst == addr]
        return ev, (found[0] if found else None)

    def fdb(self, place: Place, dev: str) -> tuple[Evidence, list[tuple[str, str]]]:
        ev = self.ask(place, ["bridge", "-j", "fdb", "show", "dev", dev])
        return ev, parse_fdb(ev.output)

    def sysctl(self, place: Place, key: str) -> tuple[Evidence, int | None]:
        ev = self.ask(place, ["sysctl", "-n", key])
        return ev, parse_sysctl(ev.output) if ev.ok else None

    # -- firewall and BPF -----------------------------------------------------------------------

    def nft_table(self, place: Place) -> tuple[Evidence, NftTable | None]:
        ev = self.ask(place, ["nft", "-j", "list", "table", NFT_FAMILY, NFT_TABLE])
        return ev, parse_nft_table(ev.output) if ev.ok else None

    def hook_programs(
        self, place: Place, dev: str, hook: str, want: str
    ) -> tuple[tuple[Evidence, ...], list[tuple[str, int]]]:
        """The BPF programs (name, id) on ``dev``'s tc ``hook`` (ingress/egress).

        ``tc filter show`` first: it is what an operator would type, and it is all there is
        on kernels before 6.6. When it does not show ``want``, ``tortie node bpf`` is asked
        too: tcx links (6.6+, tortie's default there) are invisible to tc and to Debian 12's
        bpftool."""
        tc_ev = self.ask(place, ["tc", "-j", "filter", "show", "dev", dev, hook])
        found = parse_tc_bpf(tc_ev.output)
        if any(name == want for name, _ in found):
            return (tc_ev,), found
        node_ev = self.ask(
            place, ["tortie", "node", "bpf", "--dev", dev, "--hook", hook, "-o", "json"]
        )
        return (tc_ev, node_ev), found + parse_node_bpf(node_ev.output)

    def tc_programs(
        self, place: Place, dev: str, hook: str, want: str
    ) -> tuple[tuple[Evidence, ...], list[str]]:
        """Names of the BPF programs attached to ``dev``'s tc ``hook`` (ingress/egress)."""
        evidence, found = self.hook_programs(place, dev, hook, want)
        return evidence, [name for name, _ in found]

    def bpf_allowlist(
        self, place: Place, dev: str
    ) -> tuple[tuple[Evidence, ...], list[str] | None]:
        """The IPIP decap allowlist of the program on ``dev``'s tc ingress (None: no such
        program or map): program on the hook -> its maps -> ``ipip_allow`` -> keys."""
        hook_ev, found = self.hook_programs(place, dev, "ingress", DECAP_PROGRAM)
        evidence = list(hook_ev)
        for name, prog_id in found:
            if name != DECAP_PROGRAM:
                continue
            prog_ev = self.ask(place, ["bpftool", "-j", "prog", "show", "id", str(prog_id)])
            evidence.append(prog_ev)
            for map_id in parse_prog_map_ids(prog_ev.output):
                show = self.ask(place, ["bpftool", "-j", "map", "show", "id", str(map_id)])
                if parse_map_name(show.output) != ALLOWLIST_MAP:
                    continue
                dump = self.ask(place, ["bpftool", "-j", "map", "dump", "id", str(map_id)])
                evidence += [show, dump]
                return tuple(evidence), parse_ipv4_keys(dump.output) if dump.ok else None
        return tuple(evidence), None
