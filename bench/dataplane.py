"""Pod-to-pod dataplane against the physical limit: throughput and latency per mode, in labs.

Run as root:  .venv/bin/python bench/dataplane.py [--rounds 9] [--seconds 2]
              [--round-trips 1000] [--modes bgp,ipip,crosssubnet,vxlan] [--json FILE]

What is built (``tortie lab up``, all at once, under a private lab root, torn down at the end):
- ``ref``: 3 nodes on 2 subnets, ``--wire-pods manual``: Calico's veth/proxy-ARP/route wiring
  done by hand with ``ip`` (:mod:`tortie.lab.reference`), static native routes, no tortie
  process anywhere. It gives both references: the *underlay* (node1 -> node2 over the bridge;
  node1 -> node3 through the router) and the *ideal pod path* (pod1 -> pod2; pod1 -> pod3);
- one lab per mode with real agents and CNI-wired pods: ``bgp``, ``ipip`` (tc-BPF IPIP on
  this kernel), ``vxlan`` (2 nodes each) and ``crosssubnet`` (3 nodes, 2 subnets: pod1 -> pod2
  is the same-subnet pair, routed natively; pod1 -> pod3 the cross-subnet pair, IPIP). Their
  pool has no natOutgoing (pod to pod is never NATed, and without it tortie switches no
  connection tracking on); ``nat`` is the IPIP lab with natOutgoing, to show what
  conntrack costs.

What is measured on every path, ``--rounds`` times, interleaved (round r runs every path once
per test before round r+1 starts, in an order rotated by r, so load drift from other jobs
hits all paths alike): iperf3 TCP throughput with 1 and 4 streams (server in the destination
namespace, client in the source namespace, ``nsenter --net``, at ``nice -10`` so that other
people's jobs on this shared host disturb the measurement less), and the round-trip time of a
1-byte TCP request/response (netperf TCP_RR's test, here a Python client and echo server:
``rr-server``/``rr-client`` below) as p50/p99 over ``--round-trips``. Around each iperf3
client the machine's busy CPU time is read from /proc/stat, giving CPU seconds per GB moved
(the whole machine's: both nodes, the client and server, and whatever else runs here): it says
whether a path's throughput gap is CPU work. Ratios to the references are taken per round
(paired, a few seconds apart) and summarised as median/min/max by ``bench/report.py``.
Finally the RSS of every agent and of its BGP speaker (ExaBGP and its helper) is read from
/proc in each mode lab.

Invariants: traffic flows only between addresses inside the labs' namespaces; every process
started here (iperf3, echo servers, clients) is stopped by its PID; every lab is brought down
in ``finally``, also on SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

IPERF_PORT = 5201
RR_PORT = 5202
CONVERGE_TIMEOUT = 90.0
LAB_UP_TIMEOUT = 240.0
MODES = ("bgp", "ipip", "crosssubnet", "vxlan")
BENCH_DIR = Path(__file__).resolve().parent

Log = Callable[[str], None]


@dataclass(frozen=True)
class LabPlan:
    """One lab the bench builds: its key and the ``tortie lab up`` options."""

    key: str
    up_args: tuple[str, ...]


@dataclass(frozen=True)
class PathSpec:
    """A measured path: ``src`` -> ``dst`` (nodes or pods) in lab ``lab``.

    ``ideal``/``underlay`` name the reference paths this one is compared with (None for a
    reference itself); ``mode`` is the lab mode (``ref`` for the references).
    """

    key: str
    label: str
    lab: str
    src: str
    dst: str
    mode: str
    ideal: str | None = None
    underlay: str | None = None


# The mode labs' pools have no natOutgoing: pod-to-pod traffic is never NATed, but a nat
# chain would switch connection tracking on for every packet (tortie.dataplane.nftables), a
# cost the hand-wired reference does not pay. "ipip-nat" measures that cost on its own.
NO_NAT = "--no-nat-outgoing"
LABS: dict[str, LabPlan] = {
    "ref": LabPlan("ref", ("--nodes", "3", "--subnets", "2", "--wire-pods", "manual")),
    "bgp": LabPlan("bgp", ("--nodes", "2", "--mode", "bgp", NO_NAT)),
    "ipip": LabPlan("ipip", ("--nodes", "2", "--mode", "ipip", NO_NAT)),
    "nat": LabPlan("nat", ("--nodes", "2", "--mode", "ipip")),  # lab names keep 5 characters
    "crosssubnet": LabPlan(
        "crosssubnet", ("--nodes", "3", "--subnets", "2", "--mode", "crosssubnet", NO_NAT)
    ),
    "vxlan": LabPlan("vxlan", ("--nodes", "2", "--mode", "vxlan", NO_NAT)),
}

REFERENCE_PATHS = (
    PathSpec("underlay", "underlay: node to node, same subnet", "ref", "node1", "node2", "ref"),
    PathSpec(
        "ideal",
        "ideal pod path (hand-wired), same subnet",
        "ref",
        "pod1",
        "pod2",
        "ref",
        underlay="underlay",
    ),
)
CROSS_REFERENCE_PATHS = (
    PathSpec(
        "underlay-x", "underlay: node to node, via the router", "ref", "node1", "node3", "ref"
    ),
    PathSpec(
        "ideal-x",
        "ideal pod path (hand-wired), via the router",
        "ref",
        "pod1",
        "pod3",
        "ref",
        underlay="underlay-x",
    ),
)
MODE_PATHS: dict[str, tuple[PathSpec, ...]] = {
    "bgp": (
        PathSpec("bgp", "BGP mode (native)", "bgp", "pod1", "pod2", "bgp", "ideal", "underlay"),
    ),
    "ipip": (
        PathSpec("ipip", "IPIP (tc-BPF)", "ipip", "pod1", "pod2", "ipip", "ideal", "underlay"),
        PathSpec(
            "ipip-nat",
            "IPIP, pool with natOutgoing (conntrack on)",
            "nat",
            "pod1",
            "pod2",
            "ipip",
            "ideal",
            "underlay",
        ),
    ),
    "crosssubnet": (
        PathSpec(
            "cs-same",
            "CrossSubnet, same subnet (native)",
            "crosssubnet",
            "pod1",
            "pod2",
            "crosssubnet",
            "ideal",
            "underlay",
        ),
        PathSpec(
            "cs-cross",
            "CrossSubnet, across subnets (IPIP)",
            "crosssubnet",
            "pod1",
            "pod3",
            "crosssubnet",
            "ideal-x",
            "underlay-x",
        ),
    ),
    "vxlan": (PathSpec("vxlan", "VXLAN", "vxlan", "pod1", "pod2", "vxlan", "ideal", "underlay"),),
}


def plan_paths(modes: Sequence[str]) -> list[PathSpec]:
    """The references and the paths of ``modes``, references first."""
    unknown = [m for m in modes if m not in MODE_PATHS]
    if unknown:
        raise SystemExit(f"unknown mode(s) {', '.join(unknown)}; known: {', '.join(MODES)}")
    paths = list(REFERENCE_PATHS)
    if "crosssubnet" in modes:
        paths += CROSS_REFERENCE_PATHS
    for mode in modes:
        paths += MODE_PATHS[mode]
    return paths


def rotated(items: Sequence[Any], by: int) -> list[Any]:
    """``items`` rotated left by ``by`` (round r measures the paths in this order)."""
    if not items:
        return []
    k = by % len(items)
    return [*items[k:], *items[:k]]


# -- statistics of one round-trip run (pure) ----------------------------------------------------
def nearest_rank(ordered: Sequence[float], q: float) -> float:
    """The ``q`` quantile of sorted ``ordered`` by the nearest-rank method."""
    if not ordered:
        raise ValueError("no samples")
    rank = max(1, min(len(ordered), math.ceil(q * len(ordered))))
    return float(ordered[rank - 1])


def rtt_summary(samples_ns: Sequence[int]) -> dict[str, float]:
    ordered = sorted(s / 1000 for s in samples_ns)
    return {
        "n": len(ordered),
        "p50_us": round(nearest_rank(ordered, 0.50), 2),
        "p99_us": round(nearest_rank(ordered, 0.99), 2),
        "min_us": round(ordered[0], 2),
        "max_us": round(ordered[-1], 2),
        "mean_us": round(sum(ordered) / len(ordered), 2),
    }


def parse_iperf(report: dict[str, Any]) -> dict[str, float]:
    """Receiver throughput (Gbit/s), retransmits and CPU use from ``iperf3 -J`` output."""
    if "error" in report:
        raise RuntimeError(f"iperf3: {report['error']}")
    end = report["end"]
    cpu = end.get("cpu_utilization_percent", {})
    return {
        "gbits": round(end["sum_received"]["bits_per_second"] / 1e9, 3),
        "bytes": int(end["sum_received"].get("bytes", 0)),
        "retransmits": int(end.get("sum_sent", {}).get("retransmits", 0)),
        "cpu_sender": round(float(cpu.get("host_total", 0.0)), 1),
        "cpu_receiver": round(float(cpu.get("remote_total", 0.0)), 1),
    }


# -- the request/response test (runs inside the namespaces) -------------------------------------
def rr_server(bind: str, port: int) -> int:
    """Echo every byte back on one connection, then exit (the RR test's server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((bind, port))
        srv.listen(1)
        srv.settimeout(60)
        conn, _ = srv.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            recv, send = conn.recv, conn.sendall
            while True:
                data = recv(64)
                if not data:
                    return 0
                send(data)


def rr_client(dest: str, port: int, count: int, warmup: int, timeout: float = 10.0) -> int:
    """``count`` timed 1-byte round trips after ``warmup`` untimed ones; print a JSON summary."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock = socket.create_connection((dest, port), timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    with sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        send, recv, clock = sock.sendall, sock.recv, time.perf_counter_ns
        for _ in range(warmup):
            send(b"x")
            recv(1)
        samples = [0] * count
        for i in range(count):
            t0 = clock()
            send(b"x")
            if not recv(1):
                raise SystemExit("rr-client: the server closed the connection")
            samples[i] = clock() - t0
    print(json.dumps(rtt_summary(samples)))
    return 0


# -- processes ------------------------------------------------------------------------------------
def listening(pid: int, port: int) -> bool:
    """Whether a TCP socket listens on ``port`` in the network namespace of ``pid``.

    /proc/PID/net/tcp is the table of *that process's* namespace: no extra process needed.
    """
    try:
        with open(f"/proc/{pid}/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    return True
    except (OSError, StopIteration, IndexError, ValueError):
        return False
    return False


@contextlib.contextmanager
def server(argv: list[str], port: int, what: str) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server (``nsenter`` execs it, so the PID is the server's); wait until it
    listens; stop it by its PID at the end, whatever happened."""
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 10
        while not listening(proc.pid, port):
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"{what} exited at once ({proc.returncode}): {err.strip()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} was not listening after 10 s")
            time.sleep(0.01)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(3)
        if proc.stderr:
            proc.stderr.close()


