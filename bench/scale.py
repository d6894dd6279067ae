"""Scale on paper: routes and BGP sessions per node against cluster size, by tortie's own code.

Run:  .venv/bin/python bench/scale.py [--sizes 10,50,100,200] [--scenario-nodes 100]
      [--json FILE]          (no root, no kernel: pure computation, about a minute)

The machine cannot host 5,000 nodes, so the cluster is simulated: real block IPAM
(:class:`tortie.ipam.client.IPAM` over :class:`tortie.datastore.memory.MemoryDatastore`, /26
blocks, one IPIP tunnel address per node as Calico's default install takes) assigns every
pod's address; the agent's real route calculation (:func:`tortie.agent.desired.compute_routes`,
fed exactly as the agent's loop feeds it: confirmed block affinities, borrowed addresses as
/32s, local workloads) gives each node's route table; Calico's peering rules as tortie applies
them (:func:`tortie.bgp.peering.compute_speaker_config`) give each node's BGP sessions, for the
full mesh and with 2 route reflectors (mesh off, the ``peer-with-route-reflectors`` BGPPeer).

Simulated IPAM is slow beyond a few hundred nodes (claiming a block reads every block: the
simulation is quadratic), so route counts are *simulated* up to ``--sizes`` and *computed by
the exact formula* beyond (:func:`formula_routes`); at every simulated size the formula is
checked against the simulation and the result says whether they agree. Sessions are computed
by the real peering code at every size (it is linear).

Scenarios at ``--scenario-nodes`` nodes (the seed's second drawback: the route count depends
on how pods are spread over hosts): an even spread, a skewed spread with the same number of
pods, full nodes (110 pods, Kubernetes' default maximum), churn (nodes that peaked at 100 pods
now hold 30), a pool with fewer blocks than nodes (borrowing: every borrowed address is a /32
on every other node; with ``strictAffinity`` the pods get no address instead), and
``maxBlocksPerHost: 1`` with the skewed spread.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

BLOCK_PREFIX = 26
BLOCK_ADDRESSES = 1 << (32 - BLOCK_PREFIX)
BIG_POOL = "10.0.0.0/12"  # 16,384 /26 blocks: room for 5,000 nodes at 3 blocks each
DEFAULT_SIZES = (10, 50, 100, 200)
FORMULA_SIZES = (500, 1000, 2000, 5000)
PODS_PER_NODE = 30
FULL_NODE_PODS = 110  # Kubernetes' default --max-pods
REFLECTORS = 2
MAX_PODS = 110


# -- the exact formulas -------------------------------------------------------------------------
def blocks_for(pods: int, tunnel: bool = True) -> int:
    """/26 blocks a node claims for ``pods`` pods (and its tunnel address): ample pool, no
    churn, no block limit. A node with no address at all claims no block."""
    return math.ceil((pods + int(tunnel)) / BLOCK_ADDRESSES)


@dataclass(frozen=True)
class RouteCount:
    """One node's route table, by kind (what :func:`compute_routes` returns, counted)."""

    remote_blocks: int  # <block> via <node> (one per block of every other node)
    remote_hosts: int  # /32s of addresses other nodes borrowed
    blackholes: int  # this node's own blocks
    workloads: int  # this node's pods: <ip>/32 dev cali...

    @property
    def remote(self) -> int:
        """Routes to other nodes' pods: what BGP distributes and what grows with the cluster."""
        return self.remote_blocks + self.remote_hosts

    @property
    def total(self) -> int:
        return self.remote + self.blackholes + self.workloads


def formula_routes(pods: Sequence[int], node: int, tunnel: bool = True) -> RouteCount:
    """Node ``node``'s routes when every node claims :func:`blocks_for` its pods (ample pool)."""
    blocks = [blocks_for(p, tunnel) if p or tunnel else 0 for p in pods]
    return RouteCount(
        remote_blocks=sum(blocks) - blocks[node],
        remote_hosts=0,
        blackholes=blocks[node],
        workloads=pods[node],
    )


