"""The benchmark suite: dataplane, control plane and scale, written to results.md and .png.

Run as root:  .venv/bin/python bench/run.py            (``make bench``, about 10 minutes)
              .venv/bin/python bench/run.py --smoke    (``make bench-smoke``, under 2 minutes)

Parts, in this order (``--only`` picks some):
1. ``dataplane``: ``bench/dataplane.py`` in process: labs per mode against the underlay and
   the hand-wired ideal pod path, iperf3 1 and 4 streams, TCP request/response latency,
   agent and speaker memory.
2. ``control``: the other benches as their own processes, their output parsed:
   ``bench/cni.py`` (ADD/DEL latency, 10 concurrent ADDs), ``bench/ipam.py`` (assignments/s,
   run ``--ipam-repeats`` times for a spread), ``bench/routes.py`` (1k/10k routes, no-op
   resync), ``bench/bgp.py --json`` (convergence at 10 and 20 nodes), ``bench/repair.py
   --json`` (uplink flap and foreign route delete until repaired; idle CPU, monitor on/off),
   ``bench/apply.py --json`` (``tortie apply`` of 5,000 pools and of 100k labels),
   ``bench/cli.py --json`` (``tortie`` commands as whole processes on SQLite and etcd).
3. ``scale``: ``bench/scale.py`` in process: routes and sessions per node up to 5,000 nodes.
4. ``ipip-cost``: ``bench/ipip_cost.py`` in process: instructions per byte of the ipip module
   against tortie's tc-BPF IPIP and the native path, counted in a qemu guest (6.12 kernel).

Output: ``results.md`` and ``results.png`` in ``--out`` (default: ``bench/`` for the full
suite; a new temporary directory for ``--smoke``, so a smoke run never overwrites the
figures). ``--json FILE`` also keeps the raw result; ``--from-json FILE`` only re-renders.

Exit status: 1 if something is broken (a lab, a bench process, a measurement, a parse, the
scale formula disagreeing with the simulation, the guest of ``ipip-cost``), 0 otherwise,
whether or not targets are met.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

import report  # noqa: E402

PARTS = ("dataplane", "control", "scale", "ipip-cost")
Log = Callable[[str], None]


# -- settings: full and smoke ------------------------------------------------------------------
def dataplane_argv(smoke: bool) -> list[str]:
    if smoke:
        return ["--rounds", "1", "--seconds", "1", "--round-trips", "200"]
    return ["--rounds", "9", "--seconds", "2", "--round-trips", "1000"]


def ipip_cost_argv(smoke: bool) -> list[str]:
    if smoke:
        return ["--rounds", "1", "--bytes", "20000000"]
    return ["--rounds", "5", "--bytes", "100000000"]


def scale_argv(smoke: bool) -> list[str]:
    if smoke:
        return ["--sizes", "5,10", "--formula-sizes", "100,5000", "--scenario-nodes", "12"]
    return [
        "--sizes",
        "10,50,100,200",
        "--formula-sizes",
        "500,1000,2000,5000",
        "--scenario-nodes",
        "100",
    ]


def control_benches(smoke: bool, bgp_agent_level: bool = True) -> dict[str, list[str]]:
    """Each bench's arguments (the bench files are others'; these are their own options).

    ``bgp_agent_level``: whether ``bench/bgp.py`` has its agent level (``--agent-nodes``:
    convergence in a real lab with agents) besides the speaker level.
    """
    if smoke:
        bgp = ["bench/bgp.py", "--nodes", "3", "--topologies", "rr", "--samples", "2", "--json"]
        if bgp_agent_level:
            bgp += ["--agent-nodes", "3"]
        return {
            "cni": ["bench/cni.py", "--pods", "5", "--rounds", "1"],
            "ipam": [
                "bench/ipam.py",
                "--backends",
                "sqlite,etcd",
                "--processes",
                "1",
                "--count",
                "20",
            ],
            "routes": ["bench/routes.py", "--runs", "1"],
            "bgp": bgp,
            "repair": [
                "bench/repair.py",
                *("--rounds", "1", "--flap", "1", "--idle", "3", "--off-wait", "2", "--json"),
            ],
            "apply": ["bench/apply.py", "--runs", "1", "--json"],
            "cli": ["bench/cli.py", "--rounds", "2", "--json"],
        }
    bgp = [
        "bench/bgp.py",
        "--nodes",
        "10,20",
        "--topologies",
        "mesh,rr",
        "--samples",
        "20",
        "--json",
    ]
    if bgp_agent_level:
        bgp += ["--agent-nodes", "10"]
    return {
        "cni": ["bench/cni.py", "--pods", "100", "--rounds", "5"],
        "ipam": ["bench/ipam.py", "--count", "100"],
        "routes": ["bench/routes.py", "--runs", "5"],
        "bgp": bgp,
        "repair": ["bench/repair.py", "--rounds", "5", "--json"],
        "apply": ["bench/apply.py", "--runs", "5", "--json"],
        "cli": ["bench/cli.py", "--rounds", "15", "--json"],
    }


def bench_has_option(script: str, option: str) -> bool:
    """Whether ``bench/<script>`` accepts ``option`` (from its ``--help``)."""
    proc = subprocess.run(
        [sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True, check=False
    )
    return option in proc.stdout


# -- parsing the other benches' output (pure) ---------------------------------------------------
_ROUTES_ROW = re.compile(
    r"^(?P<scenario>\S.*?)\s+(?P<runs>\d+)\s+(?P<median>[\d.]+)\s+(?P<min>[\d.]+)\s+"
    r"(?P<max>[\d.]+)\s+(?P<writes>\d+)\s*(?P<target>.*)$"
)


def parse_routes(text: str) -> list[dict[str, Any]]:
    """``bench/routes.py``'s table: scenario, runs, median/min/max ms, writes, target."""
    rows = []
    for line in text.splitlines():
        m = _ROUTES_ROW.match(line.rstrip())
        if m and not line.startswith("scenario"):
            rows.append(
                {
                    "scenario": m["scenario"].strip(),
                    "runs": int(m["runs"]),
                    "median_ms": float(m["median"]),
                    "min_ms": float(m["min"]),
                    "max_ms": float(m["max"]),
                    "writes": int(m["writes"]),
                    "target": m["target"].strip(),
                }
            )
    if not rows:
        raise ValueError("no scenario rows in bench/routes.py's output")
    return rows


