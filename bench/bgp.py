"""BGP convergence and propagation: 10 and 20 nodes, full mesh and with 2 route reflectors.

Each configuration is a namespace lab (one bridge, one namespace per node, ``tt<hex>``
names, removed at the end). Every node runs its real speaker with the config
:func:`tortie.bgp.peering.compute_speaker_config` gives it: ExaBGP on ordinary nodes, BIRD 2
on the reflectors (nodes 1 and 2, one cluster; mesh off, Calico's
``peer-with-route-reflectors`` BGPPeer). Measured:

- start: from starting every speaker (each announcing its /26) to every node having
  learned every other node's block;
- propagation: a new prefix announced on a random node -> the learned-route event on each
  other node (p50, p99 over all receivers of all samples);
- sessions and learned routes per node, and memory per node (RSS of the speaker and, for
  ExaBGP, its helper).

This is the speaker layer: the event the agent receives. Installing the route in the kernel
is the agent's part and adds its own time (netlink, a few ms).

Run (root):  .venv/bin/python bench/bgp.py [--nodes 10,20] [--topologies mesh,rr] [--samples 30]
Target (issue 6): a new block in every other node's kernel within 200 ms p50 on a 10-node mesh.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import sys
import threading
import time
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "netns" / "bgp"))
from bgp_lab import block, lab, node_ip, wait_for

from tortie.bgp.bird import BirdSpeaker
from tortie.bgp.exabgp import ExaBGPSpeaker
from tortie.bgp.peering import compute_speaker_config
from tortie.bgp.types import RouteAdded, SpeakerEvent
from tortie.model.resources import BGPConfiguration, BGPPeer, Node

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
    config = BGPConfiguration.from_document(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "BGPConfiguration",
            "metadata": {"name": "default"},
            "spec": {"nodeToNodeMeshEnabled": False},
        }
    )
    recipe = BGPPeer.from_document(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "BGPPeer",
            "metadata": {"name": "peer-with-route-reflectors"},
            "spec": {"nodeSelector": "all()", "peerSelector": "route-reflector == 'true'"},
        }
    )
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
            the_lab.cleanups.append(lambda sp=sp: sp.stop(withdraw=False, timeout=3))
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
                lambda p=prefix, r=receivers: all((i, p) in rec.first for i in r),
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="10,20")
    parser.add_argument("--topologies", default="mesh,rr")
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args()
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
