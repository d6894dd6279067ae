"""``tortie apply`` of large inputs on SQLite: thousands of pools, a resource with 100k labels.

Each run is the real command in its own process (interpreter start and imports included:
what a user waits for), into a fresh SQLite datastore in a temporary directory:
- 5,000 IPPools (/24s, one YAML stream of 5,000 documents, 0.8 MiB), into an empty store;
- the same 5,000 again, into the store that holds them (every pool replaced: the update path
  reads and compares each one);
- one Node with 100,000 labels (1.3 MiB stored, under the 1.5 MiB resource limit).

Run:  .venv/bin/python bench/apply.py [--runs 5] [--json] [--check]
Targets (issue 17, item 12): 5,000 pools <= 5 s; 100k labels <= 2 s. ``--check`` exits 1 if
one is missed. ``--json`` prints one JSON object per scenario instead of the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tortie.datastore.factory import open_datastore

POOLS = 5000
LABELS = 100_000
TARGETS = {"5,000 pools": 5.0, "100k labels": 2.0}


def pools_yaml(count: int) -> str:
    return "---\n".join(
        "apiVersion: projectcalico.org/v3\nkind: IPPool\n"
        f"metadata:\n  name: pool-{n}\nspec:\n  cidr: 10.{n // 256}.{n % 256}.0/24\n"
        "  blockSize: 26\n  ipipMode: Always\n  natOutgoing: true\n  nodeSelector: all()\n"
        for n in range(count)
    )


def labels_yaml(count: int) -> str:
    lines = [f"    k{n:05x}: v\n" for n in range(count)]
    return (
        "apiVersion: projectcalico.org/v3\nkind: Node\nmetadata:\n  name: node-1\n  labels:\n"
        + "".join(lines)
        + "spec:\n  bgp:\n    ipv4Address: 192.168.49.2/24\n"
    )


def apply(url: str, path: Path) -> float:
    """Seconds for one ``tortie apply -f path`` process; raises if it fails."""
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "tortie.ctl.main", "--datastore", url, "apply", "-f", str(path)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    took = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"tortie apply -f {path} failed ({proc.returncode}): {proc.stderr}")
    return took


def fresh(tmp: Path, n: int) -> str:
    """A new, empty SQLite datastore (created here, so the timed apply only writes)."""
    url = f"sqlite:///{tmp}/run-{n}.db"
    open_datastore(url, create=True).close()
    return url


def scenario(
    name: str, runs: int, tmp: Path, timed: Callable[[str], float], target: float | None
) -> dict[str, object]:
    times = [timed(fresh(tmp, n)) for n in range(runs)]
    median = statistics.median(times)
    return {
        "scenario": name,
        "runs": runs,
        "median_s": round(median, 3),
        "min_s": round(min(times), 3),
        "max_s": round(max(times), 3),
        "target_s": target,
        "met": None if target is None else median <= target,
    }


def run(runs: int, log: Callable[[str], None]) -> list[dict[str, object]]:
    with tempfile.TemporaryDirectory(prefix="tortie-bench-apply-") as tmpdir:
        tmp = Path(tmpdir)
        pools, labels = tmp / "pools.yaml", tmp / "labels.yaml"
        pools.write_text(pools_yaml(POOLS))
        labels.write_text(labels_yaml(LABELS))
        log(f"inputs: {pools.stat().st_size} and {labels.stat().st_size} bytes of YAML")

        def again(url: str) -> float:
            apply(url, pools)
            return apply(url, pools)

        return [
            scenario("5,000 pools", runs, tmp, lambda u: apply(u, pools), TARGETS["5,000 pools"]),
            scenario("5,000 pools again (replace)", runs, tmp, again, None),
            scenario("100k labels", runs, tmp, lambda u: apply(u, labels), TARGETS["100k labels"]),
        ]


def table(rows: list[dict[str, object]]) -> str:
    out = [f"{'scenario':<30} {'runs':>4} {'median s':>9} {'min s':>7} {'max s':>7}  target"]
    for r in rows:
        target = "" if r["target_s"] is None else f"<= {r['target_s']} s"
        if r["met"] is False:
            target += " MISSED"
        out.append(
            f"{r['scenario']:<30} {r['runs']:>4} {r['median_s']:>9.2f} {r['min_s']:>7.2f} "
            f"{r['max_s']:>7.2f}  {target}"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per scenario (median)")
    parser.add_argument("--json", action="store_true", help="one JSON object per scenario")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    rows = run(args.runs, lambda m: print(m, file=sys.stderr))
    if args.json:
        for r in rows:
            print(json.dumps(r))
    else:
        print(table(rows))
    return 1 if args.check and any(r["met"] is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
