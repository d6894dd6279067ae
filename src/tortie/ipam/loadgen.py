"""Concurrent IPAM load from many processes: what ``bench/ipam.py`` and the tests run.

Problem: IPAM's promises (no address handed out twice, release frees exactly what was
assigned, addresses stay in the node's own blocks unless borrowed) only matter under
concurrency: several nodes, several processes each, one datastore. This module drives that
load and collects what every process saw, so tests can judge it and the benchmark can time it.

Workloads:
- :func:`churn_worker`: assign (1..``max_count`` addresses per handle) and release (by handle
  or by address, at random) until ``operations`` are done, holding at most ``hold`` handles;
  exhaustion is expected and counted. Each release is compared with what was assigned.
- :func:`assign_worker`: ``operations`` single-address assignments as fast as possible.

Invariants: every worker opens its own datastore (never inherited across a fork; processes
are spawned), and all workers start together at a barrier so the load overlaps.

Hazard: this is test and benchmark tooling; it writes IPPools, Nodes and IPAM state into the
datastore it is given. Never point it at a datastore that matters.
"""

from __future__ import annotations

import ipaddress
import multiprocessing
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tortie.datastore.api import Datastore
from tortie.datastore.factory import open_datastore
from tortie.datastore.resources import ResourceStore
from tortie.ipam.client import IPAM
from tortie.ipam.errors import ExhaustedError
from tortie.model.ipam import ATTR_NAMESPACE, ATTR_POD, IPAddress, host_affinity
from tortie.model.naming import pod_handle
from tortie.model.resources import IPPool, Node, WorkloadEndpoint, workload_endpoint_name

S = TypeVar("S")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    url: str
    node: str
    worker: int
    operations: int
    seed: int
    hold: int = 20
    max_count: int = 2


@dataclass(slots=True)
class WorkerResult:
    node: str
    worker: int
    held: dict[str, list[str]] = field(default_factory=dict)  # handle -> addresses at the end
    assigned: int = 0  # addresses
    released: int = 0
    exhausted: int = 0
    seconds: float = 0.0
    start: float = 0.0  # time.monotonic() at the start (system-wide on Linux)
    errors: list[str] = field(default_factory=list)  # broken promises seen by this worker


def prepare(
    store: Datastore,
    *,
    pools: Sequence[tuple[str, str, int]],
    nodes: Sequence[str],
    strict_affinity: bool = False,
    max_blocks_per_host: int = 20,
) -> None:
    """Write pools ``(name, cidr, block size)``, Nodes and the IPAM configuration."""
    docs: list[Any] = [
        IPPool.from_document(
            {
                "apiVersion": "projectcalico.org/v3",
                "kind": "IPPool",
                "metadata": {"name": name},
                "spec": {"cidr": cidr, "blockSize": size},
            }
        )
        for name, cidr, size in pools
    ]
    docs += [
        Node.from_document(
            {"apiVersion": "projectcalico.org/v3", "kind": "Node", "metadata": {"name": n}}
        )
        for n in nodes
    ]
    ResourceStore(store).apply(docs)
    IPAM(store).configure(strict_affinity=strict_affinity, max_blocks_per_host=max_blocks_per_host)


def _handle(spec: WorkerSpec, i: int) -> str:
    return pod_handle(f"{spec.node}-w{spec.worker}-{i}")


def churn_worker(spec: WorkerSpec) -> WorkerResult:
    store = open_datastore(spec.url)
    rng = random.Random(spec.seed)
    ipam = IPAM(store, rng=random.Random(spec.seed + 1))
    result = WorkerResult(spec.node, spec.worker)
    held = result.held
    result.start = time.monotonic()
    try:
        for i in range(spec.operations):
            if held and (len(held) >= spec.hold or rng.random() < 0.3):
                handle = rng.choice(sorted(held))
                expect = held.pop(handle)
                if rng.random() < 0.5:
                    got = ipam.release_by_handle(handle)
                else:
                    got = ipam.release_ips(expect)
                result.released += len(got)
                if sorted(map(str, got)) != sorted(expect):
                    result.errors.append(f"release of {handle}: assigned {expect}, got {got}")
                continue
            handle = _handle(spec, i)
            count = rng.randint(1, spec.max_count)
            attrs = {ATTR_NAMESPACE: "load", ATTR_POD: handle.rsplit(".", 1)[-1]}
            try:
                ips = ipam.assign(node=spec.node, handle=handle, count=count, attrs=attrs)
            except ExhaustedError:
                result.exhausted += 1
                if ipam.addresses_for_handle(handle):
                    result.errors.append(f"failed assign of {handle} left addresses behind")
                continue
            if len(ips) != count:
                result.errors.append(f"{handle}: asked for {count}, got {ips}")
            held[handle] = [str(ip) for ip in ips]
            result.assigned += len(ips)
    finally:
        result.seconds = time.monotonic() - result.start
        store.close()
    return result


