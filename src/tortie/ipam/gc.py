"""Fixing what :mod:`tortie.ipam.check` found: ``tortie ipam gc`` and ``release --from-report``.

Problem: leaks must be reclaimed, but a report is stale the moment it is written: the address
may have been released and handed to someone else since, the pending affinity may belong to
a claim that was in flight. Every fix here is therefore guarded by exactly what the report
saw, and gc acts only on findings older than a grace period (default 15 minutes, Calico's).

Fixes (others, such as addresses outside every pool or with two owners, need a human):
- ``leaked-address``: release the address only if it still belongs to the same handle at the
  same sequence number.
- ``handle-without-addresses`` / ``handle-count-mismatch``: rewrite (or delete) the handle
  record from what the blocks hold, guarded by the handle's and those blocks' revisions.
- ``affinity-without-block``: delete the affinity if it is unchanged since the report and
  its block is still missing or someone else's.
- ``block-without-affinity``: clear the block's owner (or delete it if empty) if the block
  is unchanged and still has no affinity record.
Plus, in gc: empty blocks whose affinity is older than the grace period are released.

The age of a leaked address is the time since it was allocated (its ``timestamp``
attribute): that is the window in which a pod legitimately has an address but no endpoint
yet (CNI ADD between assigning and writing the endpoint). An address whose endpoint went
away later is released at the next gc; if its pod was being deleted, the CNI DEL's own
release then finds nothing, which is success.

Invariant: a fix never frees an address, record or block that changed since it was seen.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from tortie.datastore.api import Compare, Delete, Op, Put
from tortie.ipam.affinity import AffinityManager
from tortie.ipam.block import with_affinity
from tortie.ipam.check import CheckReport, Problem, ProblemKind
from tortie.ipam.release import Releaser, ReleaseRequest
from tortie.ipam.store import IPAMStore, revision_of
from tortie.model.ipam import (
    IPAddress,
    IPAMHandle,
    IPNetwork,
    affinity_key,
    block_key,
    handle_key,
    host_affinity,
)

DEFAULT_GRACE_SECONDS = 15 * 60.0
_HANDLE_KINDS = (ProblemKind.HANDLE_WITHOUT_ADDRESSES, ProblemKind.HANDLE_COUNT_MISMATCH)


@dataclass(slots=True)
class GCResult:
    released: list[IPAddress] = field(default_factory=list)
    handles_fixed: list[str] = field(default_factory=list)
    affinities_removed: list[str] = field(default_factory=list)  # "<node> <cidr>"
    blocks_unowned: list[IPNetwork] = field(default_factory=list)
    empty_blocks_released: list[IPNetwork] = field(default_factory=list)
    waiting: int = 0  # problems younger than the grace period
    skipped: int = 0  # stale findings (changed since seen) and problems needing a human

    def summary(self) -> str:
        return (
            f"released {len(self.released)} address(es), fixed {len(self.handles_fixed)} "
            f"handle(s), removed {len(self.affinities_removed)} affinity(ies), "
            f"released {len(self.empty_blocks_released)} empty block(s), "
            f"cleared owner of {len(self.blocks_unowned)} block(s); "
            f"{self.waiting} within the grace period, {self.skipped} left as they are"
        )


class Collector:
    def __init__(self, store: IPAMStore, releaser: Releaser, affinity: AffinityManager) -> None:
        self.s = store
        self.releaser = releaser
        self.aff = affinity

    def apply(self, report: CheckReport, *, older_than: float | None) -> GCResult:
        """Fix the report's problems first seen before ``older_than`` (None: all of them)."""
        result = GCResult()
        leaks: list[Problem] = []
        for p in report.problems:
            if older_than is not None and p.since is not None and p.since > older_than:
                result.waiting += 1
                continue
            if p.kind is ProblemKind.LEAKED_ADDRESS:
                leaks.append(p)
            elif p.kind in _HANDLE_KINDS and p.handle:
                self._count(result.handles_fixed, p.handle, self.fix_handle(p.handle), result)
            elif p.kind is ProblemKind.AFFINITY_WITHOUT_BLOCK:
                if self._drop_affinity(p):
                    result.affinities_removed.append(f"{p.node} {p.block}")
                else:
                    result.skipped += 1
            elif p.kind is ProblemKind.BLOCK_WITHOUT_AFFINITY:
                cidr = self._unown_block(p)
                if cidr is not None:
                    result.blocks_unowned.append(cidr)
                else:
                    result.skipped += 1
            else:
                result.skipped += 1
        released = self._release_leaks(leaks)
        result.released += released
        result.skipped += len(leaks) - len(released)
        return result

    @staticmethod
    def _count(into: list[str], what: str, done: bool, result: GCResult) -> None:
        if done:
            into.append(what)
        else:
            result.skipped += 1

    def _release_leaks(self, leaks: Iterable[Problem]) -> list[IPAddress]:
        by_block: dict[str, list[ReleaseRequest]] = {}
        for p in leaks:
            if p.ip is None or p.block is None or p.sequence is None:
                continue  # without a sequence number a stale report could free a reused IP
            by_block.setdefault(p.block, []).append(
                ReleaseRequest(ipaddress.ip_address(p.ip), p.handle, p.sequence)
            )
        released: list[IPAddress] = []
        for cidr, reqs in by_block.items():
            released += self.releaser.in_block(ipaddress.ip_network(cidr), reqs)
        return released

    def fix_handle(self, handle_id: str) -> bool:
        """Make ``handle_id``'s record match the blocks; returns whether it changed."""
        hkey = handle_key(handle_id)
        retry = self.s.attempts(f"repairing handle {handle_id}")
        for _ in retry:
            h = self.s.handle(handle_id)
            blocks = self.s.blocks()
            actual: Counter[str] = Counter()
            compares = [Compare(hkey, revision_of(h))]
            named = set(h.value.counts) if h is not None else set()
            for blk in blocks:
                n = len(blk.value.ordinals_of_handle(handle_id))
                if n:
                    actual[str(blk.value.cidr)] = n
                if n or str(blk.value.cidr) in named:
                    compares.append(Compare(block_key(blk.value.cidr), blk.revision))
            want = IPAMHandle(handle_id, tuple(sorted(actual.items())))
            if h is not None and h.value == want:
                return False
            op: Op = Put(hkey, want.to_json()) if want.block else Delete(hkey)
            if h is None and not want.block:
                return False
            if self.s.txn(compares, [op]):
                return True
            retry.conflict()
        raise AssertionError("unreachable: attempts() raises when exhausted")

    def _drop_affinity(self, p: Problem) -> bool:
        if p.node is None or p.block is None or p.revision is None:
            return False
        cidr = ipaddress.ip_network(p.block)
        blk = self.s.block(cidr)
        if blk is not None and blk.value.affinity == host_affinity(p.node):
            return False  # the claim completed since the report: nothing to fix
        akey = affinity_key(p.node, cidr)
        return self.s.txn(
            [Compare(akey, p.revision), Compare(block_key(cidr), revision_of(blk))],
            [Delete(akey)],
        )

    def _unown_block(self, p: Problem) -> IPNetwork | None:
        if p.node is None or p.block is None or p.revision is None:
            return None
        cidr = ipaddress.ip_network(p.block)
        blk = self.s.block(cidr)
        if blk is None or blk.revision != p.revision:
            return None
        bkey = block_key(cidr)
        op: Op = (
            Delete(bkey)
            if blk.value.in_use == 0
            else Put(bkey, with_affinity(blk.value, None).to_json())
        )
        guards = [Compare(bkey, blk.revision), Compare(affinity_key(p.node, cidr), 0)]
        return cidr if self.s.txn(guards, [op]) else None

    def release_empty_blocks(self, empty_before: float) -> list[IPNetwork]:
        """Release every owned block that has been empty since before ``empty_before``."""
        released: list[IPNetwork] = []
        for blk in self.s.blocks():
            b = blk.value
            if b.node is None or b.in_use or b.empty_since is None:
                continue
            if b.empty_since > empty_before:
                continue
            if self.aff.release(b.node, b.cidr, require_empty=True, empty_before=empty_before):
                released.append(b.cidr)
        return released