def parse_ipam(text: str) -> list[tuple[str, int, str, float]]:
    """``bench/ipam.py``'s markdown rows: (backend, processes, layout, assignments/s)."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[1].isdigit():
            rows.append((cells[0], int(cells[1]), cells[2], float(cells[3])))
    if not rows:
        raise ValueError("no result rows in bench/ipam.py's output")
    return rows


def merge_ipam(runs: Sequence[Sequence[tuple[str, int, str, float]]]) -> list[dict[str, Any]]:
    """The same configuration's rates from every repeat, in first-seen order."""
    merged: dict[tuple[str, int, str], list[float]] = {}
    for rows in runs:
        for backend, processes, layout, rate in rows:
            merged.setdefault((backend, processes, layout), []).append(rate)
    return [
        {"backend": b, "processes": p, "layout": lay, "rates": rates}
        for (b, p, lay), rates in merged.items()
    ]


_NUM = r"([\d.]+)"


def parse_cni(text: str) -> dict[str, Any]:
    """``bench/cni.py``'s summary lines."""
    patterns = {
        "header": r"CNI server, (\d+) pods sequential, (\d+) rounds",
        "version": rf"VERSION \(process floor\)\s+p50\s+{_NUM} ms",
        "add": rf"ADD\s+p50\s+{_NUM} ms\s+p99\s+{_NUM} ms\s+max\s+{_NUM} ms",
        "del": rf"DEL\s+p50\s+{_NUM} ms\s+p99\s+{_NUM} ms\s+max\s+{_NUM} ms",
        "concurrent": rf"10 concurrent ADDs: (\d+)/(\d+) succeeded, {_NUM} pods/s .*?min {_NUM}\)",
        "targets": r"^targets: (.*)$",
    }
    found = {k: re.search(p, text, re.MULTILINE) for k, p in patterns.items()}
    missing = [k for k, m in found.items() if m is None]
    if missing:
        raise ValueError(f"bench/cni.py's output lacks: {', '.join(missing)}")
    g = {k: m.groups() for k, m in found.items() if m is not None}
    return {
        "pods": int(g["header"][0]),
        "rounds": int(g["header"][1]),
        "version_p50_ms": float(g["version"][0]),
        "add_p50_ms": float(g["add"][0]),
        "add_p99_ms": float(g["add"][1]),
        "add_max_ms": float(g["add"][2]),
        "del_p50_ms": float(g["del"][0]),
        "del_p99_ms": float(g["del"][1]),
        "del_max_ms": float(g["del"][2]),
        "concurrent_ok": f"{g['concurrent'][0]}/{g['concurrent'][1]}",
        "concurrent_pods_s": float(g["concurrent"][2]),
        "concurrent_pods_s_min": float(g["concurrent"][3]),
        "targets": g["targets"][0].strip(),
    }


def parse_apply(text: str) -> list[dict[str, Any]]:
    """``bench/apply.py --json``: one JSON object per scenario."""
    rows = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    if not rows:
        raise ValueError("no JSON lines in bench/apply.py's output")
    return rows