def assign_worker(spec: WorkerSpec) -> WorkerResult:
    store = open_datastore(spec.url)
    ipam = IPAM(store, rng=random.Random(spec.seed))
    result = WorkerResult(spec.node, spec.worker)
    result.start = time.monotonic()
    try:
        for i in range(spec.operations):
            ipam.assign(node=spec.node, handle=_handle(spec, i))
            result.assigned += 1
    finally:
        result.seconds = time.monotonic() - result.start
        store.close()
    return result


# -- running in parallel ----------------------------------------------------------------------
def _child(fn: Callable[[S], R], spec: S, index: int, barrier: Any, results: Any) -> None:
    barrier.wait()
    try:
        results.put((index, fn(spec), None))
    except BaseException as err:  # report, don't hang the parent waiting for a result
        results.put((index, None, f"{type(err).__name__}: {err}"))


def run_parallel(fn: Callable[[S], R], specs: Sequence[S], timeout: float = 600.0) -> list[R]:
    """Run ``fn(spec)`` for every spec, each in its own spawned process, started together.

    ``fn`` must be a module-level function (it is pickled by name). A child's exception is
    re-raised here as :class:`RuntimeError` naming the spec.
    """
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(specs))
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_child, args=(fn, spec, i, barrier, queue), daemon=True)
        for i, spec in enumerate(specs)
    ]
    for p in procs:
        p.start()
    out: dict[int, R] = {}
    failures: list[str] = []
    try:
        for _ in procs:
            index, value, error = queue.get(timeout=timeout)
            if error is not None:
                failures.append(f"worker {specs[index]}: {error}")
            else:
                out[index] = value
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    if failures:
        raise RuntimeError("; ".join(failures))
    return [out[i] for i in range(len(specs))]


# -- judging the outcome ----------------------------------------------------------------------
def violations(store: Datastore, results: Sequence[WorkerResult], max_blocks: int) -> list[str]:
    """Broken promises after a churn run (empty when all held). Reads the final state.

    - the workers' own findings (release returned something else than assigned, ...);
    - an address held by two handles, or held but not recorded so in its block;
    - an address outside its node's blocks, unless borrowed: then the node must own at
      least ``max_blocks`` blocks (it only borrows when it may not claim more).
    """
    ipam = IPAM(store)
    out = [e for r in results for e in r.errors]
    owner: dict[IPAddress, str] = {}
    node_of: dict[str, str] = {}
    for r in results:
        for handle, ips in r.held.items():
            node_of[handle] = r.node
            for text in ips:
                ip = ipaddress.ip_address(text)
                if ip in owner:
                    out.append(f"{ip} held by both {owner[ip]} and {handle}")
                owner[ip] = handle
    blocks = {b.value.cidr: b.value for b in ipam.store.blocks()}
    owned: dict[str, int] = {}
    for aff in ipam.block_affinities():
        owned[aff.node] = owned.get(aff.node, 0) + 1
    for ip, handle in owner.items():
        block = next((b for c, b in blocks.items() if ip in c), None)
        if block is None:
            out.append(f"{ip} of {handle} is in no block")
            continue
        attr = block.attribute_of(block.ordinal(ip))
        if attr is None or attr.handle_id != handle:
            out.append(f"{ip} of {handle} is recorded as {attr} in block {block.cidr}")
        node = node_of[handle]
        if block.affinity != host_affinity(node) and owned.get(node, 0) < max_blocks:
            out.append(
                f"{ip} of {handle} borrowed from {block.cidr} ({block.affinity}) while node "
                f"{node} owns only {owned.get(node, 0)} of {max_blocks} blocks"
            )
    recorded = sum(b.in_use for b in blocks.values())
    if recorded != len(owner):
        out.append(f"blocks record {recorded} allocations, workers hold {len(owner)}")
    return out