def run_client(argv: list[str], timeout: float, what: str) -> str:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError(f"{what} did not finish in {timeout:.0f} s") from None
    if proc.returncode != 0:
        detail = (err or out).decode(errors="replace").strip()[-400:]
        raise RuntimeError(f"{what} exited {proc.returncode}: {detail}")
    return out.decode()


# -- the labs -------------------------------------------------------------------------------------
def tortie_lab(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "tortie.ctl.main", "lab", *args, "--root", str(root)]


@dataclass
class Endpoint:
    """Where one end of a path lives: its namespace file and address."""

    netns_path: str
    address: str


@dataclass
class LabRun:
    """The labs of one bench run, under a private root; :meth:`close` brings them all down."""

    root: Path
    log: Log
    run_id: str = field(default_factory=lambda: secrets.token_hex(2))
    names: dict[str, str] = field(default_factory=dict)  # key -> lab name
    up_seconds: dict[str, float] = field(default_factory=dict)
    commands: dict[str, str] = field(default_factory=dict)

    def name(self, key: str) -> str:
        return f"b{self.run_id}-{key[:5]}"

    def up(self, plans: Sequence[LabPlan]) -> None:
        """Every lab at once (lab ids are claimed atomically; the agents start in parallel)."""
        for plan in plans:
            self.names[plan.key] = self.name(plan.key)
            self.commands[plan.key] = " ".join(
                ["tortie lab up", "--name", self.names[plan.key], *plan.up_args]
            )

        def one(plan: LabPlan) -> str | None:
            start = time.monotonic()
            argv = tortie_lab(self.root, "up", "--name", self.names[plan.key], "-q", *plan.up_args)
            try:
                proc = subprocess.run(
                    argv, capture_output=True, text=True, timeout=LAB_UP_TIMEOUT, check=False
                )
            except subprocess.TimeoutExpired:
                return f"lab {plan.key}: 'lab up' did not finish in {LAB_UP_TIMEOUT:.0f} s"
            self.up_seconds[plan.key] = round(time.monotonic() - start, 2)
            if proc.returncode != 0:
                return f"lab {plan.key}: {(proc.stderr or proc.stdout).strip()[-800:]}"
            self.log(f"  lab {plan.key} up in {self.up_seconds[plan.key]:.1f} s")
            return None

        with ThreadPoolExecutor(max_workers=len(plans)) as pool:
            errors = [e for e in pool.map(one, plans) if e]
        if errors:
            raise RuntimeError("lab up failed:\n" + "\n".join(errors))

    def lab(self, key: str) -> Any:
        from tortie.lab.ops import open_lab
        from tortie.lab.registry import LabPaths

        return open_lab(LabPaths(root=self.root), self.names[key])

    def endpoint(self, key: str, name: str) -> Endpoint:
        lab = self.lab(key)
        return Endpoint(lab.netns_path(name), lab.address(name))

    def close(self) -> list[str]:
        """``lab down`` every lab this run may have started; returns the failures."""
        failures = []
        for key, name in self.names.items():
            proc = subprocess.run(
                tortie_lab(self.root, "down", "--name", name, "-q"),
                capture_output=True,
                text=True,
                check=False,
                timeout=120,
            )
            if proc.returncode != 0 and "no lab" not in (proc.stderr + proc.stdout):
                failures.append(f"lab down {key}: {(proc.stderr or proc.stdout).strip()}")
        return failures


