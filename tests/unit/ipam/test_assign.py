"""Auto-assign order, limits, borrowing, strict affinity, specific addresses."""

from __future__ import annotations

import ipaddress

import pytest
from ipam_helpers import Cluster

from tortie.datastore.memory import MemoryDatastore
from tortie.ipam.client import IPAM
from tortie.ipam.clock import ManualClock
from tortie.ipam.errors import (
    AddressInUseError,
    AddressNotInPoolError,
    ExhaustedError,
    InvalidRequestError,
    NoPoolsError,
    PoolNotFoundError,
)
from tortie.model.ipam import handles_prefix
from tortie.model.naming import pod_handle

pytestmark = pytest.mark.unit


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def blocks_of(ipam: IPAM) -> dict[str, str | None]:
    return {str(b.value.cidr): b.value.node for b in ipam.store.blocks()}


def test_first_assign_claims_a_block_and_records_handle_and_attributes(
    cluster: Cluster, ipam: IPAM, clock: ManualClock
) -> None:
    cluster.pool("p", "10.0.0.0/24", block_size=28)
    got = ipam.assign(node="n1", handle="h1", count=2, attrs={"pod": "web", "namespace": "ns"})
    [block] = ipam.blocks_for_node("n1")
    assert all(a in block for a in got)
    assert ipam.addresses_for_handle("h1") == got
    info = ipam.address_info(got[0])
    assert info is not None
    assert info.handle == "h1"
    assert info.attrs["pod"] == "web"
    assert info.attrs["node"] == "n1"  # always the requesting node
    assert info.attrs["timestamp"] == "2023-11-14T22:13:20.000000Z"  # from the clock
    h = ipam.store.handle("h1")
    assert h is not None
    assert h.value.counts == {str(block): 2}


def test_nodes_get_their_own_blocks(cluster: Cluster, ipam: IPAM) -> None:
    cluster.pool("p", "10.0.0.0/24", block_size=28)
    a = ipam.assign(node="a", handle="ha")[0]
    b = ipam.assign(node="b", handle="hb")[0]
    [ba], [bb] = ipam.blocks_for_node("a"), ipam.blocks_for_node("b")
    assert ba != bb
    assert a in ba
    assert b in bb
    assert {(x.node, x.cidr) for x in ipam.block_affinities()} == {("a", ba), ("b", bb)}


def test_full_block_leads_to_a_new_block(cluster: Cluster, ipam: IPAM) -> None:
    cluster.pool("p", "10.0.0.0/24", block_size=30)
    got = ipam.assign(node="a", handle="h", count=6)
    assert len(set(got)) == 6
    assert len(ipam.blocks_for_node("a")) == 2


def test_borrows_after_max_blocks_per_host(cluster: Cluster, ipam: IPAM) -> None:
    cluster.pool("p", "10.0.0.0/24", block_size=30)
    ipam.configure(max_blocks_per_host=1)
    other = ipam.assign(node="b", handle="hb")[0]
    mine = ipam.assign(node="a", handle="ha", count=6)
    assert len(ipam.blocks_for_node("a")) == 1
    [bblock] = ipam.blocks_for_node("b")
    borrowed = [x for x in mine if x in bblock]
    assert len(borrowed) == 2  # the rest of b's block
    assert other not in mine
    rows = ipam.borrowed()
    assert {(r.ip, r.borrowing_node, r.block_owner) for r in rows} == {
        (x, "a", "b") for x in borrowed
    }
    assert ipam.borrowed("b") == []


def test_strict_affinity_makes_exhaustion_an_error_and_rolls_back(
    cluster: Cluster, ipam: IPAM
) -> None:
    cluster.pool("p", "10.0.0.0/24", block_size=30)
    ipam.configure(strict_affinity=True, max_blocks_per_host=1)
    ipam.assign(node="b", handle="hb")
    ipam.assign(node="a", handle="first", count=3)
    with pytest.raises(ExhaustedError, match="strict affinity is on") as err:
        ipam.assign(node="a", handle="second", count=2)
    assert (err.value.requested, err.value.available) == (2, 1)
    assert ipam.addresses_for_handle("second") == []  # the one it got went back
    assert ipam.store.handle("second") is None
    assert ipam.borrowed() == []


def test_pool_exhaustion_rolls_back_everything(cluster: Cluster, ipam: IPAM) -> None:
    cluster.pool("p", "10.0.0.0/29", block_size=30)
    ipam.assign(node="a", handle="h1", count=5)
    with pytest.raises(ExhaustedError, match="the pools are full"):
        ipam.assign(node="b", handle="h2", count=4)
    assert ipam.addresses_for_handle("h2") == []
    assert ipam.assign(node="b", handle="h2", count=3)  # exactly what is left


def test_explicit_pools_and_node_selectors(cluster: Cluster, ipam: IPAM) -> None:
    cluster.pool("east", "10.1.0.0/24", nodeSelector="zone == 'east'")
    cluster.pool("any", "10.2.0.0/24")
    cluster.node("e1", {"zone": "east"})
    cluster.node("w1", {"zone": "west"})
    assert ipam.assign(node="e1", handle="h1")[0] in ipaddress.ip_network("10.1.0.0/24")
    assert ipam.assign(node="w1", handle="h2")[0] in ipaddress.ip_network("10.2.0.0/24")
    # An explicit pool ignores the selector, as in Calico.
    got = ipam.assign(node="w1", handle="h3", pools=["east"])
    assert got[0] in ipaddress.ip_network("10.1.0.0/24")
    with pytest.raises(PoolNotFoundError):
        ipam.assign(node="w1", handle="h4", pools=["10.9.0.0/24"])


