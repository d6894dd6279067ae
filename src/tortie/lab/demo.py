"""``make demo``: the seed's walkthrough, replayed on a real lab.

Problem: a newcomer should see, in one command and a few minutes, what the seed document
shows with screenshots: two nodes, a pod on each, Calico's IPIP mode (routes through tunl0,
the ping, captures with outer and inner headers on the wire and only the inner packet at the
pod), then BGP mode switched live (routes straight out of the NIC, plain pod addresses on the
wire), then the two modes side by side with measured throughput and latency.

Everything shown is produced by the commands printed above it (``tortie lab ...``, ``ip``,
``tcpdump``, ``iperf3``), run for real; nothing is canned. The lab lives in a private
directory and is taken down at the end, also on Ctrl-C or failure.

Hazards: the figures are from a 2-core machine shared with whatever else runs; they are a
side-by-side comparison in one run, not a benchmark (``make bench`` is).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

BOLD, DIM, RESET = "\033[1m", "\033[2m", "\033[0m"
LAB = "seed"
POOL = """apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: default-ipv4-ippool
spec:
  cidr: 10.244.0.0/16
  ipipMode: {mode}
  natOutgoing: true
  nodeSelector: all()
"""


@dataclass
class Demo:
    root: Path
    color: bool

    # -- output -------------------------------------------------------------------------
    def say(self, text: str) -> None:
        print(text, flush=True)

    def title(self, text: str) -> None:
        bar = "=" * len(text)
        self.say(f"\n{self._b(bar)}\n{self._b(text)}\n{self._b(bar)}")

    def _b(self, text: str) -> str:
        return f"{BOLD}{text}{RESET}" if self.color else text

    def _d(self, text: str) -> str:
        return f"{DIM}{text}{RESET}" if self.color else text

    # -- running things -----------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "TORTIE_LAB_ROOT": str(self.root)}

    def tortie(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "tortie.ctl.main", *args]

    def show(self, argv: Sequence[str], shown: str | None = None, check: bool = True) -> str:
        """Run, print the command (as a user would type it) and its output."""
        self.say(self._b(f"$ {shown or shlex.join(argv)}"))
        proc = subprocess.run(
            list(argv), env=self.env, capture_output=True, text=True, check=False, timeout=120
        )
        out = (proc.stdout + proc.stderr).rstrip()
        if out:
            self.say(out)
        if check and proc.returncode != 0:
            raise DemoError(f"{shown or shlex.join(argv)} exited {proc.returncode}")
        return proc.stdout

    def on(self, target: str, *argv: str, check: bool = True) -> str:
        shown = f"tortie lab exec {target} -- {shlex.join(argv)}"
        return self.show(
            self.tortie("lab", "exec", "--name", LAB, target, "--", *argv), shown, check
        )

    def quiet(self, *argv: str) -> str:
        proc = subprocess.run(
            list(argv), env=self.env, capture_output=True, text=True, check=False, timeout=120
        )
        return proc.stdout

    def netns(self, target: str) -> str:
        status = json.loads(self.quiet(*self.tortie("lab", "status", "--name", LAB, "-o", "json")))
        for item in status["nodes"] + status["pods"]:
            if item["name"] == target:
                return str(item["netns"])
        raise DemoError(f"no {target} in the lab")

    def address(self, target: str) -> str:
        status = json.loads(self.quiet(*self.tortie("lab", "status", "--name", LAB, "-o", "json")))
        for item in status["nodes"] + status["pods"]:
            if item["name"] == target:
                return str(item.get("address") or item.get("ip")).split("/")[0]
        raise DemoError(f"no {target} in the lab")

    # -- the steps ----------------------------------------------------------------------
    def routes(self) -> None:
        for node in ("node1", "node2"):
            self.on(node, "ip", "route")

    def wait_routes(self, want: str) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            out = self.quiet(
                *self.tortie("lab", "exec", "--name", LAB, "node1", "--", "ip", "route")
            )
            if re.search(want, out):
                return
            time.sleep(0.2)
        raise DemoError(f"node1's routes never matched {want!r}")

    def captures(self, filters: dict[str, list[str]]) -> None:
        """tcpdump on several interfaces at once while pod1 pings pod2 twice."""
        procs: dict[str, subprocess.Popen[str]] = {}
        for target, filt in filters.items():
            argv = [
                "nsenter",
                f"--net=/run/netns/{self.netns(target)}",
                "--",
                "tcpdump",
                "-n",
                "-l",
                "-c",
                "2",
                "-i",
                "eth0",
                *filt,
            ]
            procs[target] = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
            )
        try:
            time.sleep(1.0)
            self.quiet(*self.tortie("lab", "ping", "--name", LAB, "pod1", "pod2"))
            for target, proc in procs.items():
                out, _ = proc.communicate(timeout=10)
                where = f"{target} eth0" + (" (the node's uplink)" if "node" in target else "")
                self.say(self._b(f"-- tcpdump -n -i eth0 on {where}, {' '.join(filters[target])}"))
                for line in out.splitlines():
                    self.say("   " + re.sub(r"^\d\d:\d\d:\d\d\.\d+ ", "", line))
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()

    def measure(self) -> tuple[float | None, float]:
        """(iperf3 pod->pod Gbit/s or None if iperf3 is missing, ping RTT average ms)."""
        rtt_out = self.quiet(
            "nsenter",
            f"--net=/run/netns/{self.netns('pod1')}",
            "--",
            "ping",
            "-n",
            "-q",
            "-c",
            "20",
            "-i",
            "0.05",
            self.address("pod2"),
        )
        match = re.search(r"= [\d.]+/([\d.]+)/", rtt_out)
        rtt = float(match.group(1)) if match else float("nan")
        if shutil.which("iperf3") is None:
            return None, rtt
        server = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.netns('pod2')}", "--", "iperf3", "-s", "-1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.5)
            out = self.quiet(
                "nsenter",
                f"--net=/run/netns/{self.netns('pod1')}",
                "--",
                "iperf3",
                "-c",
                self.address("pod2"),
                "-t",
                "3",
                "-J",
            )
            gbps = json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9
        except (ValueError, KeyError):
            gbps = None
        finally:
            if server.poll() is None:
                server.kill()
            server.wait()
        return gbps, rtt

    def set_mode(self, mode: str) -> None:
        pool = self.root / f"pool-{mode}.yaml"
        pool.write_text(POOL.format(mode=mode))
        self.say(self._d(f"# {pool.name}:\n" + POOL.format(mode=mode).rstrip()))
        self.on("node1", sys.executable, "-m", "tortie.ctl.main", "apply", "-f", str(pool))


class DemoError(RuntimeError):
    pass


def run(demo: Demo) -> None:
    t0 = time.monotonic()
    demo.title("tortie: Calico's IPIP mode and BGP mode, the seed's walkthrough, for real")
    demo.say(
        "Two nodes (network namespaces joined by a bridge, like the seed's minikube nodes\n"
        "192.168.49.2 and .3), one pod on each, a real node agent per node (tortie node run)\n"
        "and pods wired by the real CNI plugin. Pool 10.244.0.0/16, /26 blocks per node."
    )
    demo.show(
        demo.tortie("lab", "up", "--name", LAB, "--nodes", "2", "--mode", "ipip"),
        f"tortie lab up --name {LAB} --nodes 2 --mode ipip",
    )
    demo.show(demo.tortie("lab", "status", "--name", LAB), f"tortie lab status --name {LAB}")

    demo.title("1. IPIP mode: routes")
    demo.say(
        "Each node blackholes its own block, and routes the other node's block through\n"
        "tunl0, onlink via the other node's address (Calico writes the same, proto bird)."
    )
    demo.wait_routes(r"via 192\.168\.49\.3 dev tunl0")
    demo.routes()
    demo.on("pod1", "ip", "route")
    demo.say(
        "The pod's default route points at 169.254.1.1, answered by proxy ARP on the host\n"
        "side of its veth (cali...)."
    )

    demo.title("2. IPIP mode: the ping and the packet on the wire")
    demo.show(
        demo.tortie("lab", "ping", "--name", LAB, "pod1", "pod2"), "tortie lab ping pod1 pod2"
    )
    demo.say("Captured at the same time on node1's uplink, node2's uplink and pod2's eth0:")
    demo.captures({"node1": ["ip", "proto", "4"], "node2": ["ip", "proto", "4"], "pod2": ["icmp"]})
    demo.say(
        "On the wire: an outer header node1 -> node2 (IP protocol 4) around the inner\n"
        "pod1 -> pod2 packet. At the pod: only the inner packet. This kernel has no ipip\n"
        "module; tortie's tc-BPF programs encapsulate on tunl0 and decapsulate on the uplink."
    )
    demo.say("The same journey, hop by hop, from the kernels' own route lookups:")
    demo.show(demo.tortie("trace", "--lab", LAB, "pod1", "pod2"), "tortie trace pod1 pod2")
    ipip = demo.measure()

    demo.title("3. BGP mode, switched live (ipipMode: Never)")
    demo.set_mode("Never")
    demo.wait_routes(r"via 192\.168\.49\.3 dev eth0")
    demo.say(
        "No restart: the agents converge. The other node's block now goes straight out of\n"
        "the NIC, and the routes were learned over BGP (ExaBGP on each node, full mesh):"
    )
    demo.routes()
    demo.on("node1", sys.executable, "-m", "tortie.ctl.main", "node", "status")
    demo.captures({"node1": ["icmp"], "node2": ["icmp"], "pod2": ["icmp"]})
    demo.say("On the wire: the pod addresses themselves. No tunnel, no outer header.")
    bgp = demo.measure()

    demo.title("4. Side by side (this run, this machine; `make bench` for real figures)")
    rows = [("", "IPIP (tunl0, tc-BPF)", "BGP (native)")]
    rows.append(
        (
            "pod->pod TCP, iperf3 3 s",
            "n/a" if ipip[0] is None else f"{ipip[0]:.2f} Gbit/s",
            "n/a" if bgp[0] is None else f"{bgp[0]:.2f} Gbit/s",
        )
    )
    rows.append(("ping RTT average", f"{ipip[1]:.3f} ms", f"{bgp[1]:.3f} ms"))
    rows.append(("MTU of pod eth0", "1480 (20 B for the outer header)", "1500"))
    rows.append(("fits", "nodes in different subnets", "nodes on one L2 segment"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        demo.say("  " + "   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))

    demo.title("5. Cleaning up")
    demo.show(demo.tortie("lab", "down", "--name", LAB), f"tortie lab down --name {LAB}")
    demo.say(f"\nDone in {time.monotonic() - t0:.0f} s.")


@contextlib.contextmanager
def lab_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="tortie-demo-"))
    try:
        yield root
    finally:
        env = {**os.environ, "TORTIE_LAB_ROOT": str(root)}
        if (root / LAB).exists():
            subprocess.run(
                [sys.executable, "-m", "tortie.ctl.main", "lab", "down", "--name", LAB, "-q"],
                env=env,
                capture_output=True,
                check=False,
                timeout=120,
            )
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    if os.geteuid() != 0:
        print("make demo needs root (it creates network namespaces)", file=sys.stderr)
        return 1
    with lab_root() as root:
        try:
            run(Demo(root, color=sys.stdout.isatty()))
        except DemoError as err:
            print(f"demo failed: {err}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