def ping_ok(src: Endpoint, dst: Endpoint) -> bool:
    argv = [
        "nsenter",
        f"--net={src.netns_path}",
        "--",
        "ping",
        "-n",
        "-q",
        "-c",
        "1",
        "-W",
        "1",
        dst.address,
    ]
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0


def wait_connected(pairs: Sequence[tuple[str, Endpoint, Endpoint]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    waiting = list(pairs)
    while waiting:
        waiting = [p for p in waiting if not ping_ok(p[1], p[2])]
        if waiting and time.monotonic() > deadline:
            names = ", ".join(p[0] for p in waiting)
            raise RuntimeError(f"no connectivity after {timeout:.0f} s on: {names}")
        if waiting:
            time.sleep(0.2)


def pod_mtu(ep: Endpoint, dev: str) -> int | None:
    argv = ["nsenter", f"--net={ep.netns_path}", "--", "ip", "-o", "link", "show", "dev", dev]
    out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout.split()
    return int(out[out.index("mtu") + 1]) if "mtu" in out else None


# -- measuring ------------------------------------------------------------------------------------
NICE = ("nice", "-n", "-10")  # measured processes win over other people's jobs on the host


def nsenter(ep: Endpoint, argv: Sequence[str]) -> list[str]:
    """``argv`` in ``ep``'s network namespace at raised priority (``nsenter`` and ``nice``
    exec, so the PID is the measured program's own)."""
    return ["nsenter", f"--net={ep.netns_path}", "--", *NICE, *argv]


def iperf(src: Endpoint, dst: Endpoint, seconds: float, streams: int) -> dict[str, float]:
    srv = nsenter(dst, ["iperf3", "-s", "-1", "-B", dst.address, "-p", str(IPERF_PORT)])
    cli = nsenter(
        src,
        [
            "iperf3",
            "-c",
            dst.address,
            "-p",
            str(IPERF_PORT),
            "-t",
            f"{seconds:g}",
            "-P",
            str(streams),
            "-J",
        ],
    )
    with server(srv, IPERF_PORT, "iperf3 server"):
        before = cpu_busy_seconds()
        out = run_client(cli, seconds + 20, f"iperf3 -P {streams}")
        busy = cpu_busy_seconds() - before
    result = parse_iperf(json.loads(out))
    return {**result, **cpu_per_gb(busy, result["bytes"])}


def cpu_busy_seconds(stat: str = "/proc/stat") -> float:
    """CPU time the whole machine has spent busy since boot: user, nice, system, irq and
    softirq of the first (all-CPU) line, in seconds (idle, iowait and steal are not work)."""
    with open(stat) as f:
        fields = f.readline().split()
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def cpu_per_gb(busy_seconds: float, nbytes: int) -> dict[str, float]:
    """CPU seconds per GB moved (none when nothing moved): what a path costs the machine per
    byte, pod to pod (both nodes share the CPUs)."""
    if nbytes <= 0:
        return {}
    return {"cpu_busy_s": round(busy_seconds, 3), "cpu_s_per_gb": busy_seconds / (nbytes / 1e9)}


def round_trips(src: Endpoint, dst: Endpoint, count: int) -> dict[str, float]:
    me = [sys.executable, str(Path(__file__).resolve())]
    srv = nsenter(dst, [*me, "rr-server", "--bind", dst.address, "--port", str(RR_PORT)])
    cli = nsenter(
        src,
        [
            *me,
            "rr-client",
            "--dest",
            dst.address,
            "--port",
            str(RR_PORT),
            "--count",
            str(count),
            "--warmup",
            str(min(200, count)),
        ],
    )
    with server(srv, RR_PORT, "echo server"):
        out = run_client(cli, 60, "round-trip client")
    return dict(json.loads(out))


TESTS: dict[str, Callable[[Endpoint, Endpoint, argparse.Namespace], dict[str, float]]] = {
    "tput1": lambda s, d, a: iperf(s, d, a.seconds, 1),
    "tput4": lambda s, d, a: iperf(s, d, a.seconds, 4),
    "rr": lambda s, d, a: round_trips(s, d, a.round_trips),
}


def loadavg() -> list[float]:
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def measure(
    paths: Sequence[PathSpec],
    ends: dict[str, tuple[Endpoint, Endpoint]],
    args: argparse.Namespace,
    log: Log,
) -> tuple[dict[str, dict[str, list[Any]]], list[dict[str, Any]]]:
    """Every test on every path, ``args.rounds`` times, interleaved; per path and test the
    list of per-round results (None where a run failed: the error is in the second value)."""
    samples: dict[str, dict[str, list[Any]]] = {p.key: {t: [] for t in TESTS} for p in paths}
    errors: list[dict[str, Any]] = []
    for r in range(args.rounds):
        log(f"  round {r + 1}/{args.rounds} (load {' '.join(map(str, loadavg()))})")
        for test, fn in TESTS.items():
            for path in rotated(paths, r):
                src, dst = ends[path.key]
                try:
                    result: Any = fn(src, dst, args)
                except (RuntimeError, ValueError, KeyError, OSError) as err:
                    result = None
                    errors.append({"round": r, "path": path.key, "test": test, "error": str(err)})
                    log(f"    {path.key} {test}: FAILED: {err}")
                samples[path.key][test].append(result)
            log(
                f"    {test}: "
                + ", ".join(_brief(test, samples[p.key][test][-1]) + f" {p.key}" for p in paths)
            )
    return samples, errors


def _brief(test: str, result: dict[str, float] | None) -> str:
    if result is None:
        return "FAIL"
    if test == "rr":
        return f"{result['p50_us']:.0f}us"
    return f"{result['gbits']:.2f}G"


# -- memory ---------------------------------------------------------------------------------------
def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """Every descendant of ``pid`` (children of all its threads, recursively)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/children") as f:
                    kids = [int(x) for x in f.read().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def cpu_ticks(pid: int) -> int:
    """User + system clock ticks ``pid`` has used (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)


def node_processes(run: LabRun, key: str) -> list[tuple[str, int, list[int]]]:
    """Per node of lab ``key``: (node, agent pid, its BGP speaker processes' pids)."""
    out = []
    for rec in run.lab(key).state.processes:
        if rec.role != "agent" or rec.node is None:
            continue
        speaker = [
            p for p in descendants(rec.pid) if "exabgp" in cmdline(p) or "bird" in cmdline(p)
        ]
        out.append((rec.node, rec.pid, speaker))
    return out


def node_cpu(run: LabRun, keys: Sequence[str]) -> dict[str, dict[str, tuple[int, int]]]:
    """Per lab and node: CPU ticks used so far by the agent and by its speaker processes."""
    return {
        key: {
            node: (cpu_ticks(agent), sum(cpu_ticks(p) for p in speaker))
            for node, agent, speaker in node_processes(run, key)
        }
        for key in keys
    }


def node_memory(
    run: LabRun,
    key: str,
    cpu_before: dict[str, tuple[int, int]] | None = None,
    seconds: float = 0.0,
) -> list[dict[str, Any]]:
    """Per node of lab ``key``: RSS of the agent and of its BGP speaker processes (MiB) and,
    given the CPU ticks at the start of ``seconds``, their CPU use since (% of one core)."""
    hz = os.sysconf("SC_CLK_TCK")
    out = []
    for node, agent, speaker in node_processes(run, key):
        row: dict[str, Any] = {
            "node": node,
            "agent_mib": round(rss_kib(agent) / 1024, 1),
            "speaker_mib": round(sum(rss_kib(p) for p in speaker) / 1024, 1),
            "speaker_processes": len(speaker),
        }
        if cpu_before and node in cpu_before and seconds > 0:
            agent0, speaker0 = cpu_before[node]
            used = (cpu_ticks(agent) - agent0, sum(cpu_ticks(p) for p in speaker) - speaker0)
            row["agent_cpu_pct"] = round(100 * used[0] / hz / seconds, 2)
            row["speaker_cpu_pct"] = round(100 * used[1] / hz / seconds, 2)
        out.append(row)
    return out


# -- the whole bench ------------------------------------------------------------------------------
def command_line(args: argparse.Namespace) -> str:
    parts = [
        ".venv/bin/python bench/dataplane.py",
        f"--rounds {args.rounds}",
        f"--seconds {args.seconds:g}",
        f"--round-trips {args.round_trips}",
    ]
    if tuple(args.modes) != MODES:
        parts.append(f"--modes {','.join(args.modes)}")
    return " ".join(parts)


def run(args: argparse.Namespace, log: Log = print) -> dict[str, Any]:
    """Build the labs, measure, read memory, tear down; the JSON-able result."""
    if os.geteuid() != 0:
        raise SystemExit("bench/dataplane.py needs root (labs are network namespaces)")
    paths = plan_paths(args.modes)
    lab_keys = list(dict.fromkeys(p.lab for p in paths))
    result: dict[str, Any] = {
        "command": command_line(args),
        "settings": {
            "rounds": args.rounds,
            "seconds": args.seconds,
            "round_trips": args.round_trips,
            "modes": list(args.modes),
        },
        "paths": [asdict(p) for p in paths],
        "labs": {},
        "samples": {},
        "errors": [],
        "memory": {},
        "load": [],
    }
    own_root = args.lab_root is None
    root = Path(args.lab_root or tempfile.mkdtemp(prefix="tortie-bench-labs-"))
    labs = LabRun(root, log)
    started = time.monotonic()
    try:
        log(f"dataplane: {len(lab_keys)} labs under {root}")
        try:
            labs.up([LABS[k] for k in lab_keys])
        finally:
            result["labs"] = {
                k: {"command": labs.commands.get(k, ""), "up_s": labs.up_seconds.get(k)}
                for k in lab_keys
            }
        ends = {p.key: (labs.endpoint(p.lab, p.src), labs.endpoint(p.lab, p.dst)) for p in paths}
        wait_connected([(p.key, *ends[p.key]) for p in paths], CONVERGE_TIMEOUT)
        for p in paths:
            result["labs"][p.lab].setdefault("mtu", {})[p.key] = pod_mtu(ends[p.key][0], "eth0")
        log(f"  all {len(paths)} paths connected; measuring")
        result["load"].append(loadavg())
        mode_labs = [k for k in lab_keys if k != "ref"]
        # The agents and speakers are idle while pods talk: their CPU over the measurement
        # is what a quiet node pays (and what they take from the measured paths).
        cpu_before, measure_start = node_cpu(labs, mode_labs), time.monotonic()
        samples, errors = measure(paths, ends, args, log)
        measured_s = time.monotonic() - measure_start
        result["load"].append(loadavg())
        result["samples"], result["errors"] = samples, errors
        for key in mode_labs:
            result["memory"][key] = node_memory(labs, key, cpu_before[key], measured_s)
    finally:
        failures = labs.close()
        result["errors"] += [{"error": f} for f in failures]
        result["labs_left"] = sorted(p.name for p in root.iterdir()) if root.exists() else []
        if result["labs_left"]:
            left = ", ".join(result["labs_left"])
            result["errors"].append({"error": f"left behind under {root}: {left}"})
        if own_root:
            with contextlib.suppress(OSError):
                root.rmdir()
        result["seconds"] = round(time.monotonic() - started, 1)
    return result


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9, help="repeats, interleaved (default 9)")
    parser.add_argument("--seconds", type=float, default=2.0, help="per iperf3 run (default 2)")
    parser.add_argument("--round-trips", type=int, default=1000, help="per RR run (default 1000)")
    parser.add_argument("--modes", type=lambda s: tuple(s.split(",")), default=MODES)
    parser.add_argument("--lab-root", help="where the labs live (default: a new temp dir)")
    parser.add_argument("--json", metavar="FILE", help="write the raw result here")
    return parser.parse_args(argv)


def on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through every finally: labs come down


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("rr-server", "rr-client"):
        sub = argparse.ArgumentParser(prog=f"dataplane.py {argv[0]}")
        if argv[0] == "rr-server":
            sub.add_argument("--bind", required=True)
            sub.add_argument("--port", type=int, default=RR_PORT)
            a = sub.parse_args(argv[1:])
            return rr_server(a.bind, a.port)
        sub.add_argument("--dest", required=True)
        sub.add_argument("--port", type=int, default=RR_PORT)
        sub.add_argument("--count", type=int, default=2000)
        sub.add_argument("--warmup", type=int, default=200)
        a = sub.parse_args(argv[1:])
        return rr_client(a.dest, a.port, a.count, a.warmup)
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, on_sigterm)
    result = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    sys.path.insert(0, str(BENCH_DIR))
    import report

    print(report.render_dataplane(result))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