def test_disabled_pool_is_not_used(cluster: Cluster, ipam: IPAM) -> None:
    cluster.pool("off", "10.1.0.0/24", disabled=True)
    with pytest.raises(NoPoolsError):
        ipam.assign(node="n", handle="h")
    cluster.pool("on", "10.2.0.0/24")
    assert ipam.assign(node="n", handle="h")[0] in ipaddress.ip_network("10.2.0.0/24")


def test_ipv6(cluster: Cluster, ipam: IPAM) -> None:
    cluster.pool("v6", "fd00:10::/120", block_size=124)
    got = ipam.assign(node="n", handle="h", count=2, version=6)
    assert [a.version for a in got] == [6, 6]
    assert ipam.release_by_handle("h") == got


def test_specific_address(cluster: Cluster, ipam: IPAM) -> None:
    cluster.pool("p", "10.0.0.0/24", block_size=28)
    assert ipam.assign(node="a", handle="h1", ip="10.0.0.77") == [ip("10.0.0.77")]
    # The block did not exist: it is created affine to the requesting node.
    assert blocks_of(ipam) == {"10.0.0.64/28": "a"}
    # Same handle again: idempotent (a retried CNI ADD).
    assert ipam.assign(node="a", handle="h1", ip="10.0.0.77") == [ip("10.0.0.77")]
    with pytest.raises(AddressInUseError, match="handle h1"):
        ipam.assign(node="b", handle="h2", ip="10.0.0.77")
    # Another node may take a specific address in a's block (it is then borrowed).
    assert ipam.assign(node="b", handle="h2", ip="10.0.0.78") == [ip("10.0.0.78")]
    with pytest.raises(AddressNotInPoolError):
        ipam.assign(node="a", handle="h3", ip="192.168.0.1")
    cluster.pool("q", "10.9.0.0/24")
    with pytest.raises(AddressNotInPoolError, match="among q"):
        ipam.assign(node="a", handle="h3", ip="10.0.0.5", pools=["q"])


def test_specific_address_in_disabled_pool_is_refused(cluster: Cluster, ipam: IPAM) -> None:
    cluster.pool("off", "10.1.0.0/24", disabled=True)
    with pytest.raises(AddressNotInPoolError):
        ipam.assign(node="a", handle="h", ip="10.1.0.5")


def test_bad_requests(cluster: Cluster, ipam: IPAM) -> None:
    cluster.pool("p", "10.0.0.0/24")
    with pytest.raises(InvalidRequestError):
        ipam.assign(node="a", handle="h", count=0)
    with pytest.raises(InvalidRequestError):
        ipam.assign(node="a", handle="")
    with pytest.raises(InvalidRequestError):
        ipam.assign(node="a", handle="h", ip="not-an-ip")
    with pytest.raises(InvalidRequestError):
        ipam.assign(node="a", handle="h", version=5)


def test_unowned_block_is_claimed_before_borrowing(cluster: Cluster, ipam: IPAM) -> None:
    cluster.pool("p", "10.0.0.0/30", block_size=30)
    ipam.assign(node="gone", handle="h1")
    ipam.release_node("gone")  # the block is empty: deleted
    assert blocks_of(ipam) == {}
    ipam.assign(node="b", handle="keep", ip="10.0.0.1")
    ipam.assign(node="gone2", handle="h2", ip="10.0.0.2")  # borrowed in b's block
    ipam.release_node("b")  # keeps gone2's address: block loses its owner
    assert blocks_of(ipam) == {"10.0.0.0/30": None}
    got = ipam.assign(node="c", handle="h3")
    assert blocks_of(ipam) == {"10.0.0.0/30": "c"}
    assert ipam.blocks_for_node("c") == [ipaddress.ip_network("10.0.0.0/30")]
    assert got[0] in ipaddress.ip_network("10.0.0.0/30")


def test_pod_handle_format() -> None:
    assert pod_handle("abc123") == "k8s-pod-network.abc123"
    assert pod_handle("abc", network="other") == "other.abc"


def test_full_blocks_are_skipped_cheaply_and_hint_is_only_a_hint(
    cluster: Cluster, store: MemoryDatastore, clock: ManualClock
) -> None:
    cluster.pool("p", "10.0.0.0/24", block_size=30)
    one, two = IPAM(store, clock), IPAM(store, clock)
    one.assign(node="a", handle="h1", count=4)  # fills block 1; one's hint -> block 1
    two.assign(node="a", handle="h2", count=1)  # claims block 2
    one.release_by_handle("h1")
    # one's hint points at a block that is now empty; it is used, no new block.
    one.assign(node="a", handle="h3", count=4)
    assert len(one.blocks_for_node("a")) == 2
    assert len(store.list(handles_prefix()).items) == 2  # h2 and h3


def test_specific_address_at_the_block_limit_makes_an_unowned_block(
    cluster: Cluster, ipam: IPAM
) -> None:
    cluster.pool("p", "10.0.0.0/24", block_size=28)
    cluster.node("a")
    ipam.configure(max_blocks_per_host=1)
    ipam.assign(node="a", handle="h1")
    [own] = ipam.blocks_for_node("a")
    outside = next(
        b for b in ipaddress.ip_network("10.0.0.0/24").subnets(new_prefix=28) if b != own
    )
    assert ipam.assign(node="a", handle="h2", ip=str(outside[1])) == [outside[1]]
    assert ipam.blocks_for_node("a") == [own]  # still one block: the limit holds
    assert blocks_of(ipam)[str(outside)] is None
    assert ipam.check().problems == ()
