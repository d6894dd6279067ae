"""How long a ``tortie`` command takes as a whole process, on SQLite and on etcd (issue 17, 14).

Run:  .venv/bin/python bench/cli.py [--rounds 15] [--json] [--check] [--as-is] [--baseline SRC]

Commands, interleaved round by round so that drift on the machine hits them alike:
``tortie version``; ``tortie get ippools`` (table and ``-o yaml``) on SQLite; ``tortie ipam
assign`` then ``ipam release`` of the same handle, and ``get ippools``, on a private etcd
(started from the ``etcd`` binary on loopback ports and stopped by its PID). Each figure is
the median wall time of the process (start to exit) with its min-max, and the median CPU time
(user + system of the child) beside it: CPU time moves less when other jobs share the 2 cores.

``--baseline SRC`` also runs every command with another tortie source tree first on
``PYTHONPATH`` (e.g. ``/work/main/src``), in the same rounds right after this tree's run of
the command, so a change is compared with what it changes under the same load; those rows are
marked ``[baseline]`` and have no verdict of their own.

The commands run the way an installed tortie runs: the ``tortie`` console script next to this
Python if there is one (else ``python -m tortie.ctl.main``), with compiled bytecode. This
machine's environment sets ``PYTHONDONTWRITEBYTECODE``, which makes an editable checkout
compile every module on every call (about 0.1 s more per command); the bench lifts it and
keeps the bytecode in a private ``PYTHONPYCACHEPREFIX`` directory, warmed by one unmeasured
call of each command. ``--as-is`` keeps the caller's environment instead (here: no bytecode
for tortie's own modules), to show what a checkout run that way pays.

Targets (issue 17, item 14): ``get``/``version`` on SQLite <= 0.15 s; etcd commands <= 0.4 s.
``--check`` exits 1 if a median misses its target. ``--json`` prints one JSON object per
command after the table (``bench/run.py`` reads them).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ipam import private_etcd  # bench/ipam.py: a private etcd on loopback

POOL = """\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: bench-pool
spec:
  cidr: 10.77.0.0/16
  ipipMode: Always
  nodeSelector: all()
