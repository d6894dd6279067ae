"""BGP convergence and propagation: 10 and 20 nodes, full mesh and with 2 route reflectors.

Two levels (``--level speaker,agent``):

**speaker** (the BGP speakers alone). Each configuration is a namespace lab (one bridge,
one namespace per node, ``tt<hex>`` names, removed at the end). Every node runs its real
speaker with the config :func:`tortie.bgp.peering.compute_speaker_config` gives it: ExaBGP on
ordinary nodes, BIRD 2 on the reflectors (nodes 1 and 2, one cluster; mesh off, Calico's
``peer-with-route-reflectors`` BGPPeer). Measured:

- start: from starting every speaker (each announcing its /26) to every node having
  learned every other node's block;
- propagation: a new prefix announced on a random node -> the learned-route event on each
  other node (p50, p99 over all receivers of all samples);
- sessions and learned routes per node, and memory per node (RSS of the speaker and, for
  ExaBGP, its helper).

This is the speaker layer: the event the agent receives. Installing the route in the kernel
is the agent's part and adds its own time (netlink, a few ms).

**agent** (a real lab: ``tortie lab up --mode bgp``, real agents, speakers, CNI pods; one pod
per node; mesh, or ``--route-reflectors 2``). Measured:

- up: ``lab up`` wall time, and from its start until every node's kernel holds a route to
  every other node's pod block (polled ``ip route``, 50 ms);
- propagation: a fresh block claimed for a random node (``IPAM.assign(ip=...)`` of an address
  in a block nobody has: it becomes affine to that node, as ``tortie ipam assign --ip`` does)
  -> the route in each other node's kernel. Timestamps come from ``ip -ts monitor route``
  running in every node's namespace (one host clock). "announce -> kernel" starts when the
  origin's agent installs the block's ``blackhole`` (it announces in the same pass, just
  before); "claim -> kernel" adds the agent's datastore watch;
- sessions and remote routes per node, and memory per node (RSS of the agent, its speaker and,
  for ExaBGP, the helper).

Run (root):  .venv/bin/python bench/bgp.py [--level speaker,agent] [--nodes 10,20]
             [--agent-nodes 10] [--topologies mesh,rr] [--samples 30]
Target (issue 6): a new block in every other node's kernel within 200 ms p50 on a 10-node mesh
(the agent level's "announce -> kernel").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from functools import partial
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "netns" / "bgp"))
from bgp_lab import block, lab, node_ip, wait_for

from tortie.bgp.bird import BirdSpeaker
from tortie.bgp.exabgp import ExaBGPSpeaker
from tortie.bgp.peering import compute_speaker_config
from tortie.bgp.types import RouteAdded, SpeakerEvent
from tortie.lab.manifests import mesh_off, peer_with_route_reflectors
from tortie.model.resources import BGPPeer, Node

REFLECTORS = (1, 2)


def node_resource(i: int, reflector: bool) -> Node:
    bgp: dict[str, Any] = {"ipv4Address": f"{node_ip(i)}/24"}
    labels = {}
    if reflector:
        bgp["routeReflectorClusterID"] = "244.0.0.1"
        labels["route-reflector"] = "true"
    return Node.from_document(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "Node",
            "metadata": {"name": f"n{i}", "labels": labels},
            "spec": {"bgp": bgp},
        }
    )


def cluster_resources(n: int, topology: str) -> tuple[list[Node], list[Any], list[BGPPeer]]:
    rr = topology == "rr"
    nodes = [node_resource(i, rr and i in REFLECTORS) for i in range(1, n + 1)]
    if not rr:
        return nodes, [], []
    config = mesh_off()
    recipe = peer_with_route_reflectors()
    return nodes, [config], [recipe]


class Recorder:
    """Learned-route events of every node, with arrival times."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.first: dict[tuple[int, IPv4Network], float] = {}

    def callback(self, i: int) -> Any:
        def on_event(event: SpeakerEvent) -> None:
            if isinstance(event, RouteAdded):
                now = time.monotonic()
                with self.lock:
                    self.first.setdefault((i, event.route.prefix), now)

        return on_event

    def reached(self, prefix: IPv4Network, receivers: list[int]) -> bool:
        with self.lock:
            return all((i, prefix) in self.first for i in receivers)