def parse_bgp(text: str) -> list[dict[str, Any]]:
    """``bench/bgp.py --json``: one JSON object per configuration."""
    rows = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    if not rows:
        raise ValueError("no JSON lines in bench/bgp.py's output")
    return rows


def parse_repair(text: str) -> dict[str, Any]:
    """``bench/repair.py --json``: its last line is the result."""
    lines = [line for line in text.splitlines() if line.startswith("{")]
    if not lines:
        raise ValueError("no JSON line in bench/repair.py's output")
    result: dict[str, Any] = json.loads(lines[-1])
    if "flap_routes_ms" not in result:
        raise ValueError("bench/repair.py's JSON lacks flap_routes_ms")
    return result


def parse_cli(text: str) -> list[dict[str, Any]]:
    """``bench/cli.py --json``: one JSON object per command."""
    rows = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    if not rows:
        raise ValueError("no JSON lines in bench/cli.py's output")
    return rows


# -- running a bench process --------------------------------------------------------------------
def shown(argv: Sequence[str]) -> str:
    return " ".join([".venv/bin/python", *argv])


def stop(proc: subprocess.Popen[str]) -> None:
    """Stop a bench by its PID: SIGINT first (its ``finally`` blocks remove namespaces and
    daemons), SIGKILL to its process group if it does not go."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def run_bench(argv: Sequence[str], timeout: float) -> tuple[int, str, str, float]:
    """Run ``python argv`` from the repository root; (exit status, stdout, stderr, seconds)."""
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, *argv],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        out, err = proc.communicate()
        err += f"\n(stopped after {timeout:.0f} s)"
        return -1, out, err, time.monotonic() - start
    finally:
        stop(proc)
    return proc.returncode, out, err, time.monotonic() - start


def control(smoke: bool, ipam_repeats: int, log: Log, timeout: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    parsers: dict[str, Callable[[str], Any]] = {
        "cni": parse_cni,
        "routes": lambda t: {"rows": parse_routes(t)},
        "bgp": lambda t: {"rows": parse_bgp(t)},
        "repair": lambda t: {"result": parse_repair(t)},
        "apply": lambda t: {"rows": parse_apply(t)},
        "cli": lambda t: {"rows": parse_cli(t)},
    }
    benches = control_benches(smoke, bench_has_option("bench/bgp.py", "--agent-nodes"))
    for name, argv in benches.items():
        repeats = ipam_repeats if name == "ipam" else 1
        part: dict[str, Any] = {"command": shown(argv), "ok": True, "error": None}
        if repeats > 1:
            part["command"] += f"  (x{repeats})"
        log(f"control: {part['command']}")
        texts, seconds = [], 0.0
        for _ in range(repeats):
            code, text, err, took = run_bench(argv, timeout)
            seconds += took
            texts.append(text)
            if code != 0:
                part.update(ok=False, error=f"exit {code}: {(err or text).strip()[-600:]}")
                break
        part["seconds"] = round(seconds, 1)
        try:
            if name == "ipam":
                part["rows"] = merge_ipam([parse_ipam(t) for t in texts if t.strip()])
                part["repeats"] = len(texts)
            else:
                part.update(parsers[name](texts[-1]))
        except (ValueError, KeyError, IndexError) as exc:
            part.update(ok=False, error=part["error"] or f"cannot parse the output: {exc}")
        part["output"] = "\n".join(texts)
        log(
            f"  {name}: {'ok' if part['ok'] else 'FAILED: ' + str(part['error'])} "
            f"({part['seconds']:.0f} s)"
        )
        out[name] = part
    return out


# -- the machine --------------------------------------------------------------------------------
def _first(path: str, key: str) -> str | None:
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip() if ":" in line else line.split("=", 1)[1]
    return None


def other_python_processes() -> int:
    mine = {os.getpid(), os.getppid()}
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in mine:
            continue
        with contextlib.suppress(OSError):
            if b"python" in Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[0]:
                count += 1
    return count


def machine() -> dict[str, Any]:
    mem = _first("/proc/meminfo", "MemTotal")
    iperf = subprocess.run(["iperf3", "--version"], capture_output=True, text=True, check=False)
    os_name = (_first("/etc/os-release", "PRETTY_NAME=") or "?").strip('"')
    return {
        "cpu_model": _first("/proc/cpuinfo", "model name") or "?",
        "cpus": os.cpu_count(),
        "memory_gib": round(int(mem.split()[0]) / 2**20, 1) if mem else None,
        "os": os_name,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "iperf3": (iperf.stdout.splitlines() or ["iperf3 ?"])[0].split(" (")[0],
        "load_before": [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]],
        "other_processes": other_python_processes(),
    }


# -- the suite ------------------------------------------------------------------------------------
def problems_of(results: dict[str, Any]) -> list[str]:
    """What is broken in this run (never: a target missed)."""
    out = []
    dp = results.get("dataplane")
    if dp is not None:
        out += [
            f"dataplane: {e.get('path', '')} {e.get('test', '')} {e['error']}".replace("  ", " ")
            for e in dp.get("errors", [])
        ]
        if dp.get("failed"):
            out.append(f"dataplane: {dp['failed']}")
    for name, part in (results.get("control") or {}).items():
        if not part.get("ok"):
            out.append(f"control {name}: {part.get('error')}")
    sc = results.get("scale")
    if sc is not None:
        if sc.get("failed"):
            out.append(f"scale: {sc['failed']}")
        for r in sc.get("sizes", []):
            for k in ("routes_30", "routes_110"):
                if r[k].get("formula_agrees") is False:
                    out.append(f"scale: formula and simulation differ at {r['nodes']} nodes ({k})")
        out += [
            f"scale: formula and simulation differ in scenario {s['key']}"
            for s in sc.get("scenarios", [])
            if s.get("formula_agrees") is False
        ]
    ic = results.get("ipip_cost")
    if ic is not None and ic.get("failed"):
        out.append(f"ipip-cost: {ic['failed']}")
    return out


def run_suite(args: argparse.Namespace, log: Log = print) -> dict[str, Any]:
    started = time.monotonic()
    results: dict[str, Any] = {
        "command": ".venv/bin/python bench/run.py" + (" --smoke" if args.smoke else ""),
        "smoke": args.smoke,
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": machine(),
    }
    if "dataplane" in args.only:
        import dataplane

        dp_args = dataplane.parse_args(dataplane_argv(args.smoke))
        try:
            results["dataplane"] = dataplane.run(dp_args, log)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            results["dataplane"] = {"failed": str(exc), "paths": [], "samples": {}}
            log(f"dataplane FAILED: {exc}")
    if "control" in args.only:
        results["control"] = control(
            args.smoke,
            1 if args.smoke else args.ipam_repeats,
            log,
            timeout=240 if args.smoke else 600,
        )
    if "scale" in args.only:
        import scale

        try:
            results["scale"] = scale.run(scale.parse_args(scale_argv(args.smoke)), log)
        except Exception as exc:  # the model is code under test: report, don't crash
            results["scale"] = {"failed": f"{type(exc).__name__}: {exc}"}
            log(f"scale FAILED: {exc}")
    if "ipip-cost" in args.only:
        import ipip_cost

        try:
            results["ipip_cost"] = ipip_cost.run(
                ipip_cost.parse_args(ipip_cost_argv(args.smoke)), log
            )
        except ipip_cost.CostBenchError as exc:
            results["ipip_cost"] = {"failed": str(exc)}
            log(f"ipip-cost FAILED: {exc}")
    results["machine"]["load_after"] = [
        float(x) for x in Path("/proc/loadavg").read_text().split()[:3]
    ]
    results["seconds"] = round(time.monotonic() - started, 1)
    results["problems"] = problems_of(results)
    return results


def write(results: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    md, png = out / "results.md", out / "results.png"
    md.write_text(report.render(results) + "\n")
    report.plot(results, str(png))
    return md, png


def on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through every finally: labs come down


@contextlib.contextmanager
def signals() -> Iterator[None]:
    old = signal.signal(signal.SIGTERM, on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one short run of each part")
    parser.add_argument("--out", type=Path, help="where results.md/.png go (see above)")
    parser.add_argument(
        "--only",
        type=lambda s: tuple(s.split(",")),
        default=PARTS,
        help=f"some of {','.join(PARTS)}",
    )
    parser.add_argument("--ipam-repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the raw result")
    parser.add_argument("--from-json", type=Path, metavar="FILE", help="only re-render FILE")
    args = parser.parse_args(argv)
    bad = [p for p in args.only if p not in PARTS]
    if bad:
        parser.error(f"--only: unknown part(s) {', '.join(bad)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        results = json.loads(args.from_json.read_text())
    else:
        if os.geteuid() != 0:
            raise SystemExit("bench/run.py needs root (labs and namespaces); run it with sudo")
        with signals():
            results = run_suite(args)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1, default=str))
    out = args.out or (
        Path(tempfile.mkdtemp(prefix="tortie-bench-smoke-")) if args.smoke else BENCH_DIR
    )
    md, png = write(results, out)
    if results.get("dataplane", {}).get("paths"):
        print("\n" + report.headline(results))
    print(f"\nwrote {md} and {png} ({results.get('seconds', 0) / 60:.1f} min)")
    for p in results.get("problems", []):
        print(f"PROBLEM: {p}", file=sys.stderr)
    return 1 if results.get("problems") else 0


if __name__ == "__main__":
    sys.exit(main())