"""


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    argv: tuple[str, ...]  # after the tortie command itself
    backend: str  # "none", "sqlite" or "etcd"
    target_s: float


def cases(sqlite_url: str, etcd_url: str) -> list[Case]:
    return [
        Case("version", "tortie version", ("version",), "none", 0.15),
        Case(
            "get_sqlite",
            "tortie get ippools (SQLite)",
            ("--datastore", sqlite_url, "get", "ippools"),
            "sqlite",
            0.15,
        ),
        Case(
            "get_yaml_sqlite",
            "tortie get ippools -o yaml (SQLite)",
            ("--datastore", sqlite_url, "get", "ippools", "-o", "yaml"),
            "sqlite",
            0.15,
        ),
        Case(
            "assign_etcd",
            "tortie ipam assign (etcd)",
            ("--datastore", etcd_url, "ipam", "assign", "--node", "bench", "--handle", "bench-h"),
            "etcd",
            0.4,
        ),
        Case(
            "release_etcd",
            "tortie ipam release (etcd)",
            ("--datastore", etcd_url, "ipam", "release", "--handle", "bench-h"),
            "etcd",
            0.4,
        ),
        Case(
            "get_etcd",
            "tortie get ippools (etcd)",
            ("--datastore", etcd_url, "get", "ippools"),
            "etcd",
            0.4,
        ),
    ]


def tortie_command() -> list[str]:
    script = Path(sys.executable).with_name("tortie")
    if script.is_file() and os.access(script, os.X_OK):
        return [sys.executable, str(script)]
    return [sys.executable, "-m", "tortie.ctl.main"]


def child_env(pycache: Path | None, source: str | None = None) -> dict[str, str]:
    """The commands' environment: with compiled bytecode in ``pycache`` (None: as it is),
    and ``source`` (a tortie ``src`` directory) first on ``PYTHONPATH`` if given."""
    env = dict(os.environ)
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(Path(source).resolve()), env.get("PYTHONPATH")) if p
        )
    env.pop("TORTIE_DATASTORE", None)
    return env


def timed(argv: Sequence[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one process; raises if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def measure(
    rounds: int, log: bool = True, as_is: bool = False, baseline: str | None = None
) -> list[dict[str, object]]:
    tortie = tortie_command()
    with tempfile.TemporaryDirectory(prefix="tortie-bench-cli-") as tmpdir:
        tmp = Path(tmpdir)
        env = child_env(None if as_is else tmp / "pyc")
        # (suffix of the row's key, environment): this tree, then the baseline's if given.
        variants = [("", env)]
        if baseline is not None:
            variants.append(("_baseline", child_env(None if as_is else tmp / "pyc", baseline)))
        sqlite_url = f"sqlite:///{tmp / 'cli.db'}"
        with private_etcd() as etcd_url:
            for url in (sqlite_url, etcd_url):
                # Opening never creates a store (docs/datastore.md): init, then the pool.
                subprocess.run(
                    [*tortie, "--datastore", url, "datastore", "init"],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                subprocess.run(
                    [*tortie, "--datastore", url, "apply", "-f", "-"],
                    input=POOL,
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
            todo = cases(sqlite_url, etcd_url)
            for case in todo:  # warm-up: compiles the bytecode; not measured
                for _, venv in variants:
                    timed([*tortie, *case.argv], venv)
            keys = [c.key + suffix for c in todo for suffix, _ in variants]
            walls: dict[str, list[float]] = {k: [] for k in keys}
            cpus: dict[str, list[float]] = {k: [] for k in keys}
            for n in range(rounds):
                for case in todo:
                    for suffix, venv in variants:
                        wall, cpu = timed([*tortie, *case.argv], venv)
                        walls[case.key + suffix].append(wall)
                        cpus[case.key + suffix].append(cpu)
                if log:
                    print(f"  round {n + 1}/{rounds} done", file=sys.stderr, flush=True)
    out: list[dict[str, object]] = []
    for case in todo:
        for suffix, _ in variants:
            w, c = walls[case.key + suffix], cpus[case.key + suffix]
            median = statistics.median(w)
            row: dict[str, object] = {
                "key": case.key + suffix,
                "label": case.label + (" [baseline]" if suffix else ""),
                "backend": case.backend,
                "runs": len(w),
                "wall_ms": round(median * 1000, 1),
                "wall_min_ms": round(min(w) * 1000, 1),
                "wall_max_ms": round(max(w) * 1000, 1),
                "cpu_ms": round(statistics.median(c) * 1000, 1),
                "target_ms": round(case.target_s * 1000),
                "met": median <= case.target_s,
                "command": " ".join(["tortie", *case.argv]).replace(tmpdir, "$TMP"),
            }
            if suffix:
                row["baseline"] = baseline
            out.append(row)
    return out


def render(rows: Sequence[dict[str, object]], command: Sequence[str], as_is: bool = False) -> str:
    how = "environment as it is" if as_is else "compiled bytecode"
    lines = [
        f"tortie CLI as whole processes ({' '.join(command[1:]) or command[0]}, {how}), "
        f"{rows[0]['runs'] if rows else 0} interleaved rounds, {os.cpu_count()} CPUs",
        f"{'command':47} {'wall ms median (min-max)':>26} {'CPU ms':>7}  target",
    ]
    for r in rows:
        wall = f"{r['wall_ms']:.0f} ({r['wall_min_ms']:.0f}-{r['wall_max_ms']:.0f})"
        verdict = "met" if r["met"] else "MISSED"
        target = f"<= {r['target_ms']} ms {verdict}" if "baseline" not in r else ""
        lines.append(f"{r['label']!s:47} {wall:>26} {r['cpu_ms']:>7.0f}  {target}".rstrip())
    baselines = {r.get("baseline") for r in rows} - {None}
    if baselines:
        lines.append(f"[baseline]: {', '.join(sorted(map(str, baselines)))} first on PYTHONPATH")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json", action="store_true", help="also one JSON line per command")
    ap.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    ap.add_argument("--as-is", action="store_true", help="keep the environment's bytecode settings")
    ap.add_argument(
        "--baseline",
        metavar="SRC",
        help="also run every command with this tortie src directory first on PYTHONPATH",
    )
    args = ap.parse_args(argv)
    rows = measure(args.rounds, as_is=args.as_is, baseline=args.baseline)
    print(render(rows, tortie_command(), args.as_is))
    if args.json:
        for r in rows:
            print(json.dumps(r))
    ours = [r for r in rows if "baseline" not in r]
    return 1 if args.check and not all(r["met"] for r in ours) else 0


if __name__ == "__main__":
    sys.exit(main())