def rss_kib(pid: int | None, with_children: bool) -> int:
    if pid is None:
        return 0
    pids = [pid]
    if with_children:
        children = Path(f"/proc/{pid}/task/{pid}/children")
        with contextlib.suppress(OSError):
            pids += [int(x) for x in children.read_text().split()]
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(n: int, topology: str, samples: int) -> dict[str, Any]:
    nodes, configs, peers = cluster_resources(n, topology)
    rec = Recorder()
    with lab(dump_logs=False) as the_lab:
        speakers: dict[int, ExaBGPSpeaker | BirdSpeaker] = {}
        for i in range(1, n + 1):
            the_lab.node(i)
            cfg = compute_speaker_config(f"n{i}", nodes, configs, peers).config
            cls = BirdSpeaker if cfg.is_route_reflector else ExaBGPSpeaker
            sp = cls(cfg, the_lab.state_dir(f"n{i}"), rec.callback(i), netns=the_lab.ns(f"n{i}"))
            the_lab.cleanups.append(partial(sp.stop, withdraw=False, timeout=3))
            speakers[i] = sp
        t0 = time.monotonic()
        for i, sp in speakers.items():
            sp.set_announced([block(i)])
            sp.start()
        everyone = {block(i) for i in speakers}

        def converged() -> bool:
            return all(
                {r.prefix for r in sp.learned_routes()} >= everyone - {block(i)}
                for i, sp in speakers.items()
            )

        wait_for(converged, 120, "convergence", step=0.05)
        start_time = time.monotonic() - t0
        time.sleep(1.0)  # let the start-up burst settle before timing single announcements
        latencies: list[float] = []
        rng = random.Random(6)
        for k in range(samples):
            origin = rng.choice(sorted(speakers))
            prefix = IPv4Network(f"10.{200 + k // 250}.{k % 250}.0/26")
            sent = time.monotonic()
            speakers[origin].announce(prefix)
            receivers = [i for i in speakers if i != origin]
            wait_for(
                partial(rec.reached, prefix, receivers),
                10,
                f"sample {k}",
                step=0.002,
            )
            latencies += [rec.first[(i, prefix)] - sent for i in receivers]
            speakers[origin].withdraw(prefix)
            time.sleep(0.05)
        sessions = [len(sp.config.peers) for sp in speakers.values()]
        routes = [len(sp.learned_routes()) for sp in speakers.values()]
        memory = {i: rss_kib(sp.pid, isinstance(sp, ExaBGPSpeaker)) for i, sp in speakers.items()}
        result = {
            "nodes": n,
            "topology": topology,
            "start_to_converged_s": round(start_time, 2),
            "propagation_ms_p50": round(percentile(latencies, 0.50) * 1000, 1),
            "propagation_ms_p99": round(percentile(latencies, 0.99) * 1000, 1),
            "samples": len(latencies),
            "sessions_per_node": f"{min(sessions)}..{max(sessions)}",
            "learned_routes_per_node": f"{min(routes)}..{max(routes)}",
            "rss_mib_exabgp_node": round(
                statistics.mean(
                    m for i, m in memory.items() if isinstance(speakers[i], ExaBGPSpeaker)
                )
                / 1024,
                1,
            ),
        }
        birds = [m for i, m in memory.items() if isinstance(speakers[i], BirdSpeaker)]
        if birds:
            result["rss_mib_bird_node"] = round(statistics.mean(birds) / 1024, 1)
        return result


# -- agent level: a real lab ----------------------------------------------------------------


class RouteMonitor:
    """``ip -ts -4 monitor route`` in one namespace: first time each (prefix, kind) appeared.

    kind: ``via`` for a route through a next hop, ``blackhole`` for a local block.
    """

    def __init__(self, netns: str) -> None:
        self.first: dict[tuple[IPv4Network, str], float] = {}
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{netns}", "--", "ip", "-ts", "-4", "monitor", "route"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            match = MONITOR_LINE.match(line)
            if match is None:
                continue
            when = datetime.fromisoformat(match["ts"]).timestamp()
            kind = "blackhole" if match["blackhole"] else "via"
            with contextlib.suppress(ValueError):
                key = (IPv4Network(match["prefix"]), kind)
                with self.lock:
                    self.first.setdefault(key, when)

    def seen(self, prefix: IPv4Network, kind: str) -> float | None:
        with self.lock:
            return self.first.get((prefix, kind))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)


MONITOR_LINE = re.compile(
    r"^\[(?P<ts>[^\]]+)\] (?P<blackhole>blackhole )?(?P<prefix>\d+\.\d+\.\d+\.\d+/\d+) "
)


