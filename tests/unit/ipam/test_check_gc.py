"""Leak and consistency checks, and the guarded fixes of gc / release --from-report."""

from __future__ import annotations

import ipaddress

import pytest
from ipam_helpers import Cluster

from tortie.datastore.memory import MemoryDatastore
from tortie.ipam.check import CheckReport, ProblemKind
from tortie.ipam.client import IPAM
from tortie.ipam.clock import ManualClock
from tortie.ipam.errors import IPAMError
from tortie.model.ipam import (
    AffinityState,
    AllocationBlock,
    BlockAffinity,
    IPAMHandle,
    affinity_key,
    block_key,
    handle_key,
)
from tortie.model.naming import pod_handle

pytestmark = pytest.mark.unit

POOL = "10.0.0.0/24"
MIN15 = 15 * 60


@pytest.fixture(autouse=True)
def _base(cluster: Cluster) -> None:
    cluster.pool("p", POOL, block_size=28, ipipMode="Always")
    cluster.node("n1")
    cluster.node("n2")


def kinds(report: CheckReport) -> list[str]:
    return sorted(p.kind.value for p in report.problems)


def pod(ipam: IPAM, cluster: Cluster, node: str, name: str, endpoint: bool = True) -> str:
    [addr] = ipam.assign(
        node=node, handle=pod_handle(name), attrs={"namespace": "default", "pod": name}
    )
    if endpoint:
        cluster.endpoint(node, name, [str(addr)])
    return str(addr)


def test_a_healthy_cluster_is_clean(cluster: Cluster, ipam: IPAM) -> None:
    pod(ipam, cluster, "n1", "web-0")
    pod(ipam, cluster, "n2", "web-1")
    ipam.ensure_tunnel_address("n1")
    ipam.assign(node="n1", handle="manual")  # no pod: only its node must exist
    report = ipam.check()
    assert report.problems == ()
    assert report.counts["allocations"] == 4
    assert report.counts["workloadEndpoints"] == 2


def test_leaked_pod_address_is_released_only_after_the_grace_period(
    cluster: Cluster, ipam: IPAM, clock: ManualClock
) -> None:
    addr = pod(ipam, cluster, "n1", "gone", endpoint=False)
    [problem] = ipam.check().problems
    assert problem.kind is ProblemKind.LEAKED_ADDRESS
    assert (problem.ip, problem.handle) == (addr, pod_handle("gone"))
    assert "no workload endpoint uses it" in problem.message
    clock.advance(MIN15 - 1)
    young = ipam.gc()
    assert (young.released, young.waiting) == ([], 1)
    clock.advance(2)
    old = ipam.gc()
    assert [str(a) for a in old.released] == [addr]
    assert ipam.check().problems == ()


def test_stale_report_does_not_free_a_reused_address(
    cluster: Cluster, ipam: IPAM, clock: ManualClock
) -> None:
    addr = pod(ipam, cluster, "n1", "old", endpoint=False)
    report = CheckReport.from_json(ipam.check().to_json())  # saved to a file and read back
    ipam.release_by_handle(pod_handle("old"))
    ipam.assign(node="n1", handle=pod_handle("new"), ip=addr, attrs={"pod": "new"})
    cluster.endpoint("n1", "new", [addr])
    result = ipam.apply_report(report)
    assert result.released == []
    assert result.skipped == 1
    assert [str(a) for a in ipam.addresses_for_handle(pod_handle("new"))] == [addr]


def test_tunnel_and_node_bound_leaks(cluster: Cluster, ipam: IPAM) -> None:
    tunnel = ipam.ensure_tunnel_address("n2")
    ipam.assign(node="n2", handle="manual")
    cluster.delete_node("n2")
    report = ipam.check()
    assert kinds(report) == ["leaked-address", "leaked-address"]
    assert all("node n2 does not exist" in p.message for p in report.problems)
    cluster.node("n2", ipv4IPIPTunnelAddr="10.0.0.250")
    [p] = [p for p in ipam.check().problems if p.ip == str(tunnel)]
    assert "uses tunnel address 10.0.0.250" in p.message
    assert len(ipam.gc(grace=0).released) == 1  # the node is back: only the tunnel leaks


def test_handles_that_disagree_with_blocks_are_rewritten(
    cluster: Cluster, ipam: IPAM, store: MemoryDatastore
) -> None:
    pod(ipam, cluster, "n1", "a")
    pod(ipam, cluster, "n1", "b")
    [blk] = ipam.store.blocks()
    ghost = IPAMHandle("ghost").with_count(blk.value.cidr, 2)
    store.put(ghost.key, ghost.to_json())
    wrong = IPAMHandle(pod_handle("a")).with_count(blk.value.cidr, 5)
    store.put(wrong.key, wrong.to_json())
    store.delete(handle_key(pod_handle("b")))
    report = ipam.check()
    assert kinds(report) == [
        "handle-count-mismatch",
        "handle-count-mismatch",
        "handle-without-addresses",
    ]
    result = ipam.gc(grace=0)
    assert sorted(result.handles_fixed) == sorted(["ghost", pod_handle("a"), pod_handle("b")])
    assert ipam.check().problems == ()
    assert store.get(ghost.key) is None
    assert len(ipam.release_by_handle(pod_handle("b"))) == 1  # its record is back


