"""Where IPIP's instructions go, by kernel function: a deterministic profile in the qemu guest.

Usage (root):  .venv/bin/python bench/ipip_profile.py [--bytes 50000000] [--rounds 3] [--top 30]
                   [--paths ideal,kernel,bpf] [--json FILE]

Problem: ``bench/ipip_cost.py`` says how many instructions per byte each IPIP implementation
executes, not where. ``perf`` on the host attributes time, but the host's speed moves by 25 %
between runs, so differences of a few per cent drown. Here the same guest transfers run with
the ``insncount`` plugin's profile on: every translated block has its own counter, dumped at
each marker; the blocks' addresses are mapped to symbols by the guest's ``/proc/kallsyms`` of
the same boot (kernel, modules and BPF programs). ``--rounds`` transfers per path, and per
symbol the median over them: work that is not the transfer's (timer ticks, kworkers) lands in
some windows and moves a single transfer's total by up to 20 %.

Output: per symbol, instructions per byte moved (x1000, i.e. per KB) for each path, sorted by
how much more the IPIP paths spend there than the native path; rep-string iterations are not
in it (see ipip_cost.py). ``[user]`` is everything in user space (the transfer tool).
"""

from __future__ import annotations

import argparse
import base64
import bisect
import gzip
import json
import re
import statistics
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ipip_cost

SYMBOL_LINE = re.compile(r"^([0-9a-f]{16}) ([tTwW]) (\S+)(?:\s+\[(\S+)\])?$")
USER_TOP = 0x0000_8000_0000_0000


class Symbols:
    """Kernel text symbols, sorted by address, for address -> name."""

    def __init__(self, lines: Sequence[str]) -> None:
        pairs = []
        for line in lines:
            match = SYMBOL_LINE.match(line.strip())
            if match is None:
                continue
            address, _kind, name, module = match.groups()
            pairs.append((int(address, 16), f"{name} [{module}]" if module else name))
        pairs.sort()
        self.addresses = [a for a, _ in pairs]
        self.names = [n for _, n in pairs]

    def name(self, address: int) -> str:
        if address < USER_TOP:
            return "[user]"
        i = bisect.bisect_right(self.addresses, address) - 1
        return self.names[i] if i >= 0 else "[unknown]"


def parse_dumps(qemu_log: str) -> list[dict[int, int]]:
    """Per marker, the instructions per block address since the previous marker."""
    dumps: list[dict[int, int]] = []
    current: dict[int, int] | None = None
    for line in qemu_log.splitlines():
        if line.startswith("TORTIE-INSN "):
            current = defaultdict(int)
        elif line.startswith("TORTIE-TB ") and current is not None:
            _, address, count = line.split()
            current[int(address, 16)] += int(count)
        elif line == "TORTIE-TB-END" and current is not None:
            dumps.append(dict(current))
            current = None
    return dumps


def by_symbol(dump: dict[int, int], symbols: Symbols, nbytes: int) -> dict[str, float]:
    """Instructions per KB moved, per symbol."""
    out: dict[str, float] = defaultdict(float)
    for address, count in dump.items():
        out[symbols.name(address)] += count * 1000 / nbytes
    return dict(out)


def table(per_path: dict[str, dict[str, float]], top: int) -> str:
    paths = list(per_path)
    names = set().union(*per_path.values())
    ideal = per_path.get("ideal", {})
    others = [p for p in paths if p != "ideal"]

    def extra(name: str) -> float:
        return max((per_path[p].get(name, 0.0) - ideal.get(name, 0.0)) for p in others)

    rows = sorted(names, key=lambda n: -abs(extra(n)))[:top]
    head = (
        "| symbol | "
        + " | ".join(paths)
        + " | "
        + " | ".join(f"{p} - ideal" for p in others)
        + " |"
    )
    lines = [head, "|---" * (1 + len(paths) + len(others)) + "|"]
    totals = {p: sum(v.values()) for p, v in per_path.items()}
    lines.append(
        "| **all** | "
        + " | ".join(f"{totals[p]:.0f}" for p in paths)
        + " | "
        + " | ".join(f"{totals[p] - totals.get('ideal', 0):+.0f}" for p in others)
        + " |"
    )
    for name in rows:
        lines.append(
            f"| `{name}` | "
            + " | ".join(f"{per_path[p].get(name, 0.0):.1f}" for p in paths)
            + " | "
            + " | ".join(
                f"{per_path[p].get(name, 0.0) - ideal.get(name, 0.0):+.1f}" for p in others
            )
            + " |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    report, result = ipip_cost.run_in_guest(
        args.rounds, args.bytes, args.paths, args.timeout, profile=True
    )
    packed = next(
        (
            line.split(" ", 1)[1]
            for line in result.output.splitlines()
            if line.startswith("TORTIE-KALLSYMS ")
        ),
        None,
    )
    if packed is None:
        raise ipip_cost.CostBenchError("the guest printed no kallsyms")
    symbols = Symbols(gzip.decompress(base64.b64decode(packed)).decode().splitlines())
    dumps = parse_dumps(result.qemu_log)
    runs = report["runs"]
    if len(dumps) != 2 + 2 * len(runs):
        raise ipip_cost.CostBenchError(f"{len(dumps)} profile dumps for {len(runs)} transfers")
    rounds: dict[str, list[dict[str, float]]] = defaultdict(list)
    for i, run in enumerate(runs):
        rounds[run["path"]].append(by_symbol(dumps[3 + 2 * i], symbols, run["bytes"]))
    per_path = {path: median_by_symbol(each) for path, each in rounds.items()}
    return {"kernel": report["uname"], "bytes": args.bytes, "per_path": per_path}


def median_by_symbol(rounds: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per symbol, the median over rounds (a symbol a round did not run counts as 0 there).

    Work that is not the transfer's (timer ticks, kworkers, RCU) lands in some windows and
    not others; the median keeps it from any one round."""
    names = set().union(*rounds)
    return {n: statistics.median(r.get(n, 0.0) for r in rounds) for n in names}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bytes", type=int, default=50_000_000)
    parser.add_argument("--rounds", type=int, default=3, help="per path; medians per symbol")
    parser.add_argument(
        "--paths", type=lambda s: tuple(s.split(",")), default=("ideal", "kernel", "bpf")
    )
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--json", type=Path, metavar="FILE")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(
        f"instructions per KB moved, by symbol ({result['kernel']}, {args.bytes} bytes per path; "
        "rep-string iterations not counted)\n"
    )
    print(table(result["per_path"], args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
