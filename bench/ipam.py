"""IPAM assignments per second: 1 and 8 processes, on SQLite and on etcd.

Each configuration gets a fresh datastore (a temporary SQLite file; a private etcd started
from the ``etcd`` binary unless ``--etcd URL`` names one to wipe and reuse), a /16 pool with
/26 blocks, and N processes that each make ``--count`` single-address assignments as fast as
they can, started together at a barrier. Throughput = all assignments / (last finish - first
start). Layouts: "nodes" = one node per process (many CNI plugins on many nodes);
"one node" = every process on the same node (they contend for the same blocks).

Run:  .venv/bin/python bench/ipam.py [--backends sqlite,etcd] [--processes 1,8] [--count 500]
Target (issue 3): >= 300 assignments/s on SQLite from one process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tortie.datastore.factory import open_datastore
from tortie.ipam import loadgen

POOL = ("bench", "10.128.0.0/16", 26)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def private_etcd() -> Iterator[str]:
    binary = os.environ.get("TORTIE_ETCD") or shutil.which("etcd") or "/usr/bin/etcd"
    if not os.access(binary, os.X_OK):
        raise SystemExit("etcd not found: install etcd-server or pass --etcd URL")
    with tempfile.TemporaryDirectory(prefix="tortie-bench-etcd-") as tmp:
        client, peer = _free_port(), _free_port()
        c, p = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        cmd = [
            binary,
            "--name=bench",
            f"--data-dir={tmp}/data",
            f"--listen-client-urls={c}",
            f"--advertise-client-urls={c}",
            f"--listen-peer-urls={p}",
            f"--initial-advertise-peer-urls={p}",
            f"--initial-cluster=bench={p}",
        ]
        with open(f"{tmp}/etcd.log", "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with urllib.request.urlopen(f"{c}/health", timeout=1) as r:
                        if json.loads(r.read()).get("health") == "true":
                            break
                except (OSError, ValueError):
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"etcd did not start; see {tmp}/etcd.log")
                time.sleep(0.1)
            yield f"etcd://127.0.0.1:{client}"
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _wipe(url: str) -> None:
    store = open_datastore(url)
    try:
        for kv in store.list("/tortie/").items:
            store.delete(kv.key)
    finally:
        store.close()


@contextmanager
def fresh_store(backend: str, etcd_url: str | None) -> Iterator[str]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="tortie-bench-") as tmp:
            yield f"sqlite:///{Path(tmp) / 'ipam.db'}"
    elif etcd_url:
        _wipe(etcd_url)
        yield etcd_url
    else:
        with private_etcd() as url:
            yield url


def measure(url: str, processes: int, count: int, one_node: bool) -> float:
    nodes = ["bench-node"] * processes if one_node else [f"node-{i}" for i in range(processes)]
    store = open_datastore(url, create=True)
    try:
        loadgen.prepare(store, pools=[POOL], nodes=sorted(set(nodes)), max_blocks_per_host=0)
    finally:
        store.close()
    specs = [loadgen.WorkerSpec(url, n, i, count, seed=i) for i, n in enumerate(nodes)]
    results = loadgen.run_parallel(loadgen.assign_worker, specs)
    start = min(r.start for r in results)
    end = max(r.start + r.seconds for r in results)
    return sum(r.assigned for r in results) / (end - start)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="sqlite,etcd")
    ap.add_argument("--processes", default="1,8")
    ap.add_argument("--count", type=int, default=500, help="assignments per process")
    ap.add_argument("--etcd", metavar="URL", help="use (and wipe!) this etcd instead")
    args = ap.parse_args(argv)
    print(f"# tortie IPAM bench: {args.count} assignments per process, {os.cpu_count()} CPUs")
    print("| backend | processes | layout | assignments/s |")
    print("|---|---|---|---|")
    for backend in args.backends.split(","):
        for n in (int(x) for x in args.processes.split(",")):
            layouts = [False] if n == 1 else [False, True]
            for one_node in layouts:
                with fresh_store(backend, args.etcd) as url:
                    rate = measure(url, n, args.count, one_node)
                layout = "one node" if one_node or n == 1 else f"{n} nodes"
                print(f"| {backend} | {n} | {layout} | {rate:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
