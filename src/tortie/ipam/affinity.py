"""Host affinity: a node claims a block in two phases, and gives it back.

Problem: two nodes may pick the same free block at the same moment. Calico's answer, kept
here: (1) the node writes a *pending* affinity under its own key (both racers can do this);
(2) it creates the block naming itself as owner, guarded by "the block does not exist" (only
one racer can win); (3) it flips its affinity to *confirmed*, guarded by the block still
being its own. The loser sees someone else's block and withdraws its pending affinity.

Invariants:
- A confirmed affinity (node, cidr) is only written while the block exists and names the
  node (the write is guarded by the block's revision), so "confirmed => block is mine".
- Processes of the same node cooperate: whichever gets there first creates the pending
  affinity or the block, the others pick up from the state they find.
- Releasing an affinity deletes the affinity and either deletes the (empty) block or clears
  its owner, in one transaction guarded by both revisions, so an allocation racing the
  release either lands first (and the release backs off) or finds the block gone.

Hazards:
- A process that dies between phases leaves a pending affinity; the same node finishes the
  claim when it next picks that block, and ``ipam gc`` deletes it after the grace period.
- Sequence numbers of a newly created block start at the datastore revision, not 0: a block
  deleted and re-created must not repeat sequence numbers that a stale release may carry.
"""

from __future__ import annotations

import enum

from tortie.datastore.api import Compare, Delete, Op, Put
from tortie.ipam.block import with_affinity
from tortie.ipam.store import IPAMStore, revision_of
from tortie.model.ipam import (
    AffinityState,
    AllocationBlock,
    BlockAffinity,
    IPNetwork,
    affinity_key,
    block_key,
    host_affinity,
)


class ClaimResult(enum.Enum):
    MINE = "mine"  # the block is affine to the node and the affinity is confirmed
    TAKEN = "taken"  # another node owns the block


class AffinityManager:
    def __init__(self, store: IPAMStore) -> None:
        self.s = store

    def claim(self, node: str, cidr: IPNetwork) -> ClaimResult:
        """Claim ``cidr`` for ``node`` (create the block if needed); idempotent."""
        mine = host_affinity(node)
        akey, bkey = affinity_key(node, cidr), block_key(cidr)
        retry = self.s.attempts(f"claiming block {cidr} for node {node}")
        for _ in retry:
            blk = self.s.block(cidr)
            aff = self.s.affinity(node, cidr)
            owner = blk.value.affinity if blk is not None else None
            if owner is not None and owner != mine:
                # Lost (or never had a chance): withdraw a pending affinity of ours, if any.
                if aff is None or aff.value.state is not AffinityState.PENDING:
                    return ClaimResult.TAKEN
                if self.s.txn([Compare(akey, aff.revision)], [Delete(akey)]):
                    return ClaimResult.TAKEN
                retry.conflict()
                continue
            if aff is None:
                # Phase 1: announce the claim. Guarded on the block as read, so a block
                # someone else grabbed meanwhile sends us round again to the branch above.
                pending = BlockAffinity(node, cidr, AffinityState.PENDING, self.s.clock.now())
                if not self.s.txn(
                    [Compare(akey, 0), Compare(bkey, revision_of(blk))],
                    [Put(akey, pending.to_json())],
                ):
                    retry.conflict()
                continue
            if aff.value.state is AffinityState.PENDING_DELETION:
                return ClaimResult.TAKEN  # being released right now: pick another block
            if blk is None:
                # Phase 2: create the block as ours; only one claimer can create it.
                new = AllocationBlock.new(
                    cidr, mine, sequence_start=self.s.revision(), now=self.s.clock.now()
                )
                if not self.s.txn(
                    [Compare(bkey, 0), Compare(akey, aff.revision)], [Put(bkey, new.to_json())]
                ):
                    retry.conflict()
                continue
            if owner is None:
                # Phase 2 for an existing block without owner (its node was deleted).
                if not self.s.txn(
                    [Compare(bkey, blk.revision), Compare(akey, aff.revision)],
                    [Put(bkey, with_affinity(blk.value, mine).to_json())],
                ):
                    retry.conflict()
                continue
            if aff.value.state is AffinityState.CONFIRMED:
                return ClaimResult.MINE
            # Phase 3: confirm, guarded by the block still being ours at this revision.
            confirmed = BlockAffinity(node, cidr, AffinityState.CONFIRMED, aff.value.created_at)
            if self.s.txn(
                [Compare(akey, aff.revision), Compare(bkey, blk.revision)],
                [Put(akey, confirmed.to_json())],
            ):
                return ClaimResult.MINE
            retry.conflict()
        raise AssertionError("unreachable: attempts() raises when exhausted")

    def create_unowned(self, cidr: IPNetwork) -> bool:
        """Create block ``cidr`` without owner (if absent); returns whether this call did."""
        new = AllocationBlock.new(
            cidr, None, sequence_start=self.s.revision(), now=self.s.clock.now()
        )
        return self.s.txn([Compare(block_key(cidr), 0)], [Put(block_key(cidr), new.to_json())])

    def release(
        self,
        node: str,
        cidr: IPNetwork,
        *,
        require_empty: bool,
        empty_before: float | None = None,
    ) -> bool:
        """Drop ``node``'s affinity for ``cidr``; returns whether anything changed.

        An empty block owned by the node is deleted (its space returns to the pool), but
        only if it has been empty since before ``empty_before`` when that is given. A
        non-empty block keeps its addresses and loses its owner, unless ``require_empty``.
        """
        mine = host_affinity(node)
        akey, bkey = affinity_key(node, cidr), block_key(cidr)
        retry = self.s.attempts(f"releasing block {cidr} of node {node}")
        for _ in retry:
            aff = self.s.affinity(node, cidr)
            blk = self.s.block(cidr)
            ops: list[Op] = []
            if blk is not None and blk.value.affinity == mine:
                b = blk.value
                if b.in_use == 0:
                    if empty_before is not None and (
                        b.empty_since is None or b.empty_since > empty_before
                    ):
                        return False
                    ops.append(Delete(bkey))
                elif require_empty:
                    return False
                else:
                    ops.append(Put(bkey, with_affinity(b, None).to_json()))
            if aff is not None:
                ops.append(Delete(akey))
            if not ops:
                return False
            if self.s.txn([Compare(akey, revision_of(aff)), Compare(bkey, revision_of(blk))], ops):
                return True
            retry.conflict()
        raise AssertionError("unreachable: attempts() raises when exhausted")
