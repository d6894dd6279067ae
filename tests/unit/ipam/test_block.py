"""Block bookkeeping (tortie.ipam.block): free list, attributes, sequence numbers."""

from __future__ import annotations

import ipaddress

import pytest

from tortie.ipam.block import allocate, release, with_affinity
from tortie.model.ipam import AllocationBlock

pytestmark = pytest.mark.unit

NET = ipaddress.ip_network("10.0.0.0/29")


def fresh() -> AllocationBlock:
    return AllocationBlock.new(NET, "host:a", sequence_start=100, now=5.0)


def test_allocates_in_free_list_order_with_fresh_sequence_numbers() -> None:
    b, got = allocate(fresh(), 3, "h1", {"pod": "p"})
    assert got == [0, 1, 2]
    assert b.sequence_numbers[:4] == (100, 101, 102, None)
    assert b.sequence_number == 103
    assert b.empty_since is None
    b, got = allocate(b, 10, "h2", {})
    assert got == [3, 4, 5, 6, 7]  # only what is free
    assert b.free == 0
    assert allocate(b, 1, "h3", {}) == (b, [])


def test_identical_attributes_are_shared_and_unused_ones_dropped() -> None:
    b, _ = allocate(fresh(), 2, "h1", {"pod": "p"})
    b, _ = allocate(b, 1, "h1", {"pod": "p"})
    b, _ = allocate(b, 1, "h2", {"pod": "q"})
    assert len(b.attributes) == 2
    b = release(b, [0, 1, 2], now=9.0)
    assert [a.handle_id for a in b.attributes] == ["h2"]
    assert b.allocations[3] == 0  # renumbered


def test_release_puts_ordinals_last_and_stamps_empty() -> None:
    b, _ = allocate(fresh(), 2, "h1", {})
    b = release(b, [0], now=7.0)
    assert b.unallocated[-1] == 0
    assert b.empty_since is None
    assert b.sequence_numbers[0] is None
    b = release(b, [1, 1], now=8.0)
    assert b.in_use == 0
    assert b.empty_since == 8.0
    assert release(b, [1], now=9.0) is b  # nothing to free: unchanged


def test_reuse_gets_a_new_sequence_number() -> None:
    b, _ = allocate(fresh(), 8, "h1", {})
    b = release(b, [4], now=1.0)
    b, got = allocate(b, 1, "h2", {})
    assert got == [4]
    assert b.sequence_numbers[4] == 108


def test_specific_ordinals_and_affinity() -> None:
    b, got = allocate(fresh(), 1, "h", {}, ordinals=[6])
    assert got == [6]
    assert 6 not in b.unallocated
    assert with_affinity(b, None).affinity is None
