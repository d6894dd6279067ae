"""Two-phase block claims, lost races, crash recovery, empty blocks, node deletion."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Sequence

import pytest
from ipam_helpers import Cluster, HookedStore

from tortie.datastore.api import Compare, Op, Put
from tortie.datastore.memory import MemoryDatastore
from tortie.ipam.affinity import AffinityManager, ClaimResult
from tortie.ipam.client import IPAM
from tortie.ipam.clock import ManualClock
from tortie.ipam.store import IPAMStore
from tortie.model.ipam import (
    AffinityState,
    AllocationBlock,
    BlockAffinity,
    affinity_key,
    block_key,
)

pytestmark = pytest.mark.unit

NET = ipaddress.ip_network("10.0.0.0/28")


def manager(store: MemoryDatastore, clock: ManualClock) -> AffinityManager:
    return AffinityManager(IPAMStore(store, clock, random.Random(1)))


def creates_block(compares: Sequence[Compare], ops: Sequence[Op]) -> bool:
    return any(isinstance(o, Put) and o.key == block_key(NET) for o in ops) and any(
        c.key == block_key(NET) and c.mod_revision == 0 for c in compares
    )


def test_claim_goes_pending_then_confirmed(hooked: HookedStore, clock: ManualClock) -> None:
    seen: list[str] = []

    def snapshot() -> None:
        kv = hooked.get(affinity_key("a", NET))
        assert kv is not None
        seen.append(BlockAffinity.from_kv(kv.key, kv.value).state.value)

    hooked.on_txn(creates_block, snapshot)
    assert manager(hooked, clock).claim("a", NET) is ClaimResult.MINE
    assert seen == ["pending"]  # phase 2 ran while the affinity was pending
    kv = hooked.get(affinity_key("a", NET))
    assert kv is not None
    assert BlockAffinity.from_kv(kv.key, kv.value).state is AffinityState.CONFIRMED


def test_two_nodes_racing_for_one_block_cannot_both_win(
    hooked: HookedStore, clock: ManualClock
) -> None:
    a, b = manager(hooked, clock), manager(hooked, clock)
    results: list[ClaimResult] = []
    # Just before a creates the block, b runs its whole claim and wins.
    hooked.on_txn(creates_block, lambda: results.append(b.claim("b", NET)))
    results.append(a.claim("a", NET))
    assert results == [ClaimResult.MINE, ClaimResult.TAKEN]
    kv = hooked.get(block_key(NET))
    assert kv is not None
    assert AllocationBlock.from_json(kv.value).affinity == "host:b"
    assert hooked.get(affinity_key("a", NET)) is None  # the loser withdrew its pending claim
    assert hooked.get(affinity_key("b", NET)) is not None


def test_racing_processes_of_one_node_cooperate(hooked: HookedStore, clock: ManualClock) -> None:
    p1, p2 = manager(hooked, clock), manager(hooked, clock)
    results: list[ClaimResult] = []
    hooked.on_txn(creates_block, lambda: results.append(p2.claim("a", NET)))
    results.append(p1.claim("a", NET))
    assert results == [ClaimResult.MINE, ClaimResult.MINE]


def test_crash_after_phase_one_is_finished_by_the_same_node(
    cluster: Cluster, store: MemoryDatastore, ipam: IPAM, clock: ManualClock
) -> None:
    cluster.pool("p", "10.0.0.0/28", block_size=28)
    cluster.node("a")
    pending = BlockAffinity("a", NET, AffinityState.PENDING, clock.now())
    store.put(pending.key, pending.to_json())  # a process died right after phase 1
    assert ipam.blocks_for_node("a") == []  # pending blocks are not routed
    got = ipam.assign(node="a", handle="h")
    assert got[0] in NET
    assert ipam.blocks_for_node("a") == [NET]
    assert ipam.check().problems == ()


def test_crash_after_phase_two_is_confirmed_on_next_assign(
    cluster: Cluster, store: MemoryDatastore, ipam: IPAM, clock: ManualClock
) -> None:
    cluster.pool("p", "10.0.0.0/28", block_size=28)
    pending = BlockAffinity("a", NET, AffinityState.PENDING, clock.now())
    store.put(pending.key, pending.to_json())
    blk = AllocationBlock.new(NET, "host:a", sequence_start=1, now=clock.now())
    store.put(block_key(NET), blk.to_json())
    ipam.assign(node="a", handle="h")
    assert ipam.blocks_for_node("a") == [NET]


def test_stale_pending_affinity_for_someone_elses_block_is_withdrawn(
    store: MemoryDatastore, clock: ManualClock
) -> None:
    pending = BlockAffinity("a", NET, AffinityState.PENDING, clock.now())
    store.put(pending.key, pending.to_json())
    blk = AllocationBlock.new(NET, "host:b", sequence_start=1, now=clock.now())
    store.put(block_key(NET), blk.to_json())
    assert manager(store, clock).claim("a", NET) is ClaimResult.TAKEN
    assert store.get(pending.key) is None


def test_empty_blocks_are_released_after_the_grace_period(
    cluster: Cluster, ipam: IPAM, clock: ManualClock
) -> None:
    cluster.pool("p", "10.0.0.0/24", block_size=28)
    first = ipam.assign(node="a", handle="h1", count=16)  # fills one block
    ipam.assign(node="a", handle="h2")  # in a second block
    ipam.release_by_handle("h1")
    clock.advance(60)
    assert ipam.release_empty_blocks(grace=120) == []  # empty for 60 s only
    clock.advance(61)
    [released] = ipam.release_empty_blocks(grace=120)
    assert first[0] in released
    assert released not in ipam.blocks_for_node("a")
    assert len(ipam.blocks_for_node("a")) == 1
    assert ipam.store.block(released) is None  # the space is back in the pool
    assert ipam.store.affinity("a", released) is None


def test_release_node_releases_addresses_and_blocks(cluster: Cluster, ipam: IPAM) -> None:
    cluster.pool("p", "10.0.0.0/24", block_size=30, ipipMode="Always")
    ipam.configure(max_blocks_per_host=1)
    ipam.assign(node="a", handle="pa", count=2)
    own = ipam.assign(node="b", handle="pb", count=4)  # fills b's only block
    borrowed = ipam.assign(node="b", handle="pb2")  # from a's block
    tunnel = ipam.ensure_tunnel_address("b")  # also borrowed: b's block is full
    assert tunnel is not None
    [bblock] = ipam.blocks_for_node("b")
    gone = ipam.release_node("b")
    assert sorted(gone.addresses) == sorted([*own, *borrowed, tunnel])
    assert gone.blocks == [bblock]
    assert ipam.store.block(bblock) is None  # it was empty: deleted
    assert ipam.blocks_for_node("b") == []
    assert len(ipam.addresses_for_handle("pa")) == 2  # a is untouched
    assert ipam.release_node("b").addresses == []


def test_release_node_keeps_borrowers_addresses(cluster: Cluster, ipam: IPAM) -> None:
    cluster.pool("p", "10.0.0.0/24", block_size=30)
    ipam.configure(max_blocks_per_host=1)
    ipam.assign(node="a", handle="pa", count=4)
    lent = ipam.assign(node="b", handle="pb", count=1)
    [ablock] = ipam.blocks_for_node("a")
    borrowed = ipam.assign(node="a", handle="pa2")  # from b's block
    [bblock] = ipam.blocks_for_node("b")
    assert borrowed[0] in bblock
    ipam.release_node("b")
    blk = ipam.store.block(bblock)
    assert blk is not None
    assert blk.value.affinity is None  # no owner now, a's borrowed address stays
    assert ipam.addresses_for_handle("pa2") == borrowed
    assert ipam.addresses_for_handle("pb") == []
    assert lent[0] not in ipam.addresses_for_handle("pa2")
    assert ipam.blocks_for_node("a") == [ablock]