def test_addresses_outside_pools_and_not_allocated(cluster: Cluster, ipam: IPAM) -> None:
    cluster.pool("q", "10.9.0.0/24")
    addr = pod(ipam, cluster, "n1", "a", endpoint=False)
    ipam.assign(node="n1", handle="x", pools=["q"])
    cluster.delete_pool("q")
    cluster.endpoint("n1", "a", [addr])
    cluster.endpoint("n1", "stray", ["192.168.7.7"])
    cluster.endpoint("n1", "unallocated", ["10.0.0.200"])
    report = ipam.check()
    assert kinds(report) == [
        "address-not-allocated",
        "address-outside-pools",
        "address-outside-pools",
    ]
    result = ipam.gc(grace=0)
    assert result.released == []  # these need a human
    assert result.skipped == 3


def test_two_owners(cluster: Cluster, ipam: IPAM, store: MemoryDatastore) -> None:
    addr = pod(ipam, cluster, "n1", "a")
    cluster.endpoint("n2", "b", [addr])  # a second endpoint claims a's address
    report = ipam.check()
    assert kinds(report) == ["address-with-two-owners", "address-with-two-owners"]
    assert any("used by 2 workload endpoints" in p.message for p in report.problems)
    assert any("allocated to pod default/a but endpoint" in p.message for p in report.problems)


def test_overlapping_blocks_are_two_owners(
    cluster: Cluster, ipam: IPAM, store: MemoryDatastore, clock: ManualClock
) -> None:
    ipam.assign(node="n1", handle="h", ip="10.0.0.1")
    rogue = AllocationBlock.new(
        ipaddress.ip_network("10.0.0.0/30"), None, sequence_start=1, now=clock.now()
    )
    from tortie.ipam.block import allocate

    rogue, _ = allocate(rogue, 1, "h2", {"node": "n1"}, ordinals=[1])
    store.put(block_key(rogue.cidr), rogue.to_json())
    store.put(handle_key("h2"), IPAMHandle("h2").with_count(rogue.cidr, 1).to_json())
    report = ipam.check()
    assert kinds(report) == ["address-with-two-owners"]
    assert "2 overlapping blocks" in report.problems[0].message


def test_affinity_without_block(ipam: IPAM, store: MemoryDatastore, clock: ManualClock) -> None:
    cidr = ipaddress.ip_network("10.0.0.64/28")
    pending = BlockAffinity("n1", cidr, AffinityState.PENDING, clock.now())
    store.put(pending.key, pending.to_json())
    [p] = ipam.check().problems
    assert p.kind is ProblemKind.AFFINITY_WITHOUT_BLOCK
    assert ipam.gc().affinities_removed == []  # might be a claim in flight
    clock.advance(MIN15 + 1)
    assert ipam.gc().affinities_removed == ["n1 10.0.0.64/28"]
    assert ipam.check().problems == ()


def test_affinity_for_someone_elses_block(ipam: IPAM, store: MemoryDatastore) -> None:
    ipam.assign(node="n2", handle="h")
    [cidr] = ipam.blocks_for_node("n2")
    stale = BlockAffinity("n1", cidr, AffinityState.CONFIRMED, None)
    store.put(stale.key, stale.to_json())
    [p] = ipam.check().problems
    assert "belongs to host:n2" in p.message
    assert ipam.gc(grace=0).affinities_removed == [f"n1 {cidr}"]
    assert ipam.blocks_for_node("n2") == [cidr]


def test_block_without_affinity(ipam: IPAM, store: MemoryDatastore) -> None:
    ipam.assign(node="n1", handle="h")
    [cidr] = ipam.blocks_for_node("n1")
    store.delete(affinity_key("n1", cidr))
    [p] = ipam.check().problems
    assert p.kind is ProblemKind.BLOCK_WITHOUT_AFFINITY
    assert ipam.gc(grace=0).blocks_unowned == [cidr]
    blk = ipam.store.block(cidr)
    assert blk is not None
    assert blk.value.affinity is None
    assert ipam.check().problems == ()


def test_corrupt_entries_are_reported_not_fatal(ipam: IPAM, store: MemoryDatastore) -> None:
    store.put(block_key(ipaddress.ip_network("10.0.0.16/28")), "{not json")
    store.put(handle_key("bad"), "[]")
    report = ipam.check()
    assert kinds(report) == ["corrupt-entry", "corrupt-entry"]
    assert {p.key for p in report.problems} == {
        block_key(ipaddress.ip_network("10.0.0.16/28")),
        handle_key("bad"),
    }


def test_gc_releases_empty_blocks(ipam: IPAM, clock: ManualClock) -> None:
    ipam.assign(node="n1", handle="h")
    ipam.release_by_handle("h")
    assert ipam.gc().empty_blocks_released == []
    clock.advance(MIN15 + 1)
    assert len(ipam.gc().empty_blocks_released) == 1
    assert ipam.blocks_for_node("n1") == []


def test_report_round_trip_and_bad_reports(cluster: Cluster, ipam: IPAM) -> None:
    pod(ipam, cluster, "n1", "gone", endpoint=False)
    report = ipam.check()
    again = CheckReport.from_json(report.to_json())
    assert again.problems == report.problems
    assert again.by_kind() == {"leaked-address": 1}
    for bad in ["nope", "{}", '{"problems": [{"kind": "weird"}]}', '{"problems": [1]}']:
        with pytest.raises(IPAMError):
            CheckReport.from_json(bad)
    with pytest.raises(IPAMError, match="ip must be a str"):
        CheckReport.from_json('{"problems": [{"kind": "leaked-address", "ip": 5}]}')
