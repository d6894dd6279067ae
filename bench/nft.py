"""nftables at scale: rule count and per-pod update latency, in a throwaway network namespace.

Run as root:  .venv/bin/python bench/nft.py [--nodes 500] [--pods 5000] [--samples 200]
              [--executors lib,cli] [--check]

For each executor (libnftables through ctypes, the nft CLI) in a fresh namespace:
- rule count of tortie's table with 2 nodes / 2 pods, then with --nodes / --pods in the sets;
- initial fill of --pods workload entries (one transaction);
- per-pod add: ``set_workloads(all endpoints + one new)`` -- the agent's real call, complete
  desired set in, element delta out -- repeated --samples times (median, p95, max);
- per-pod delete, the same way;
- the bare transaction (one ``add element`` script, no diffing) for comparison;
- restart convergence: a fresh manager reading every set back and finding nothing to do;
- one ``counters()`` read.

Target (issue 8): a new pod's entry is programmed in under 50 ms (p95 of per-pod add), and the
rule count is the same at both sizes. ``--check`` exits 1 if either is missed. Namespaces are
named tt<hex>nb<n> and always deleted.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tortie.dataplane.nft_exec import ExecutorKind, make_executor
from tortie.dataplane.nftables import NftablesManager

TARGET_MS = 50.0


@contextmanager
def namespace(name: str) -> Iterator[str]:
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def nodes(n: int) -> list[str]:
    return [f"192.168.{i // 250}.{i % 250 + 1}" for i in range(n)]


def pods(n: int, net: int = 65) -> list[tuple[str, str]]:
    return [(f"cali{net:02x}{i:09x}", f"10.{net}.{i // 250}.{i % 250 + 1}") for i in range(n)]


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return (
        f"median {statistics.median(ordered):7.2f} ms  p95 {p95:7.2f} ms  max {ordered[-1]:7.2f} ms"
    )


def run(kind: ExecutorKind, ns: str, args: argparse.Namespace) -> dict[str, float]:
    m = NftablesManager(ns, executor=make_executor(ns, kind))
    out: dict[str, float] = {}
    try:
        m.ensure_table()
        m.set_node_ips(nodes(2))
        m.set_pools(["10.65.0.0/16"], ["10.65.0.0/16"])
        m.set_workloads(pods(2))
        out["rules_small"] = m.rule_count()
        m.set_node_ips(nodes(args.nodes))
        endpoints = pods(args.pods)
        out["fill_ms"] = timed(lambda: m.set_workloads(endpoints))
        out["rules_big"] = m.rule_count()

        adds, deletes = [], []
        extra = pods(args.samples, net=66)
        for new in extra:
            endpoints.append(new)
            adds.append(timed(lambda: m.set_workloads(endpoints)))
        for _ in extra:
            endpoints.pop()
            deletes.append(timed(lambda: m.set_workloads(endpoints)))
        bare = []
        for i in range(min(args.samples, 50)):
            script = f'add element inet tortie workload_src {{ "calibare{i}" . 10.67.0.{i + 1} }}\n'
            bare.append(timed(lambda s=script: m.executor.run(s)))
        m.set_workloads(endpoints)  # take the bare ones out again

        fresh = NftablesManager(ns, executor=make_executor(ns, kind))
        try:
            out["restart_ms"] = timed(
                lambda: (
                    fresh.ensure_table(),
                    fresh.set_node_ips(nodes(args.nodes)),
                    fresh.set_workloads(endpoints),
                )
            )
        finally:
            fresh.close()
        out["counters_ms"] = timed(m.counters)

        ordered = sorted(adds)
        out["add_median_ms"] = statistics.median(adds)
        out["add_p95_ms"] = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
        print(f"[{m.executor.name}] {args.nodes} nodes, {args.pods} pods in the sets")
        print(f"  rules: {out['rules_small']:.0f} with 2/2, {out['rules_big']:.0f} at scale")
        print(f"  initial fill of {args.pods} pods:      {out['fill_ms']:8.1f} ms")
        print(f"  per-pod add    (x{len(adds)}): {summary(adds)}")
        print(f"  per-pod delete (x{len(deletes)}): {summary(deletes)}")
        print(f"  bare 1-element transaction:  {summary(bare)}")
        print(f"  restart convergence (read back, 0 writes): {out['restart_ms']:8.1f} ms")
        print(f"  counters() read:                           {out['counters_ms']:8.1f} ms")
    finally:
        m.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--pods", type=int, default=5000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--executors", default="lib,cli")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    prefix = "tt" + secrets.token_hex(2) + "nb"
    ok = True
    for n, kind in enumerate(args.executors.split(",")):
        with namespace(f"{prefix}{n}") as ns:
            out = run(kind, ns, args)  # type: ignore[arg-type]
        constant = out["rules_small"] == out["rules_big"]
        fast = out["add_p95_ms"] < TARGET_MS
        print(
            f"  target: rule count constant {'PASS' if constant else 'FAIL'}; "
            f"per-pod add p95 {out['add_p95_ms']:.2f} ms < {TARGET_MS:.0f} ms "
            f"{'PASS' if fast else 'FAIL'}"
        )
        ok = ok and constant and fast
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