def kernel_prefixes(netns: str) -> set[IPv4Network]:
    out = subprocess.run(
        ["ip", "-n", netns, "-4", "route", "show", "proto", "80"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    found = set()
    for line in out.splitlines():
        head = line.replace("blackhole ", "").split(" ", 1)[0]
        with contextlib.suppress(ValueError):
            if "/" in head:
                found.add(IPv4Network(head))
    return found


def remote_routes(netns: str) -> int:
    """Routes the agent programmed towards other nodes (``... via <next hop> ...``)."""
    out = subprocess.run(
        ["ip", "-n", netns, "-4", "route", "show", "proto", "80"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return sum(1 for line in out.splitlines() if " via " in line)


def fresh_block(taken: set[IPv4Network], used: set[IPv4Network]) -> IPv4Network:
    """A /26 of the lab's pool that no block uses yet, from the top of the pool down."""
    for k in range(1023, -1, -1):
        candidate = IPv4Network(f"10.244.{k // 4}.{(k % 4) * 64}/26")
        if candidate not in taken and candidate not in used:
            return candidate
    raise RuntimeError("no free block left in 10.244.0.0/16")


def everywhere(
    monitors: dict[str, RouteMonitor], block: IPv4Network, origin: str, receivers: list[str]
) -> bool:
    """The origin installed its blackhole and every receiver a route via a next hop."""
    return monitors[origin].seen(block, "blackhole") is not None and all(
        monitors[x].seen(block, "via") is not None for x in receivers
    )


def speaker_pids(state_dir: Path) -> list[int]:
    pids = []
    for name in ("exabgp.pid", "bird.pid"):
        path = state_dir / "bgp" / name
        with contextlib.suppress(OSError, ValueError, IndexError):
            pids.append(int(path.read_text().split()[0]))
    return pids


def run_agents(n: int, topology: str, samples: int, root: Path) -> dict[str, Any]:
    from tortie.bgp.status import fetch_status
    from tortie.datastore.factory import open_datastore
    from tortie.ipam.client import IPAM
    from tortie.lab.builder import lab_up
    from tortie.lab.ops import open_lab
    from tortie.lab.registry import LabPaths
    from tortie.lab.teardown import lab_down
    from tortie.lab.topology import LabOptions

    paths = LabPaths(root=root)
    name = f"bench-{topology}-{n}"
    options = LabOptions(
        name=name,
        nodes=n,
        mode="bgp",
        route_reflectors=2 if topology == "rr" else 0,
        agents=True,
    )
    monitors: dict[str, RouteMonitor] = {}
    try:
        t0 = time.monotonic()
        state = lab_up(options, paths)
        up_s = time.monotonic() - t0
        lab = open_lab(paths, name)
        nodes = [node.name for node in lab.topology.nodes]
        netns = {node.name: node.netns for node in lab.topology.nodes}
        block_of = {
            p.node: IPv4Network(f"{lab.address(p.name)}/26", strict=False)
            for p in lab.topology.pods
        }

        def all_installed() -> bool:
            return all(kernel_prefixes(netns[a]) >= {block_of[b] for b in nodes} for a in nodes)

        wait_for(all_installed, 120, "every block on every node", step=0.05)
        routes_s = time.monotonic() - t0
        for node in nodes:
            monitors[node] = RouteMonitor(netns[node])
        time.sleep(1.0)  # monitors attached, start-up passes done
        store = open_datastore(lab.state.datastore or "")
        ipam = IPAM(store)
        rng = random.Random(6)
        used: set[IPv4Network] = set()
        announce_ms: list[float] = []
        claim_ms: list[float] = []
        try:
            for k in range(samples):
                origin = rng.choice(nodes)
                taken = {IPv4Network(a.cidr) for a in ipam.block_affinities()}
                block = fresh_block(taken, used)
                used.add(block)
                claimed = time.time()
                ipam.assign(node=origin, handle=f"bench.{k}", ip=block.network_address + 1)
                receivers = [x for x in nodes if x != origin]
                wait_for(
                    partial(everywhere, monitors, block, origin, receivers),
                    15,
                    f"sample {k}",
                    step=0.01,
                )
                announced = monitors[origin].seen(block, "blackhole")
                assert announced is not None
                for x in receivers:
                    got = monitors[x].seen(block, "via")
                    assert got is not None
                    announce_ms.append((got - announced) * 1000)
                    claim_ms.append((got - claimed) * 1000)
                time.sleep(0.1)
        finally:
            store.close()
        sessions, remote = [], []
        rss = []
        for node in nodes:
            state_dir = Path(lab.state.nodes[node].state_dir)
            sessions.append(sum(1 for p in fetch_status(state_dir / "bgp") if p.state == "up"))
            remote.append(remote_routes(netns[node]))
            agent = json.loads((state_dir / "status.json").read_text())["pid"]
            rss.append(
                rss_kib(agent, False) + sum(rss_kib(pid, True) for pid in speaker_pids(state_dir))
            )
        return {
            "level": "agent",
            "nodes": n,
            "topology": topology,
            "lab_up_s": round(up_s, 2),
            "lab_up_phases_s": {k: v for k, v in state.timings.items() if k in ("agents", "pods")},
            "up_to_all_routes_s": round(routes_s, 2),
            "announce_to_kernel_ms_p50": round(percentile(announce_ms, 0.50), 1),
            "announce_to_kernel_ms_p99": round(percentile(announce_ms, 0.99), 1),
            "claim_to_kernel_ms_p50": round(percentile(claim_ms, 0.50), 1),
            "claim_to_kernel_ms_p99": round(percentile(claim_ms, 0.99), 1),
            "samples": len(announce_ms),
            "sessions_per_node": f"{min(sessions)}..{max(sessions)}",
            "remote_routes_per_node": f"{min(remote)}..{max(remote)}",
            "rss_mib_per_node": round(statistics.mean(rss) / 1024, 1),
        }
    finally:
        for monitor in monitors.values():
            monitor.stop()
        if paths.lab_dir(name).exists():
            lab_down(paths, name)


def print_agent_result(result: dict[str, Any]) -> None:
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in result["lab_up_phases_s"].items())
    print(
        f"{result['nodes']:3d} nodes {result['topology']:4s} (agents, lab): "
        f"lab up {result['lab_up_s']:.2f} s ({phases}), all routes in every kernel "
        f"{result['up_to_all_routes_s']:.2f} s after start; new block announce->kernel "
        f"p50 {result['announce_to_kernel_ms_p50']:.1f} ms "
        f"p99 {result['announce_to_kernel_ms_p99']:.1f} ms, claim->kernel "
        f"p50 {result['claim_to_kernel_ms_p50']:.1f} ms "
        f"p99 {result['claim_to_kernel_ms_p99']:.1f} ms ({result['samples']} samples), "
        f"sessions/node {result['sessions_per_node']}, "
        f"remote routes/node {result['remote_routes_per_node']}, "
        f"RSS/node (agent+speaker) {result['rss_mib_per_node']} MiB",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--level", default="speaker,agent", help="speaker, agent or both")
    parser.add_argument("--nodes", default="10,20", help="speaker level: node counts")
    parser.add_argument("--agent-nodes", default="10", help="agent level: node counts")
    parser.add_argument("--topologies", default="mesh,rr")
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args()
    levels = args.level.split(",")
    if "agent" in levels:
        with tempfile.TemporaryDirectory(prefix="tortie-bench-bgp-") as root:
            for n in (int(x) for x in args.agent_nodes.split(",")):
                for topology in args.topologies.split(","):
                    result = run_agents(n, topology, args.samples, Path(root))
                    if args.json:
                        print(json.dumps(result), flush=True)
                    else:
                        print_agent_result(result)
    if "speaker" not in levels:
        return
    for n in (int(x) for x in args.nodes.split(",")):
        for topology in args.topologies.split(","):
            result = run(n, topology, args.samples)
            if args.json:
                print(json.dumps(result), flush=True)
            else:
                print(
                    f"{n:3d} nodes {topology:4s}: "
                    f"converged {result['start_to_converged_s']:6.2f} s, "
                    f"propagation p50 {result['propagation_ms_p50']:6.1f} ms "
                    f"p99 {result['propagation_ms_p99']:6.1f} ms ({result['samples']} samples), "
                    f"sessions/node {result['sessions_per_node']}, "
                    f"routes/node {result['learned_routes_per_node']}, "
                    f"RSS/node ExaBGP {result['rss_mib_exabgp_node']} MiB"
                    + (
                        f", BIRD {result['rss_mib_bird_node']} MiB"
                        if "rss_mib_bird_node" in result
                        else ""
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
