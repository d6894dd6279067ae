"""Which pools an allocation may use, and how a pool is carved into blocks.

Problem: Calico picks pools by (1) the caller's explicit list, which bypasses node selectors
but must name enabled pools, else (2) every enabled pool whose ``nodeSelector`` matches the
node's labels; and it hands out blocks in a per-node pseudo-random order so that nodes
claiming at the same moment rarely race for the same block.

Invariants:
- Disabled pools, and pools whose ``allowedUses`` lack the use, are never used for new
  allocations (existing addresses stay valid).
- Block CIDRs of a pool are ``pool.network`` split at ``pool.spec.block_size``; the order for
  a node starts at a stable hash of its name (sha256, not Python's per-process ``hash``) and
  wraps around, so it is the same in every process and every run.

Hazard: a pool's block list can be astronomically long (IPv6); :func:`candidate_blocks` is
lazy and callers stop at the first usable block.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Iterator, Mapping, Sequence

from tortie.ipam.errors import NoPoolsError, PoolNotFoundError
from tortie.model.ipam import IPAddress, IPNetwork
from tortie.model.resources import IPPool

USE_WORKLOAD = "Workload"
USE_TUNNEL = "Tunnel"


def _matches_request(pool: IPPool, wanted: str) -> bool:
    if pool.metadata.name == wanted:
        return True
    try:
        return pool.network == ipaddress.ip_network(wanted, strict=False)
    except ValueError:
        return False


def select_pools(
    pools: Sequence[IPPool],
    *,
    version: int,
    node: str,
    node_labels: Callable[[], Mapping[str, str] | None],
    requested: Sequence[str] | None,
    use: str = USE_WORKLOAD,
) -> list[IPPool]:
    """The pools an automatic allocation on ``node`` may use, in a stable order.

    ``requested`` names pools by CIDR or name. ``node_labels()`` returns the node's labels,
    or None when the Node resource does not exist (then only pools selecting ``all()``
    match); it is called only if some pool's selector is not ``all()``, which saves a
    datastore read on every allocation in the common case. ``use`` is the pool's
    ``allowedUses`` entry the allocation needs (Workload or Tunnel).
    """
    enabled = [
        p
        for p in pools
        if not p.spec.disabled and p.network.version == version and use in p.spec.allowed_uses
    ]
    if requested:
        chosen: list[IPPool] = []
        for want in requested:
            found = [p for p in enabled if _matches_request(p, want)]
            if not found:
                raise PoolNotFoundError(
                    f"the requested pool {want} does not exist, is disabled, or does not "
                    f"allow {use} addresses "
                    "(see 'tortie get ippools -o wide')"
                )
            chosen.extend(p for p in found if p not in chosen)
        # Explicit pools ignore node selectors, as in Calico (backwards compatibility).
        return chosen
    selectors = [(p, p.spec.selector) for p in enabled]
    labels: Mapping[str, str] | None = {}
    if not all(sel.is_all for _, sel in selectors):
        labels = node_labels()
    chosen = [p for p, sel in selectors if sel.matches(labels or {})]
    if not chosen:
        hint = "" if labels is not None else f" (there is no Node resource named {node})"
        raise NoPoolsError(
            f"no enabled IPv{version} pool for {use} addresses selects node {node}{hint}; "
            "create one with 'tortie apply' or fix the pools' nodeSelector"
        )
    return sorted(chosen, key=lambda p: (p.network.version, int(p.network.network_address)))


def within(inner: IPNetwork, outer: IPNetwork) -> bool:
    """``inner`` lies inside ``outer`` (False across IP versions rather than an error)."""
    if isinstance(inner, ipaddress.IPv4Network) and isinstance(outer, ipaddress.IPv4Network):
        return inner.subnet_of(outer)
    if isinstance(inner, ipaddress.IPv6Network) and isinstance(outer, ipaddress.IPv6Network):
        return inner.subnet_of(outer)
    return False


def pool_for(pools: Sequence[IPPool], ip: IPAddress) -> IPPool | None:
    for p in pools:
        if ip in p.network:
            return p
    return None


def block_for(pool: IPPool, ip: IPAddress) -> IPNetwork:
    """The block of ``pool`` that contains ``ip``."""
    return ipaddress.ip_network(f"{ip}/{pool.spec.block_size}", strict=False)


def block_count(pool: IPPool) -> int:
    return 1 << (pool.spec.block_size - pool.network.prefixlen)


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def candidate_blocks(pool: IPPool, node: str) -> Iterator[IPNetwork]:
    """Every block CIDR of ``pool``, starting at a per-node offset and wrapping around."""
    n = block_count(pool)
    width = pool.network.max_prefixlen
    step = 1 << (width - pool.spec.block_size)
    base = int(pool.network.network_address)
    start = _stable_hash(node) % n
    for i in range(n):
        index = (start + i) % n
        yield ipaddress.ip_network((base + index * step, pool.spec.block_size))
