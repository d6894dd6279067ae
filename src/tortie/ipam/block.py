"""Pure transformations of an :class:`AllocationBlock`: allocate, release, re-affine.

Problem: the allocation bookkeeping (free list, attribute table, sequence numbers) must stay
consistent whatever the caller does; keeping it in pure functions lets the datastore code be
a thin compare-and-swap loop around them, and lets tests check the bookkeeping directly.

Invariants kept (see :mod:`tortie.model.ipam`): allocated ordinals are exactly those with an
attribute index; ``unallocated`` holds each free ordinal once; attributes unused by any
ordinal are dropped and indices renumbered (Calico's ``deleteUnusedAttributes``); every
allocation takes a fresh sequence number.

Hazard: these functions trust their inputs (ordinals in range, free when allocating); the
callers check and raise the user-facing errors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from tortie.model.ipam import AllocationAttribute, AllocationBlock


def allocate(
    block: AllocationBlock,
    count: int,
    handle_id: str,
    attrs: Mapping[str, str],
    *,
    ordinals: Sequence[int] | None = None,
) -> tuple[AllocationBlock, list[int]]:
    """Allocate ``ordinals`` (or the first ``count`` free ones); returns (new block, ordinals).

    Fewer than ``count`` are allocated when the block has fewer free.
    """
    chosen = list(ordinals) if ordinals is not None else list(block.unallocated[:count])
    if not chosen:
        return block, []
    attr = AllocationAttribute.make(handle_id, attrs)
    attributes = list(block.attributes)
    try:
        index = attributes.index(attr)
    except ValueError:
        index = len(attributes)
        attributes.append(attr)
    allocations = list(block.allocations)
    seqs = list(block.sequence_numbers)
    seq = block.sequence_number
    for o in chosen:
        allocations[o] = index
        seqs[o] = seq
        seq += 1
    taken = set(chosen)
    new = dataclasses.replace(
        block,
        allocations=tuple(allocations),
        unallocated=tuple(o for o in block.unallocated if o not in taken),
        attributes=tuple(attributes),
        sequence_number=seq,
        sequence_numbers=tuple(seqs),
        empty_since=None,
    )
    return new, chosen


def release(block: AllocationBlock, ordinals: Sequence[int], now: float) -> AllocationBlock:
    """Free ``ordinals`` (already-free ones are ignored); stamps ``empty_since`` if now empty."""
    allocations = list(block.allocations)
    seqs = list(block.sequence_numbers)
    freed: list[int] = []
    for o in ordinals:
        if allocations[o] is not None:
            allocations[o] = None
            seqs[o] = None
            freed.append(o)
    if not freed:
        return block
    # Renumber attributes so the table holds only those still referenced.
    used = sorted({a for a in allocations if a is not None})
    renumber = {old: new for new, old in enumerate(used)}
    allocations = [None if a is None else renumber[a] for a in allocations]
    attributes = tuple(block.attributes[old] for old in used)
    empty = not used
    return dataclasses.replace(
        block,
        allocations=tuple(allocations),
        unallocated=(*block.unallocated, *freed),
        attributes=attributes,
        sequence_numbers=tuple(seqs),
        empty_since=now if empty else block.empty_since,
    )


def with_affinity(block: AllocationBlock, affinity: str | None) -> AllocationBlock:
    return dataclasses.replace(block, affinity=affinity)