@dataclass(frozen=True, slots=True)
class ChurnOutcome:
    results: list[WorkerResult]
    violations: list[str]
    borrowed: int  # held addresses in blocks not affine to their node
    exhausted: int  # assign calls refused for lack of space

    @property
    def held(self) -> dict[str, list[str]]:
        return {h: ips for r in self.results for h, ips in r.held.items()}


def run_churn(
    url: str,
    *,
    nodes: Sequence[str],
    workers_per_node: int,
    operations: int,
    pool: tuple[str, int] = ("10.10.0.0/24", 28),
    max_blocks: int = 3,
    hold: int = 20,
    seed: int = 0,
) -> ChurnOutcome:
    """Prepare ``url`` (created if missing; pool, Nodes, config), run :func:`churn_worker`
    everywhere, judge it."""
    store = open_datastore(url, create=True)
    try:
        prepare(store, pools=[("churn", *pool)], nodes=nodes, max_blocks_per_host=max_blocks)
    finally:
        store.close()
    specs = [
        WorkerSpec(url, node, w, operations, seed=seed + 1000 * i + w, hold=hold)
        for i, node in enumerate(nodes)
        for w in range(workers_per_node)
    ]
    results = run_parallel(churn_worker, specs)
    store = open_datastore(url)
    try:
        return ChurnOutcome(
            results,
            violations(store, results, max_blocks),
            borrowed_count(store, results),
            sum(r.exhausted for r in results),
        )
    finally:
        store.close()


def write_endpoints(store: Datastore, results: Sequence[WorkerResult]) -> int:
    """Write the WorkloadEndpoint of every pod still held, as the CNI plugin would."""
    docs: list[Any] = []
    for r in results:
        for handle, ips in r.held.items():
            pod = handle.rsplit(".", 1)[-1]
            docs.append(
                WorkloadEndpoint.from_document(
                    {
                        "apiVersion": "projectcalico.org/v3",
                        "kind": "WorkloadEndpoint",
                        "metadata": {
                            "name": workload_endpoint_name(r.node, "k8s", pod, "eth0"),
                            "namespace": "load",
                        },
                        "spec": {
                            "node": r.node,
                            "pod": pod,
                            "interfaceName": "cali0",
                            "ipNetworks": [f"{ip}/32" for ip in ips],
                        },
                    }
                )
            )
    if docs:
        ResourceStore(store).apply(docs)
    return len(docs)


def settle(url: str, outcome: ChurnOutcome) -> list[str]:
    """After a churn run: endpoints for the live pods, then ``check`` must be clean; release
    everything, ``check`` clean again, and gc leaves no block, affinity or handle behind.
    Returns what went wrong (empty when all held)."""
    out: list[str] = []
    store = open_datastore(url)
    try:
        ipam = IPAM(store)
        write_endpoints(store, outcome.results)
        report = ipam.check()
        out += [f"check with live pods: {p.message}" for p in report.problems]
        for handle, ips in outcome.held.items():
            got = sorted(map(str, ipam.release_by_handle(handle)))
            if got != sorted(ips):
                out.append(f"final release of {handle}: held {ips}, released {got}")
        ipam_now = ipam.check()
        out += [
            f"check after releasing all: {p.message}"
            for p in ipam_now.problems
            if p.kind.value != "address-not-allocated"  # the endpoints are still there
        ]
        result = ipam.gc(grace=0)
        if result.released:
            out.append(f"gc released addresses nobody held: {result.released}")
        left = [b.value.cidr for b in ipam.store.blocks()]
        if left or ipam.block_affinities() or ipam.store.handles_lenient()[0]:
            out.append(f"state left after releasing everything: blocks {left}")
    finally:
        store.close()
    return out


def borrowed_count(store: Datastore, results: Sequence[WorkerResult]) -> int:
    """How many held addresses lie in blocks not affine to their node."""
    blocks = {b.value.cidr: b.value for b in IPAM(store).store.blocks()}
    n = 0
    for r in results:
        for ips in r.held.values():
            for text in ips:
                ip = ipaddress.ip_address(text)
                block = next((b for c, b in blocks.items() if ip in c), None)
                if block is not None and block.affinity != host_affinity(r.node):
                    n += 1
    return n
