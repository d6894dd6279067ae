"""CNI plugin latency and throughput: the installed ``tortie`` plugin process and the agent's
CNI server, on a throwaway node namespace.

Run as root:  .venv/bin/python bench/cni.py [--pods 100] [--rounds 5] [--check]

What is timed (wall clock, as a runtime sees it: fork/exec of the plugin included):
- ADD and DEL of ``--pods`` pods one after another (each its own pod namespace); p50, p99, max;
- 10 concurrent ADDs (10 plugin processes at once), ``--rounds`` times: all must succeed;
  pods per second = 10 / wall time of the round;
- VERSION, which never leaves the plugin process: the floor set by interpreter start-up.

The agent's server runs as its own process (``bench/cni_server.py``: the ``CniServer`` that
``tortie node run`` embeds, without the rest of the agent), over SQLite. Targets (issue 4):
ADD p50 <= 100 ms, ADD p99 <= 250 ms, DEL p50 <= 60 ms, 10 concurrent ADDs all succeed;
``--check`` exits 1 if one is missed. Namespaces are named tt<hex>... and always deleted,
with everything in them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tortie.cni import install
from tortie.datastore.factory import open_datastore
from tortie.datastore.resources import ResourceStore
from tortie.model.resources import IPPool

PREFIX = "tt" + secrets.token_hex(2)
TARGETS = {"ADD p50": 0.100, "ADD p99": 0.250, "DEL p50": 0.060}


def sh(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True)


class Bench:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.namespaces: list[str] = []
        self.node = self.netns("node")
        sh("ip", "-n", self.node, "link", "add", "up0", "type", "veth", "peer", "name", "up1")
        sh("ip", "-n", self.node, "link", "set", "up0", "up")
        sh("ip", "-n", self.node, "addr", "add", "192.0.2.1/24", "dev", "up0")
        sh("ip", "-n", self.node, "route", "add", "default", "via", "192.0.2.254")
        self.url = f"sqlite://{root}/ds.db"
        store = open_datastore(self.url, create=True)
        pool = {"cidr": "10.244.0.0/16", "blockSize": 26, "ipipMode": "Never"}
        doc = {"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
               "metadata": {"name": "bench"}, "spec": pool}  # fmt: skip
        ResourceStore(store).apply([IPPool.from_document(doc)])
        store.close()
        install.install_executables(str(root / "bin"))
        self.socket = str(root / "cni.sock")
        self.agent = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("cni_server.py")), "bench-node",
             self.url, self.socket, self.node],
            stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not os.path.exists(self.socket):
            if self.agent.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the CNI server did not start: {self.agent.stderr!r}")
            time.sleep(0.05)
        self.config = json.dumps(
            {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "tortie",
             "nodename": "bench-node", "datastore": self.url, "agent_socket": self.socket,
             "ipam": {"type": "tortie-ipam"}}
        ).encode()  # fmt: skip

    def netns(self, suffix: str) -> str:
        name = PREFIX + suffix
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        return name

    def call(self, command: str, i: int, netns: str | None) -> float:
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": f"bench{i:05d}",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": str(self.root / "bin"),
            "CNI_ARGS": f"K8S_POD_NAMESPACE=bench;K8S_POD_NAME=pod-{i}",
        }
        if netns:
            env["CNI_NETNS"] = f"/run/netns/{netns}"
        start = time.perf_counter()
        proc = subprocess.run([str(self.root / "bin" / "tortie")], input=self.config, env=env,
                              capture_output=True, check=False)  # fmt: skip
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{command} pod-{i} failed: {proc.stdout.decode()}")
        return elapsed

    def close(self) -> None:
        self.agent.terminate()
        try:
            self.agent.wait(10)
        except subprocess.TimeoutExpired:
            self.agent.kill()
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], check=False)


@contextlib.contextmanager
def bench() -> Iterator[Bench]:
    root = Path(tempfile.mkdtemp(prefix="ttb", dir="/tmp"))
    os.chmod(root, 0o700)
    b = None
    try:
        b = Bench(root)
        yield b
    finally:
        if b is not None:
            b.close()
        for ns in os.listdir("/run/netns"):
            if ns.startswith(PREFIX):
                subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(root, ignore_errors=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/cni.py needs root (network namespaces)")

    with bench() as b:
        pods = [b.netns(f"p{i}") for i in range(max(args.pods, 10))]
        for i in range(3):  # warm-up: the agent's first request, the plugin's pyc files
            b.call("ADD", 90000 + i, pods[i])
            b.call("DEL", 90000 + i, pods[i])
        version = [b.call("VERSION", 0, None) for _ in range(20)]
        adds = [b.call("ADD", i, pods[i]) for i in range(args.pods)]
        dels = [b.call("DEL", i, pods[i]) for i in range(args.pods)]

        rates, failures = [], 0
        for r in range(args.rounds):
            ids = [1000 * (r + 1) + i for i in range(10)]
            start = time.perf_counter()
            with ThreadPoolExecutor(10) as pool:
                results = list(pool.map(_try, [b] * 10, ["ADD"] * 10, ids, pods[:10]))
            wall = time.perf_counter() - start
            failures += results.count(False)
            rates.append(10 / wall)
            for j in range(10):
                b.call("DEL", ids[j], pods[j])

    ms = 1000.0
    print(f"tortie CNI plugin + agent CNI server, {args.pods} pods sequential, "
          f"{args.rounds} rounds of 10 concurrent ADDs ({os.cpu_count()} CPUs)")  # fmt: skip
    print(f"  VERSION (process floor)  p50 {pct(version, 0.5) * ms:6.1f} ms")
    print(f"  ADD   p50 {pct(adds, .5) * ms:6.1f} ms   p99 {pct(adds, .99) * ms:6.1f} ms"
          f"   max {max(adds) * ms:6.1f} ms")  # fmt: skip
    print(f"  DEL   p50 {pct(dels, .5) * ms:6.1f} ms   p99 {pct(dels, .99) * ms:6.1f} ms"
          f"   max {max(dels) * ms:6.1f} ms")  # fmt: skip
    print(f"  10 concurrent ADDs: {10 * args.rounds - failures}/{10 * args.rounds} succeeded, "
          f"{statistics.median(rates):.1f} pods/s (median of {args.rounds} rounds; "
          f"min {min(rates):.1f})")  # fmt: skip
    measured = {"ADD p50": pct(adds, 0.5), "ADD p99": pct(adds, 0.99), "DEL p50": pct(dels, 0.5)}
    missed = [f"{k} {v * ms:.1f} ms > {TARGETS[k] * ms:.0f} ms"
              for k, v in measured.items() if v > TARGETS[k]]  # fmt: skip
    if failures:
        missed.append(f"{failures} concurrent ADD(s) failed")
    print("targets: " + ("all met" if not missed else "MISSED: " + "; ".join(missed)))
    return 1 if args.check and missed else 0


def _try(b: Bench, command: str, i: int, netns: str) -> bool:
    try:
        b.call(command, i, netns)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
