"""Assigning addresses: Calico's auto-assign order, and specific-address requests.

Problem: a node must get addresses quickly and locally (from blocks it owns, so one route
per block suffices), fall back gracefully when its blocks are full, and never hand one address
to two owners, with many processes on many nodes doing this at once and no locks.

Order of auto-assign (Calico's):
1. blocks affine to the node, within the usable pools (finishing any half-done claim);
2. claim new blocks, while the node owns fewer than ``maxBlocksPerHost``;
3. unless ``strictAffinity``: borrow single addresses from any block of the usable pools
   (each borrowed address needs its own /32 route: the agent sees them via the block owner).
A request that cannot be met in full is rolled back and raises :class:`ExhaustedError`.

Invariants:
- An allocation changes its block and its handle in one transaction guarded by the
  revisions both were read at; a lost race re-reads and recomputes (bounded retries).
- Every allocation carries the attributes ``node`` (always the requesting node) and
  ``timestamp`` (from the injected clock), which ``release_node`` and ``gc`` rely on.
- A specific-address request for an address already held by the same handle succeeds
  without change (CNI ADD retries); held by another handle, it fails.

Cost of the common case (room in an owned block): list pools, list the node's affinities,
read the block, one transaction. Node labels and IPAM settings are read only when needed
(a pool selector other than ``all()``; the node's blocks are full), the handle is first
assumed new (the guard catches a wrong guess), full blocks are skipped after a JSON parse,
and the block that last had room is tried first. None of these shortcuts is trusted for
correctness: every write is still guarded by what it was computed from.

Hazard: ``maxBlocksPerHost`` is checked before claiming, not enforced atomically, so
processes of one node claiming at the same instant can exceed it by a block or two (Calico
has the same window); the limit exists to bound routes, which this does not break.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from tortie.datastore.api import Compare, Put
from tortie.ipam.affinity import AffinityManager, ClaimResult
from tortie.ipam.block import allocate
from tortie.ipam.errors import (
    AddressInUseError,
    AddressNotInPoolError,
    ExhaustedError,
    IPAMError,
)
from tortie.ipam.pools import (
    USE_WORKLOAD,
    block_for,
    candidate_blocks,
    pool_for,
    select_pools,
    within,
)
from tortie.ipam.release import Releaser, ReleaseRequest
from tortie.ipam.store import IPAMStore, revision_of
from tortie.ipam.view import ClusterView, IPAMSettings
from tortie.model.ipam import (
    ATTR_NODE,
    ATTR_TIMESTAMP,
    AffinityState,
    IPAddress,
    IPAMHandle,
    IPNetwork,
    block_key,
    handle_key,
    host_affinity,
)
from tortie.model.resources import IPPool

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Allocation:
    ip: IPAddress
    block: IPNetwork
    sequence: int
    handle: str


def format_timestamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_timestamp(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


class Assigner:
    def __init__(
        self, store: IPAMStore, view: ClusterView, affinity: AffinityManager, releaser: Releaser
    ) -> None:
        self.s = store
        self.view = view
        self.aff = affinity
        self.releaser = releaser
        # node -> the block that last satisfied a request (tried first next time).
        self._last_block: dict[str, IPNetwork] = {}

    # -- one block ------------------------------------------------------------------------
    def from_block(
        self,
        cidr: IPNetwork,
        want: int,
        handle: str,
        attrs: Mapping[str, str],
        *,
        owner: str | None,
        ip: IPAddress | None = None,
        handle_exists: bool = False,
    ) -> list[Allocation]:
        """Allocate up to ``want`` addresses (or exactly ``ip``) in block ``cidr``.

        With ``owner``, only if the block is affine to that node (a stale affinity read
        must not make us allocate in someone else's block as if it were ours).
        """
        bkey, hkey = block_key(cidr), handle_key(handle)
        retry = self.s.attempts(f"assigning from block {cidr}")
        handle_known = handle_exists
        for _ in retry:
            blk = self.s.block(cidr, skip_full=ip is None)
            if blk is None:
                return []
            b = blk.value
            if owner is not None and b.affinity != host_affinity(owner):
                return []
            ordinals: list[int] | None = None
            if ip is not None:
                o = b.ordinal(ip)
                attr = b.attribute_of(o)
                if attr is not None:
                    seq = b.sequence_numbers[o]
                    if attr.handle_id == handle and seq is not None:
                        return [Allocation(ip, cidr, seq, handle)]
                    raise AddressInUseError(
                        f"{ip} is already assigned (handle {attr.handle_id}); "
                        "release it first or ask for another address"
                    )
                ordinals = [o]
            elif b.free == 0:
                return []
            # First try assumes the handle is new (a pod's first allocation, the common
            # case) and guards on that, saving a read; a wrong guess just fails the txn.
            h = self.s.handle(handle) if handle_known else None
            new, chosen = allocate(b, want, handle, attrs, ordinals=ordinals)
            current = h.value if h is not None else IPAMHandle(handle)
            new_handle = current.with_count(cidr, len(new.ordinals_of_handle(handle)))
            if self.s.txn(
                [Compare(bkey, blk.revision), Compare(hkey, revision_of(h))],
                [Put(bkey, new.to_json()), Put(hkey, new_handle.to_json())],
            ):
                return [
                    Allocation(b.address(o), cidr, new.sequence_numbers[o] or 0, handle)
                    for o in chosen
                ]
            handle_known = True
            retry.conflict()
        raise AssertionError("unreachable: attempts() raises when exhausted")

    # -- automatic ------------------------------------------------------------------------
    def auto_assign(
        self,
        *,
        node: str,
        handle: str,
        count: int,
        pools: Sequence[str] | None,
        attrs: Mapping[str, str],
        version: int,
        use: str = USE_WORKLOAD,
    ) -> list[Allocation]:
        usable = select_pools(
            self.view.pools(),
            version=version,
            node=node,
            node_labels=lambda: self.view.node_labels(node),
            requested=pools,
            use=use,
        )
        attrs = self._stamp(node, attrs)
        got: list[Allocation] = []
        try:
            self._assign(
                got,
                node=node,
                handle=handle,
                count=count,
                usable=usable,
                attrs=attrs,
                version=version,
                settings=self._settings_reader(),
            )
        except BaseException:
            # Whatever this call assigned before failing goes back: all or nothing.
            self._rollback(got)
            raise
        return got

    def _assign(
        self,
        got: list[Allocation],
        *,
        node: str,
        handle: str,
        count: int,
        usable: list[IPPool],
        attrs: Mapping[str, str],
        version: int,
        settings: Callable[[], IPAMSettings],
    ) -> None:
        """Fill ``got`` (the caller's list, so it can roll back whatever landed).

        ``settings()`` is read only once the node's own blocks are full: the common case
        (room in an owned block) then costs no configuration read.
        """

        def need() -> int:
            return count - len(got)

        def in_usable(cidr: IPNetwork) -> bool:
            return any(within(cidr, p.network) for p in usable)

        # 1. Blocks the node already owns (confirmed first; pending ones get finished). The
        # block that last had room goes first: only an ordering hint, never trusted.
        affinities = [a.value for a in self.s.affinities(node) if a.value.cidr.version == version]
        owned = len(affinities)
        hint = self._last_block.get(node)
        affinities.sort(
            key=lambda a: (a.cidr != hint, a.state is not AffinityState.CONFIRMED, a.cidr)
        )
        for aff in affinities:
            if not in_usable(aff.cidr):
                continue
            if aff.state is not AffinityState.CONFIRMED and (
                self.aff.claim(node, aff.cidr) is not ClaimResult.MINE
            ):
                continue
            got += self.from_block(
                aff.cidr, need(), handle, attrs, owner=node, handle_exists=bool(got)
            )
            if need() == 0:
                self._last_block[node] = aff.cidr
                return
        # 2. Claim new blocks, up to the per-host limit.
        while need() > 0 and not settings().limit_reached(owned):
            cidr = self._claim_new_block(node, usable, version)
            if cidr is None:
                break
            owned += 1
            self._last_block[node] = cidr
            got += self.from_block(cidr, need(), handle, attrs, owner=node, handle_exists=bool(got))
        # 3. Borrow single addresses from other blocks.
        if need() > 0 and not settings().strict_affinity:
            got += self._borrow(
                node=node,
                handle=handle,
                want=need(),
                usable=usable,
                attrs=attrs,
                version=version,
                handle_exists=bool(got),
            )
        if need() > 0:
            available = len(got)
            limit = settings().max_blocks_per_host or "none"
            if settings().strict_affinity:
                reason = (
                    f"strict affinity is on and node {node} owns {owned} block(s) "
                    f"(limit {limit}) with no free address"
                )
            elif settings().limit_reached(owned):
                reason = (
                    f"node {node} owns {owned} block(s) (the limit) and no other block "
                    "has a free address"
                )
            else:
                reason = "the pools are full"
            raise ExhaustedError(
                f"cannot assign {count} IPv{version} address(es) to {handle} on node {node}: "
                f"{reason} (pools: {', '.join(p.spec.cidr for p in usable)}); "
                "add a pool, release leaks with 'tortie ipam gc', or raise maxBlocksPerHost "
                "with 'tortie ipam configure'",
                requested=count,
                available=available,
            )

    def _claim_new_block(self, node: str, usable: list[IPPool], version: int) -> IPNetwork | None:
        existing = {b.value.cidr: b.value for b in self.s.blocks(version)}
        for pool in usable:
            for cidr in candidate_blocks(pool, node):
                if cidr in existing:
                    continue
                if self.aff.claim(node, cidr) is ClaimResult.MINE:
                    return cidr
            # Then blocks left without owner (their node was deleted) that have room.
            for cidr, b in sorted(existing.items()):
                if (
                    b.affinity is None
                    and b.free > 0
                    and within(cidr, pool.network)
                    and self.aff.claim(node, cidr) is ClaimResult.MINE
                ):
                    return cidr
        return None

    def _borrow(
        self,
        *,
        node: str,
        handle: str,
        want: int,
        usable: list[IPPool],
        attrs: Mapping[str, str],
        version: int,
        handle_exists: bool,
    ) -> list[Allocation]:
        got: list[Allocation] = []
        mine = host_affinity(node)
        candidates = [
            b.value.cidr
            for b in self.s.blocks(version)
            if b.value.free > 0
            and b.value.affinity != mine
            and any(within(b.value.cidr, p.network) for p in usable)
        ]
        for cidr in candidates:
            got += self.from_block(
                cidr,
                want - len(got),
                handle,
                attrs,
                owner=None,
                handle_exists=handle_exists or bool(got),
            )
            if len(got) == want:
                break
        return got

    # -- specific address -----------------------------------------------------------------
    def assign_ip(
        self,
        *,
        node: str,
        handle: str,
        ip: IPAddress,
        pools: Sequence[str] | None,
        attrs: Mapping[str, str],
        use: str = USE_WORKLOAD,
    ) -> Allocation:
        # Specific addresses ignore node selectors (the caller chose), as in Calico.
        enabled = [
            p for p in self.view.pools() if not p.spec.disabled and use in p.spec.allowed_uses
        ]
        if pools:
            enabled = select_pools(
                enabled,
                version=ip.version,
                node=node,
                node_labels=lambda: None,  # unused: explicit pools ignore selectors
                requested=pools,
                use=use,
            )
        pool = pool_for(enabled, ip)
        if pool is None:
            raise AddressNotInPoolError(
                f"{ip} is not in any enabled pool"
                + (f" among {', '.join(pools)}" if pools else "")
                + " (see 'tortie get ippools -o wide')"
            )
        cidr = block_for(pool, ip)
        attrs = self._stamp(node, attrs)
        retry = self.s.attempts(f"assigning {ip}")
        for _ in retry:
            if self.s.block(cidr) is None:
                # No block yet: create it affine to the requesting node (Calico does the
                # same), or without owner when the node is at its block limit; if another
                # node creates it first, the address is simply borrowed.
                owned = sum(
                    1 for a in self.s.affinities(node) if a.value.cidr.version == ip.version
                )
                if self.view.settings().limit_reached(owned):
                    self.aff.create_unowned(cidr)
                else:
                    self.aff.claim(node, cidr)
                continue
            got = self.from_block(cidr, 1, handle, attrs, owner=None, ip=ip)
            if got:
                return got[0]
            retry.conflict()  # the block vanished between our reads (released as empty)
        raise AssertionError("unreachable: attempts() raises when exhausted")

    # -- helpers --------------------------------------------------------------------------
    def _settings_reader(self) -> Callable[[], IPAMSettings]:
        """A reader of the IPAM settings that reads them at most once, when first called."""
        cache: list[IPAMSettings] = []

        def read() -> IPAMSettings:
            if not cache:
                cache.append(self.view.settings())
            return cache[0]

        return read

    def _stamp(self, node: str, attrs: Mapping[str, str]) -> dict[str, str]:
        out = dict(attrs)
        out[ATTR_NODE] = node
        out[ATTR_TIMESTAMP] = format_timestamp(self.s.clock.now())
        return out

    def _rollback(self, got: list[Allocation]) -> None:
        by_block: dict[IPNetwork, list[ReleaseRequest]] = {}
        for a in got:
            by_block.setdefault(a.block, []).append(ReleaseRequest(a.ip, a.handle, a.sequence))
        for cidr, reqs in by_block.items():
            try:
                self.releaser.in_block(cidr, reqs)
            except IPAMError as err:  # pragma: no cover - needs a datastore failing mid-way
                log.warning("could not roll back %d address(es) in %s: %s", len(reqs), cidr, err)
        got.clear()