def formula_even(nodes: int, pods: int, pool_blocks: int | None = None) -> dict[str, Any]:
    """Routes per node, even spread of ``pods`` per node (+ a tunnel address each).

    ``pool_blocks`` None: an ample pool. Otherwise (one block holds a node's addresses) the
    first ``pool_blocks`` nodes get a block and every later node borrows all its addresses
    from them: each borrowed address is a /32 on every other node. ``exhausted`` when the
    pool has fewer addresses than the cluster needs.
    """
    per_node = pods + 1
    b = blocks_for(pods)
    if pool_blocks is None or pool_blocks >= nodes * b:
        remote = (nodes - 1) * b
        return {
            "remote_min": remote,
            "remote_max": remote,
            "borrowed": 0,
            "exhausted": False,
            "owners": nodes,
        }
    if b != 1:
        raise ValueError("the short-pool formula assumes one block holds a node's addresses")
    owners = min(nodes, pool_blocks)
    borrowers = nodes - owners
    borrowed = borrowers * per_node
    owner_remote = (owners - 1) + borrowed
    borrower_remote = owners + borrowed - per_node
    return {
        "remote_min": min(owner_remote, borrower_remote) if borrowers else owner_remote,
        "remote_max": max(owner_remote, borrower_remote) if borrowers else owner_remote,
        "borrowed": borrowed,
        "exhausted": pool_blocks * BLOCK_ADDRESSES < nodes * per_node,
        "owners": owners,
    }


def formula_sessions(nodes: int, reflectors: int = REFLECTORS) -> dict[str, int]:
    """BGP sessions: full mesh, and reflectors (every node peers with each reflector)."""
    r = min(reflectors, nodes)
    return {
        "mesh_per_node": nodes - 1,
        "mesh_total": nodes * (nodes - 1) // 2,
        "rr_client": r,
        "rr_reflector": nodes - 1,
        "rr_total": r * (nodes - r) + r * (r - 1) // 2,
    }


# -- the simulation (tortie's IPAM, route calculation and peering) ------------------------------
def node_name(i: int) -> str:
    return f"node{i + 1:04d}"


def node_ip(i: int) -> IPv4Interface:
    """Underlay addresses 172.16.0.0/12: everyone on one L2 segment (IPIP Always anyway)."""
    return IPv4Interface((int(IPv4Address("172.16.0.2")) + i, 12))


@dataclass
class Cluster:
    """A simulated cluster: the datastore, its IPAM, and what the assignments gave."""

    nodes: int
    pool: str
    ipam: Any
    failed: int = 0  # pod assignments that found no address (exhausted)
    seconds: float = 0.0
    pods: list[int] = field(default_factory=list)  # addresses each node's pods hold now


def make_cluster(
    nodes: int, pool: str, *, strict: bool = False, max_blocks: int = 0, seed: int = 9
) -> Cluster:
    from tortie.datastore.memory import MemoryDatastore
    from tortie.datastore.resources import ResourceStore
    from tortie.ipam.client import IPAM
    from tortie.model.resources import IPPool, Node

    store = MemoryDatastore()
    docs: list[Any] = [
        IPPool.from_document(
            {
                "apiVersion": "projectcalico.org/v3",
                "kind": "IPPool",
                "metadata": {"name": "default-ipv4-ippool"},
                "spec": {"cidr": pool, "blockSize": BLOCK_PREFIX, "ipipMode": "Always"},
            }
        )
    ]
    docs += [
        Node.from_document(
            {
                "apiVersion": "projectcalico.org/v3",
                "kind": "Node",
                "metadata": {"name": node_name(i)},
                "spec": {"bgp": {"ipv4Address": str(node_ip(i))}},
            }
        )
        for i in range(nodes)
    ]
    ResourceStore(store).apply(docs)
    ipam = IPAM(store, rng=random.Random(seed))
    ipam.configure(strict_affinity=strict, max_blocks_per_host=max_blocks)
    return Cluster(nodes, pool, ipam, pods=[0] * nodes)


