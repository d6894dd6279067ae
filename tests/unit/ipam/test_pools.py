"""Pool choice and block carving (tortie.ipam.pools)."""

from __future__ import annotations

import ipaddress
import itertools

import pytest

from tortie.ipam.errors import NoPoolsError, PoolNotFoundError
from tortie.ipam.pools import (
    USE_TUNNEL,
    block_count,
    block_for,
    candidate_blocks,
    pool_for,
    select_pools,
    within,
)
from tortie.model.resources import IPPool

pytestmark = pytest.mark.unit


def pool(name: str, cidr: str, **spec: object) -> IPPool:
    return IPPool.from_document(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "IPPool",
            "metadata": {"name": name},
            "spec": {"cidr": cidr, **spec},
        }
    )


POOLS = [
    pool("b", "10.2.0.0/16"),
    pool("a", "10.1.0.0/16", nodeSelector="zone == 'east'"),
    pool("off", "10.3.0.0/16", disabled=True),
    pool("v6", "fd00::/64"),
    pool("tun", "10.4.0.0/24", allowedUses=["Tunnel"]),
]


def names(pools: list[IPPool]) -> list[str]:
    return [p.metadata.name for p in pools]


def test_node_selector_and_disabled_and_version() -> None:
    east = select_pools(
        POOLS, version=4, node="n", node_labels=lambda: {"zone": "east"}, requested=None
    )
    assert names(east) == ["a", "b"]  # ordered by address
    west = select_pools(
        POOLS, version=4, node="n", node_labels=lambda: {"zone": "west"}, requested=None
    )
    assert names(west) == ["b"]
    v6 = select_pools(POOLS, version=6, node="n", node_labels=lambda: {}, requested=None)
    assert names(v6) == ["v6"]


def test_allowed_uses() -> None:
    tunnel = select_pools(
        POOLS, version=4, node="n", node_labels=lambda: {}, requested=None, use=USE_TUNNEL
    )
    assert names(tunnel) == ["b", "tun"]  # default allowedUses: Workload and Tunnel
    pods = select_pools(POOLS, version=4, node="n", node_labels=lambda: {}, requested=None)
    assert "tun" not in names(pods)


def test_missing_node_matches_only_all() -> None:
    got = select_pools(POOLS, version=4, node="ghost", node_labels=lambda: None, requested=None)
    assert names(got) == ["b"]
    only = [pool("a", "10.1.0.0/16", nodeSelector="has(zone)")]
    with pytest.raises(NoPoolsError, match="no Node resource named ghost"):
        select_pools(only, version=4, node="ghost", node_labels=lambda: None, requested=None)


def test_explicit_pools_bypass_selectors_but_not_disabled() -> None:
    got = select_pools(
        POOLS, version=4, node="n", node_labels=lambda: {}, requested=["10.1.0.0/16", "b", "a"]
    )
    assert names(got) == ["a", "b"]  # caller's order, no duplicates
    with pytest.raises(PoolNotFoundError, match=r"10\.3\.0\.0/16 does not exist, is disabled"):
        select_pools(POOLS, version=4, node="n", node_labels=lambda: {}, requested=["10.3.0.0/16"])
    with pytest.raises(PoolNotFoundError):
        select_pools(POOLS, version=4, node="n", node_labels=lambda: {}, requested=["junk"])


def test_no_pool_at_all() -> None:
    with pytest.raises(NoPoolsError, match="no enabled IPv4 pool"):
        select_pools([], version=4, node="n", node_labels=lambda: {}, requested=None)


def test_candidate_blocks_cover_the_pool_once_from_a_stable_per_node_start() -> None:
    p = pool("p", "10.0.0.0/24", blockSize=28)
    a = list(candidate_blocks(p, "node-a"))
    assert len(a) == block_count(p) == 16
    assert sorted(a) == list(p.network.subnets(new_prefix=28))
    assert a == list(candidate_blocks(p, "node-a"))  # same in every process and run
    starts = {next(candidate_blocks(p, f"node-{i}")) for i in range(20)}
    assert len(starts) > 5  # nodes start in different places


def test_candidate_blocks_are_lazy_for_huge_pools() -> None:
    p = pool("v6", "fd00::/48", blockSize=122)
    first = list(itertools.islice(candidate_blocks(p, "n"), 3))
    assert all(b.prefixlen == 122 and within(b, p.network) for b in first)


def test_helpers() -> None:
    p = pool("p", "10.0.0.0/24", blockSize=26)
    ip = ipaddress.ip_address("10.0.0.77")
    assert block_for(p, ip) == ipaddress.ip_network("10.0.0.64/26")
    assert pool_for([p], ip) is p
    assert pool_for([p], ipaddress.ip_address("10.0.1.1")) is None
    assert not within(ipaddress.ip_network("fd00::/64"), p.network)


def test_node_labels_are_read_only_when_a_selector_needs_them() -> None:
    def boom() -> dict[str, str]:
        raise AssertionError("labels read although every pool selects all()")

    everyone = [pool("b", "10.2.0.0/16")]
    assert names(select_pools(everyone, version=4, node="n", node_labels=boom, requested=None))
