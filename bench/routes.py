"""Route programming speed of the dataplane's RouteTable, in a throwaway network namespace.

Run as root:  .venv/bin/python bench/routes.py [--runs 5] [--check] [--pyroute2-baseline]

Scenarios (each run in a fresh namespace unless noted; time = set_routes + apply):
- cold 1,000 / 10,000: remote block routes ``<block> via <node> dev tunl0 onlink`` into an empty
  table (first apply: link dump, table dump, batched writes);
- one change: one gateway changed among 10,000 programmed routes (one write);
- no-op resync of 10,000: queue_resync + apply on an unchanged table (dump + compare, 0 writes).

Targets (issue 5): 10,000 routes <= 3 s; no-op resync of 10,000 <= 1 s. ``--check`` exits 1 if
one is missed. ``--pyroute2-baseline`` also times 1,000 single pyroute2 route writes, the
reason routes bypass pyroute2. Namespaces are named tt<hex>b<n> and always deleted.
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
from ipaddress import IPv4Network

from tortie.dataplane.kernel_netlink import Pyroute2Netlink
from tortie.dataplane.routes import RouteSpec
from tortie.dataplane.routetable import RouteTable

PREFIX = "tt" + secrets.token_hex(2) + "b"
TARGETS = {"cold 10,000 routes": 3.0, "no-op resync of 10,000": 1.0}


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextmanager
def namespace(counter: list[int]) -> Iterator[str]:
    counter[0] += 1
    name = f"{PREFIX}{counter[0]}"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
        ip("-n", name, "link", "add", "tunl0", "type", "veth", "peer", "name", "tunl0p")
        for dev in ("eth0", "eth0p", "tunl0", "tunl0p"):
            ip("-n", name, "link", "set", dev, "up")
        ip("-n", name, "addr", "add", "192.168.49.2/24", "dev", "eth0")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def blocks(n: int, gateway: str = "192.168.49.3") -> list[RouteSpec]:
    nets = IPv4Network("10.128.0.0/10").subnets(new_prefix=26)
    return [RouteSpec.via(next(nets), gateway, "tunl0", onlink=True) for _ in range(n)]


def timed(fn: Callable[[], int]) -> tuple[float, int]:
    started = time.perf_counter()
    writes = fn()
    return time.perf_counter() - started, writes


def run_scenarios(runs: int) -> dict[str, list[tuple[float, int]]]:
    results: dict[str, list[tuple[float, int]]] = {
        "cold 1,000 routes": [],
        "cold 10,000 routes": [],
        "one change among 10,000": [],
        "no-op resync of 10,000": [],
    }
    counter = [0]
    want_1k, want_10k = blocks(1_000), blocks(10_000)
    for _ in range(runs):
        with namespace(counter) as ns, Pyroute2Netlink(ns) as nl:
            table = RouteTable(nl)

            def cold_1k(table: RouteTable = table) -> int:
                table.set_routes(want_1k)
                return table.apply().writes

            results["cold 1,000 routes"].append(timed(cold_1k))
        with namespace(counter) as ns, Pyroute2Netlink(ns) as nl:
            table = RouteTable(nl)

            def cold_10k(table: RouteTable = table) -> int:
                table.set_routes(want_10k)
                return table.apply().writes

            results["cold 10,000 routes"].append(timed(cold_10k))
            changed = RouteSpec.via(want_10k[5000].dst, "192.168.49.4", "tunl0", onlink=True)

            def one_change(table: RouteTable = table, changed: RouteSpec = changed) -> int:
                table.set_route(changed)
                return table.apply().writes

            results["one change among 10,000"].append(timed(one_change))

            def resync(table: RouteTable = table) -> int:
                table.queue_resync()
                return table.apply().writes

            results["no-op resync of 10,000"].append(timed(resync))
    return results


def pyroute2_baseline(runs: int) -> list[tuple[float, int]]:
    from pyroute2 import IPRoute  # type: ignore[import-untyped]

    out = []
    counter = [0]
    for _ in range(runs):
        with namespace(counter) as ns:
            ipr = IPRoute(netns=ns, flags=0)
            index = ipr.link_lookup(ifname="tunl0")[0]
            routes = blocks(1_000)
            started = time.perf_counter()
            for spec in routes:
                ipr.route(
                    "replace",
                    dst=str(spec.dst),
                    gateway=str(spec.gateway),
                    oif=index,
                    flags=4,  # RTNH_F_ONLINK
                    proto=80,
                )
            out.append((time.perf_counter() - started, len(routes)))
            ipr.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--pyroute2-baseline", action="store_true")
    args = parser.parse_args(argv)

    results = run_scenarios(args.runs)
    if args.pyroute2_baseline:
        results["pyroute2, 1,000 single writes"] = pyroute2_baseline(min(args.runs, 3))
    head = f"{'scenario':<32} {'runs':>4} {'median ms':>10} {'min ms':>9} {'max ms':>9}"
    print(f"{head} {'writes':>7}  target")
    missed = False
    for name, samples in results.items():
        times = [t for t, _ in samples]
        target = TARGETS.get(name)
        verdict = ""
        if target is not None:
            ok = statistics.median(times) <= target
            missed |= not ok
            verdict = f"<= {target:.0f} s {'ok' if ok else 'MISSED'}"
        median, low, high = (1000 * v for v in (statistics.median(times), min(times), max(times)))
        print(
            f"{name:<32} {len(times):>4} {median:>10.1f} {low:>9.1f} {high:>9.1f} "
            f"{samples[-1][1]:>7}  {verdict}"
        )
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
