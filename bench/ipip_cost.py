"""IPIP's cost per byte, counted in instructions: tortie's tc-BPF against the kernel's ipip module.

Usage (root):  .venv/bin/python bench/ipip_cost.py [--rounds 5] [--bytes 100000000] [--json FILE]

Problem: the host kernel has no ipip module, so the dataplane bench can only compare tortie's
IPIP with the hand-wired native path, and its throughput figures move by 20 % from run to run
on this shared host. This bench boots a qemu guest with Debian's backports kernel (6.12: it
has the ipip module and the kfuncs ``bpf/build/ipip.o`` uses) and moves a fixed number of bytes
pod to pod over five node pairs in it (``bench/ipip_cost_guest.py``): the hand-wired native
path (``ideal``), the ipip module (Calico's IPIP, tortie's ``kernel`` backend), and tortie's
tc-BPF backend with ``ipip.o`` attached as tcx links (what 6.6+ gets) and as tc filters, and
with ``ipip-compat.o``. A TCG plugin
(``bench/qemu/insncount.c``) counts the instructions the guest executes between markers around
each transfer (``bench/qemu/xfer.c``): a cost per byte that does not depend on the host's load.

Two counts per transfer, per MB moved:
- ``insn/MB``: every instruction except the iterations of rep-prefixed string instructions;
- ``copy/MB``: those iterations. The guest CPU has ERMS, so the kernel copies to and from user
  memory with ``rep movsb``, which TCG runs (and the plugin counts) one byte at a time.
They are reported apart because neither is cycles: an instruction is not a cycle, and a real
CPU moves 16-64 bytes per cycle in ``rep movsb``. ``insn/MB`` is the protocol work (stack,
netfilter hooks, encapsulation, tc programs); ``copy/MB`` should be the same on every path.
Ratios are to ``ideal`` in the same round (rounds rotate the order of the paths), then the
median over rounds.

What it is not: a throughput figure. Wall-clock time under TCG (software emulation) says
little about a real CPU; it is shown, but for completeness only.

Build: gcc compiles the plugin and ``xfer`` into ``bench/qemu/build/`` when their sources are
newer. The guest comes from ``scripts/vm/vmguest.py`` (``build_guest(source="backports")``).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
QEMU_DIR = BENCH / "qemu"
GUEST_SCRIPT = BENCH / "ipip_cost_guest.py"
RESULT_MARK = "TORTIE-COST-RESULT "
INSN_LINE = re.compile(r"^TORTIE-INSN (\d+) (\d+)$", re.MULTILINE)
PATHS = ("ideal", "kernel", "bpf", "bpf-tc", "bpf-compat")
LABELS = {
    "ideal": "ideal pod path (hand-wired, native)",
    "kernel": "IPIP, ipip module (Calico's; tortie's kernel backend)",
    "bpf": "IPIP, tortie tc-BPF (ipip.o, tcx links: kernels 6.6+)",
    "bpf-tc": "IPIP, tortie tc-BPF (ipip.o, tc filters: kernels 6.2-6.5)",
    "bpf-compat": "IPIP, tortie tc-BPF (ipip-compat.o, tc filters: kernels < 6.2)",
}

Log = Callable[[str], None]


class CostBenchError(RuntimeError):
    """The bench could not produce figures (no guest, a failed build, a short marker log)."""


def build_tools(out: Path = QEMU_DIR / "build") -> tuple[Path, Path]:
    """Compile the plugin and ``xfer`` if missing or older than their sources."""
    out.mkdir(parents=True, exist_ok=True)
    targets = (
        (
            out / "insncount.so",
            QEMU_DIR / "insncount.c",
            ["-shared", "-fPIC", "-fvisibility=hidden"],
        ),
        (out / "xfer", QEMU_DIR / "xfer.c", []),
    )
    for target, source, flags in targets:
        if target.exists() and target.stat().st_mtime >= source.stat().st_mtime:
            continue
        argv = ["gcc", "-O2", "-Wall", "-Wextra", *flags, "-o", str(target), str(source)]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise CostBenchError(f"{' '.join(argv)} failed: {proc.stderr.strip()[-1500:]}")
    return out / "insncount.so", out / "xfer"


def parse_markers(qemu_log: str) -> list[tuple[int, int]]:
    """The plugin's counter snapshots, in the order the guest hit its markers."""
    return [(int(a), int(b)) for a, b in INSN_LINE.findall(qemu_log)]


