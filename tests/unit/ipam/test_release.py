"""Release by handle and by address; stale releases; handle records."""

from __future__ import annotations

import ipaddress

import pytest
from ipam_helpers import Cluster

from tortie.ipam.client import IPAM
from tortie.ipam.clock import ManualClock
from tortie.ipam.errors import InvalidRequestError
from tortie.ipam.release import ReleaseRequest

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _pool(cluster: Cluster) -> None:
    cluster.pool("p", "10.0.0.0/24", block_size=29)


def test_release_by_handle_returns_exactly_what_was_assigned(ipam: IPAM) -> None:
    a = ipam.assign(node="n", handle="h", count=5)
    b = ipam.assign(node="n", handle="h", count=6)  # same handle again, over two blocks
    assert len(ipam.blocks_for_node("n")) == 2
    assert sorted(ipam.release_by_handle("h")) == sorted(a + b)
    assert ipam.store.handle("h") is None
    assert ipam.release_by_handle("h") == []  # idempotent
    assert ipam.release_by_handle("never-seen") == []


def test_release_ips_updates_handles(ipam: IPAM) -> None:
    got = ipam.assign(node="n", handle="h", count=3)
    assert ipam.release_ips([str(got[0])]) == [got[0]]
    h = ipam.store.handle("h")
    assert h is not None
    assert h.value.total == 2
    assert ipam.release_ips(got) == got[1:]  # already-free ones are skipped
    assert ipam.store.handle("h") is None
    assert ipam.release_ips([]) == []
    assert ipam.release_ips(["10.99.0.1"]) == []  # in no block
    with pytest.raises(InvalidRequestError):
        ipam.release_ips(["bogus"])


def test_stale_release_never_frees_a_reused_address(ipam: IPAM) -> None:
    [old] = ipam.assign_detailed(node="n", handle="old", ip="10.0.0.3")
    ipam.release_by_handle("old")
    [new] = ipam.assign_detailed(node="n", handle="new", ip="10.0.0.3")
    assert new.sequence != old.sequence
    # A release computed before the reuse names the old allocation: nothing happens.
    assert ipam.release_ips([ReleaseRequest(old.ip, "old", old.sequence)]) == []
    assert ipam.release_ips([ReleaseRequest(old.ip, None, old.sequence)]) == []
    assert ipam.release_ips([ReleaseRequest(old.ip, "old")]) == []
    assert ipam.addresses_for_handle("new") == [new.ip]
    assert ipam.release_ips([ReleaseRequest(new.ip, "new", new.sequence)]) == [new.ip]


def test_sequence_numbers_survive_block_recreation(ipam: IPAM, clock: ManualClock) -> None:
    [first] = ipam.assign_detailed(node="n", handle="a", ip="10.0.0.3")
    ipam.release_by_handle("a")
    assert ipam.release_empty_blocks(grace=0) == [ipaddress.ip_network("10.0.0.0/29")]
    [again] = ipam.assign_detailed(node="n", handle="b", ip="10.0.0.3")
    assert again.sequence > first.sequence  # new blocks start at the store revision


def test_release_marks_block_empty_time(ipam: IPAM, clock: ManualClock) -> None:
    ipam.assign(node="n", handle="h")
    clock.advance(30)
    ipam.release_by_handle("h")
    [blk] = ipam.store.blocks()
    assert blk.value.empty_since == clock.now()