def assign(cluster: Cluster, node: int, handle: str, count: int) -> list[Any]:
    """``count`` addresses for ``handle`` on ``node``; on exhaustion as many as one at a time
    can get (a failed multi-address assignment assigns nothing)."""
    from tortie.ipam.errors import ExhaustedError
    from tortie.model.naming import pod_handle

    if count <= 0:
        return []
    got: list[Any]
    try:
        got = cluster.ipam.assign(node=node_name(node), handle=pod_handle(handle), count=count)
    except ExhaustedError:
        got = []
        for k in range(count):
            try:
                got += cluster.ipam.assign(node=node_name(node), handle=pod_handle(f"{handle}-{k}"))
            except ExhaustedError:
                cluster.failed += 1
    cluster.pods[node] += len(got)
    return got


def populate(cluster: Cluster, pods: Sequence[int]) -> None:
    """Tunnel addresses first (the agents start before pods), then every node's pods."""
    from tortie.ipam.errors import ExhaustedError

    start = time.perf_counter()
    for i in range(cluster.nodes):
        try:
            cluster.ipam.ensure_tunnel_address(node_name(i))
        except ExhaustedError:
            cluster.failed += 1
    for i, p in enumerate(pods):
        assign(cluster, i, f"{node_name(i)}-pods", p)
    cluster.seconds += time.perf_counter() - start