def parse_report(output: str) -> dict[str, Any]:
    lines = [line for line in output.splitlines() if line.startswith(RESULT_MARK)]
    if not lines:
        raise CostBenchError(f"the guest printed no result; its output ended:\n{output[-3000:]}")
    report: dict[str, Any] = json.loads(lines[-1][len(RESULT_MARK) :])
    return report


def per_run_counts(
    runs: Sequence[dict[str, Any]], marks: Sequence[tuple[int, int]]
) -> list[dict[str, Any]]:
    """Each transfer with its counts per MB (10^6 bytes), from the markers around it.

    The guest hits two markers first (a check that the plugin is there), then two per
    transfer, in the order of ``runs``.
    """
    if len(marks) != 2 + 2 * len(runs):
        raise CostBenchError(
            f"{len(marks)} markers for {len(runs)} transfers (want {2 + 2 * len(runs)}): "
            "is qemu loading the plugin (-plugin ... -d plugin)?"
        )
    out = []
    for i, run in enumerate(runs):
        (insn_a, copy_a), (insn_b, copy_b) = marks[2 + 2 * i], marks[3 + 2 * i]
        mb = run["bytes"] / 1e6
        out.append(
            {
                **run,
                "insn_per_mb": (insn_b - insn_a) / mb,
                "copy_per_mb": (copy_b - copy_a) / mb,
                "mbit_s": run["bytes"] * 8 / run["seconds"] / 1e6 if run["seconds"] else None,
            }
        )
    return out