def churn(cluster: Cluster, peak: int, keep: int, batch: int, seed: int) -> None:
    """Every node runs ``peak`` pods (in deployments of ``batch``), then deployments go away
    at random until ``keep`` pods remain; empty blocks are released (as GC would)."""
    rng = random.Random(seed)
    start = time.perf_counter()
    for i in range(cluster.nodes):
        cluster.ipam.ensure_tunnel_address(node_name(i))
    from tortie.model.naming import pod_handle

    for i in range(cluster.nodes):
        handles = [f"{node_name(i)}-d{k}" for k in range(peak // batch)]
        for h in handles:
            assign(cluster, i, h, batch)
        for h in rng.sample(handles, (peak - keep) // batch):
            cluster.pods[i] -= len(cluster.ipam.release_by_handle(pod_handle(h)))
    cluster.ipam.release_empty_blocks(grace=0)
    cluster.seconds += time.perf_counter() - start


def route_counts(cluster: Cluster) -> list[RouteCount]:
    """Every node's routes by the agent's calculation (as its routes manager feeds it)."""
    from tortie.agent.desired import LocalNode, PoolInfo, RemotePrefix, Workload, compute_routes

    start = time.perf_counter()
    ipam, pods = cluster.ipam, cluster.pods
    pools = [PoolInfo(IPv4Network(cluster.pool), ipip_mode="Always")]
    ips = {node_name(i): node_ip(i) for i in range(cluster.nodes)}
    affinities = [(a.node, IPv4Network(a.cidr)) for a in ipam.block_affinities()]
    borrowed = [(IPv4Network(f"{b.ip}/32"), b.borrowing_node) for b in ipam.borrowed()]
    out = []
    for i in range(cluster.nodes):
        me = node_name(i)
        local = [cidr for node, cidr in affinities if node == me]
        remote = [RemotePrefix(cidr, ips[node].ip) for node, cidr in affinities if node != me]
        remote += [RemotePrefix(net, ips[node].ip) for net, node in borrowed if node != me]
        # Workload /32s: one per pod (their interfaces are irrelevant to the count).
        workloads = [
            Workload(IPv4Network(f"192.0.{k // 256}.{k % 256}/32"), f"cali{k}")
            for k in range(pods[i])
        ]
        routes = compute_routes(LocalNode(me, ips[me], "eth0"), pools, local, remote, workloads)
        kinds = {"blocks": 0, "hosts": 0, "blackholes": 0}
        for dst, spec in routes.routes.items():
            if spec.type.name == "BLACKHOLE":
                kinds["blackholes"] += 1
            elif dst.prefixlen == 32:
                kinds["hosts"] += 1
            else:
                kinds["blocks"] += 1
        hosts = kinds["hosts"] - pods[i]
        out.append(RouteCount(kinds["blocks"], hosts, kinds["blackholes"], pods[i]))
    cluster.seconds += time.perf_counter() - start
    return out


def summarize(cluster: Cluster, counts: Sequence[RouteCount]) -> dict[str, Any]:
    remote = [c.remote for c in counts]
    return {
        "nodes": cluster.nodes,
        "remote_min": min(remote),
        "remote_median": statistics.median(remote),
        "remote_max": max(remote),
        "remote_hosts_max": max(c.remote_hosts for c in counts),
        "total_max": max(c.total for c in counts),
        "blocks": len(cluster.ipam.block_affinities()),
        "borrowed": len(cluster.ipam.borrowed()),
        "failed": cluster.failed,
        "pods_placed": sum(cluster.pods),
        "seconds": round(cluster.seconds, 2),
    }


def sessions(nodes: int) -> dict[str, int]:
    """Sessions per node by tortie's peering code: mesh, and a reflector client/reflector."""
    from tortie.bgp.peering import compute_speaker_config
    from tortie.lab.manifests import mesh_off, peer_with_route_reflectors
    from tortie.model.resources import Node

    def node(i: int, rr: bool) -> Node:
        bgp: dict[str, Any] = {"ipv4Address": str(node_ip(i))}
        labels = {}
        if rr:
            bgp["routeReflectorClusterID"] = "244.0.0.1"
            labels["route-reflector"] = "true"
        return Node.from_document(
            {
                "apiVersion": "projectcalico.org/v3",
                "kind": "Node",
                "metadata": {"name": node_name(i), "labels": labels},
                "spec": {"bgp": bgp},
            }
        )

    mesh_nodes = [node(i, False) for i in range(nodes)]
    rr_nodes = [node(i, i < REFLECTORS) for i in range(nodes)]
    config = mesh_off()
    peer = peer_with_route_reflectors()
    last = node_name(nodes - 1)

    def count(name: str, all_nodes: list[Node], configs: list[Any], peers: list[Any]) -> int:
        return len(compute_speaker_config(name, all_nodes, configs, peers).config.peers)

    return {
        "mesh_per_node": count(last, mesh_nodes, [], []),
        "rr_client": count(last, rr_nodes, [config], [peer]) if nodes > REFLECTORS else 0,
        "rr_reflector": count(node_name(0), rr_nodes, [config], [peer]),
    }


# -- scenarios ------------------------------------------------------------------------------------
def skewed(nodes: int, mean: int, seed: int, cap: int = MAX_PODS) -> list[int]:
    """A heavy-tailed spread with about ``mean`` pods per node (Pareto weights, capped)."""
    rng = random.Random(seed)
    weights = [rng.paretovariate(1.3) for _ in range(nodes)]
    scale = mean * nodes / sum(weights)
    pods = [min(cap, round(w * scale)) for w in weights]
    # Put back what the cap took, on the nodes with room, largest first.
    short = mean * nodes - sum(pods)
    for i in sorted(range(nodes), key=lambda k: -pods[k]):
        if short <= 0:
            break
        add = min(cap - pods[i], short)
        pods[i] += add
        short -= add
    return pods


def short_pool(nodes: int, per_node: int) -> tuple[str, int]:
    """The smallest power-of-two pool with 30 % more addresses than the cluster needs; it has
    fewer blocks than nodes when nodes hold few pods (the borrowing case)."""
    need = nodes * (per_node + 1) * 1.3
    blocks = 2 ** math.ceil(math.log2(max(1.0, need / BLOCK_ADDRESSES)))
    prefix = BLOCK_PREFIX - int(math.log2(blocks))
    return f"10.{64}.0.0/{prefix}", blocks


@dataclass
class Scenario:
    key: str
    label: str
    pods: list[int]
    pool: str = BIG_POOL
    strict: bool = False
    max_blocks: int = 0
    churn: tuple[int, int, int] | None = None  # peak, keep, batch
    formula: dict[str, Any] | None = field(default=None)
    # The borrowing formula is a lower bound: it assumes every block owner's own pods fit in
    # its block, but borrowers (their tunnel addresses come first) may have filled it, and
    # the owner then borrows too. The simulation shows by how much.
    tolerance: float = 0.0


def scenarios(nodes: int, seed: int = 9) -> list[Scenario]:
    mean = PODS_PER_NODE
    spread = skewed(nodes, mean, seed)
    pool, pool_blocks = short_pool(nodes, mean)
    even = [mean] * nodes
    out = [
        Scenario("even", f"even: {mean} pods on every node", even),
        Scenario(
            "skewed",
            f"skewed: same {mean * nodes:,} pods, heavy-tailed "
            f"({min(spread)}..{max(spread)} per node)",
            spread,
        ),
        Scenario(
            "full", f"full nodes: {FULL_NODE_PODS} pods on every node", [FULL_NODE_PODS] * nodes
        ),
        Scenario(
            "churn",
            f"churn: every node peaked at 100 pods, now holds {mean} "
            "(deployments of 10 deleted at random, empty blocks released)",
            even,
            churn=(100, mean, 10),
        ),
        Scenario(
            "borrow",
            f"pool {pool} ({pool_blocks} blocks < {nodes} nodes): borrowing",
            even,
            pool=pool,
        ),
        Scenario(
            "strict", f"pool {pool} with strictAffinity: no borrowing", even, pool=pool, strict=True
        ),
        Scenario("maxblocks", "skewed spread with maxBlocksPerHost: 1", spread, max_blocks=1),
    ]
    for s in out:
        if s.key in ("even", "full"):
            s.formula = formula_even(nodes, s.pods[0])
        elif s.key == "borrow":
            s.formula = formula_even(nodes, mean, pool_blocks)
            s.tolerance = 0.02
        elif s.key == "skewed":
            counts = [formula_routes(s.pods, i).remote for i in range(nodes)]
            s.formula = {"remote_min": min(counts), "remote_max": max(counts), "borrowed": 0}
    return out


def run_scenario(s: Scenario, nodes: int) -> dict[str, Any]:
    cluster = make_cluster(nodes, s.pool, strict=s.strict, max_blocks=s.max_blocks)
    if s.churn is not None:
        peak, keep, batch = s.churn
        churn(cluster, peak, keep, batch, seed=5)
    else:
        populate(cluster, s.pods)
    result = summarize(cluster, route_counts(cluster))
    result.update(key=s.key, label=s.label, pool=s.pool, pods=sum(s.pods))
    if s.formula is not None:
        result["formula"] = s.formula
        result.update(compare(s.formula, result, s.tolerance))
    return result


def compare(formula: dict[str, Any], sim: dict[str, Any], tolerance: float) -> dict[str, Any]:
    """Whether the simulation matches the formula: exactly, or within ``tolerance`` (relative)
    on route counts and borrowed addresses; ``formula_exact`` says which."""
    keys = ("remote_min", "remote_max", "borrowed")
    want = {k: formula.get(k, 0) for k in keys}
    exact = all(sim[k] == want[k] for k in keys)
    close = all(abs(sim[k] - want[k]) <= tolerance * max(1, want[k]) for k in keys)
    return {
        "formula_agrees": exact or close,
        "formula_exact": exact,
        "formula_delta_borrowed": sim["borrowed"] - want["borrowed"],
    }


def by_size(sizes: Sequence[int], formula_sizes: Sequence[int], log: Any) -> list[dict[str, Any]]:
    """Routes per node (even spread: 30 and 110 pods) and sessions, against cluster size."""
    rows = []
    for n in sorted({*sizes, *formula_sizes}):
        simulate = n in sizes
        row: dict[str, Any] = {"nodes": n, "how": "simulated" if simulate else "formula"}
        for pods in (PODS_PER_NODE, FULL_NODE_PODS):
            f = formula_even(n, pods)
            entry: dict[str, Any] = {
                "remote": f["remote_max"],
                "total": f["remote_max"] + blocks_for(pods) + pods,
            }
            if simulate:
                cluster = make_cluster(n, BIG_POOL)
                populate(cluster, [pods] * n)
                sim = summarize(cluster, route_counts(cluster))
                entry = {
                    "remote": sim["remote_max"],
                    "total": sim["total_max"],
                    "seconds": sim["seconds"],
                    "formula_agrees": sim["remote_min"] == sim["remote_max"] == f["remote_max"],
                }
            row[f"routes_{pods}"] = entry
        t0 = time.perf_counter()
        row["sessions"] = sessions(n)
        row["sessions_seconds"] = round(time.perf_counter() - t0, 2)
        row["sessions_formula_agrees"] = all(
            row["sessions"][k] == formula_sessions(n)[k] for k in row["sessions"]
        )
        row["session_totals"] = {k: v for k, v in formula_sessions(n).items() if "total" in k}
        log(
            f"  {n:5d} nodes ({row['how']}): routes/node {row[f'routes_{PODS_PER_NODE}']['remote']}"
            f" at {PODS_PER_NODE} pods, {row[f'routes_{FULL_NODE_PODS}']['remote']} at "
            f"{FULL_NODE_PODS}; sessions mesh {row['sessions']['mesh_per_node']}, "
            f"RR client {row['sessions']['rr_client']}"
        )
        rows.append(row)
    return rows


def default_pool_note() -> dict[str, Any]:
    """Calico's default pool 192.168.0.0/16 (1,024 /26 blocks), 30 pods per node: the formula
    at the sizes where blocks run out and the pool is exhausted."""
    rows = []
    for n in (1000, 1024, 1500, 2000, 2114, 2200):
        f = formula_even(n, PODS_PER_NODE, pool_blocks=1024)
        rows.append({"nodes": n, **f})
    return {"pool": "192.168.0.0/16", "blocks": 1024, "pods_per_node": PODS_PER_NODE, "rows": rows}


def run(args: argparse.Namespace, log: Any = print) -> dict[str, Any]:
    started = time.perf_counter()
    log(f"scale: simulated sizes {','.join(map(str, args.sizes))}, formula beyond")
    sizes = by_size(args.sizes, args.formula_sizes, log)
    log(f"scale: pod spread and borrowing at {args.scenario_nodes} nodes")
    spread = []
    for s in scenarios(args.scenario_nodes):
        r = run_scenario(s, args.scenario_nodes)
        agrees = r.get("formula_agrees")
        log(
            f"  {s.key:9s} routes/node {r['remote_min']}..{r['remote_max']}, blocks "
            f"{r['blocks']}, borrowed {r['borrowed']}, failed {r['failed']}"
            + ("" if agrees is None else f", formula {'agrees' if agrees else 'DIFFERS'}")
            + f" ({r['seconds']:.1f} s)"
        )
        spread.append(r)
    return {
        "command": command_line(args),
        "block_prefix": BLOCK_PREFIX,
        "pods_per_node": PODS_PER_NODE,
        "reflectors": REFLECTORS,
        "sizes": sizes,
        "scenario_nodes": args.scenario_nodes,
        "scenarios": spread,
        "default_pool": default_pool_note(),
        "seconds": round(time.perf_counter() - started, 1),
    }


def command_line(args: argparse.Namespace) -> str:
    return (
        f".venv/bin/python bench/scale.py --sizes {','.join(map(str, args.sizes))} "
        f"--formula-sizes {','.join(map(str, args.formula_sizes))} "
        f"--scenario-nodes {args.scenario_nodes}"
    )


def int_list(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        type=int_list,
        default=DEFAULT_SIZES,
        help="cluster sizes to simulate with the real IPAM",
    )
    parser.add_argument(
        "--formula-sizes",
        type=int_list,
        default=FORMULA_SIZES,
        help="larger sizes, computed by the exact formula",
    )
    parser.add_argument("--scenario-nodes", type=int, default=100)
    parser.add_argument("--json", metavar="FILE")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import report

    print(report.render_scale(result))
    bad = [
        r
        for r in result["sizes"]
        for k in ("routes_30", "routes_110")
        if r[k].get("formula_agrees") is False
    ]
    bad += [s for s in result["scenarios"] if s.get("formula_agrees") is False]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