def _spread(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def summarize(counted: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per path: the spread of each count, and of its per-round ratios to ``ideal`` (and to
    ``kernel``, the ipip module, for the tc-BPF paths; ``bpf``'s tcx links to ``bpf-tc``'s tc
    filters)."""
    ideal = {r["round"]: r for r in counted if r["path"] == "ideal"}
    module = {r["round"]: r for r in counted if r["path"] == "kernel"}
    tc_filters = {r["round"]: r for r in counted if r["path"] == "bpf-tc"}
    rows = []
    for path in [p for p in PATHS if any(r["path"] == p for r in counted)]:
        mine = [r for r in counted if r["path"] == path]
        paired = [(r, ideal[r["round"]]) for r in mine if r["round"] in ideal]
        rows.append(
            {
                "path": path,
                "label": LABELS[path],
                "insn_per_mb": _spread([r["insn_per_mb"] for r in mine]),
                "copy_per_mb": _spread([r["copy_per_mb"] for r in mine]),
                "mbit_s": _spread([r["mbit_s"] for r in mine if r["mbit_s"]]),
                "skb_bytes": _spread(
                    [r["bytes"] / r["uplink_packets"] for r in mine if r.get("uplink_packets")]
                ),
                "insn_ratio": _spread([r["insn_per_mb"] / i["insn_per_mb"] for r, i in paired]),
                "module_ratio": _spread(
                    [
                        r["insn_per_mb"] / module[r["round"]]["insn_per_mb"]
                        for r in mine
                        if path.startswith("bpf") and r["round"] in module
                    ]
                ),
                # tcx links against tc filters, the same object (the classifier layer's cost).
                "tc_ratio": _spread(
                    [
                        r["insn_per_mb"] / tc_filters[r["round"]]["insn_per_mb"]
                        for r in mine
                        if path == "bpf" and r["round"] in tc_filters
                    ]
                ),
                "all_ratio": _spread(
                    [
                        (r["insn_per_mb"] + r["copy_per_mb"])
                        / (i["insn_per_mb"] + i["copy_per_mb"])
                        for r, i in paired
                    ]
                ),
            }
        )
    return rows


def run_in_guest(
    rounds: int, nbytes: int, paths: Sequence[str], timeout: float, *, profile: bool = False
) -> tuple[dict[str, Any], Any]:
    """Run ``ipip_cost_guest.py`` in the backports guest with the plugin loaded: its report
    and the guest run (whose ``qemu_log`` holds the plugin's lines). ``profile``: per-block
    counters and the guest's kallsyms too (bench/ipip_profile.py)."""
    vm_dir = str(REPO / "scripts" / "vm")
    if vm_dir not in sys.path:
        sys.path.insert(0, vm_dir)
    import vmguest

    plugin, xfer = build_tools()
    try:
        guest = vmguest.build_guest(source="backports")
    except vmguest.VMError as exc:
        raise CostBenchError(f"no backports guest: {exc} (see docs/vm-tests.md)") from exc
    command = [
        str(REPO / ".venv" / "bin" / "python"),
        str(GUEST_SCRIPT),
        str(rounds),
        str(nbytes),
        ",".join(paths),
        str(xfer),
        *(["profile"] if profile else []),
    ]
    try:
        result = vmguest.run_guest(
            command,
            timeout,
            guest=guest,
            cwd=str(REPO),
            qemu_args=["-plugin", f"{plugin}{',profile=on' if profile else ''}", "-d", "plugin"],
        )
    except vmguest.VMError as exc:
        raise CostBenchError(f"the guest run failed: {exc}") from exc
    if result.exit_code != 0:
        raise CostBenchError(
            f"the guest script exited {result.exit_code}:\n{result.output[-3000:]}"
        )
    return parse_report(result.output), result


def run(args: argparse.Namespace, log: Log = print) -> dict[str, Any]:
    started = time.monotonic()
    log(f"ipip cost: backports guest, {args.rounds} rounds of {args.bytes} bytes")
    report, result = run_in_guest(args.rounds, args.bytes, args.paths, args.timeout)
    marks = parse_markers(result.qemu_log)
    counted = per_run_counts(report["runs"], marks)
    return {
        "command": command_line(args),
        "kernel": report["uname"],
        "bytes": args.bytes,
        "rounds": args.rounds,
        "marker_pair_insns": marks[1][0] - marks[0][0],
        "backends": {
            path: report["pairs"][path]["n1"].get("ensure", []) for path in report["pairs"]
        },
        "runs": counted,
        "rows": summarize(counted),
        "seconds": round(time.monotonic() - started, 1),
        "guest_seconds": round(result.seconds, 1),
    }


def command_line(args: argparse.Namespace) -> str:
    return f".venv/bin/python bench/ipip_cost.py --rounds {args.rounds} --bytes {args.bytes}" + (
        "" if tuple(args.paths) == PATHS else f" --paths {','.join(args.paths)}"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bytes", type=int, default=100_000_000, help="per transfer")
    parser.add_argument(
        "--paths", type=lambda s: tuple(s.split(",")), default=PATHS, help=",".join(PATHS)
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="for the guest run")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the raw result")
    args = parser.parse_args(argv)
    if "ideal" not in args.paths or any(p not in PATHS for p in args.paths):
        parser.error(f"--paths: some of {','.join(PATHS)}, with ideal (the reference)")
    if args.rounds < 1 or args.bytes < 1_000_000:
        parser.error("--rounds >= 1 and --bytes >= 1000000")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    import report

    args = parse_args(argv)
    try:
        result = run(args)
    except CostBenchError as exc:
        print(f"ipip_cost: {exc}", file=sys.stderr)
        return 1
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(report.render_ipip_cost(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
