"""Checks that need more than one resource: pools against pools, names against names.

Problem: a single IPPool can be valid on its own yet overlap another pool, or change a CIDR
that live blocks were carved from. These checks need the set of resources being applied and
the set already stored, and an import of thousands of pools must not take minutes.

Invariants:
- ``check_pools(new, existing)`` considers the pools that will exist afterwards: ``existing``
  with every pool named in ``new`` replaced by its new version. A pool is never compared
  with the version it replaces.
- A stored pool's ``cidr`` and ``blockSize`` cannot change (Calico refuses too: blocks
  already allocated from it would no longer fit). Other fields may change.
- Cost: ``check_pools`` and ``check_unique`` are O(n log n) and O(n) (a sweep in address
  order, sets): 5,000 pools check in milliseconds.
- A stored resource is at most :data:`MAX_RESOURCE_BYTES` of JSON (:func:`check_stored_size`).

Hazards:
- These checks are advisory unless the caller runs them inside the same datastore
  transaction (or compare-and-swap) that writes the pools, guarded by something every pool
  write changes (:mod:`tortie.datastore.resources` does); otherwise two concurrent applies
  can each pass and together overlap.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping, Sequence

from tortie.model.errors import ValidationError
from tortie.model.fields import FieldError, check_as_number
from tortie.model.resources import IPPool, Resource

__all__ = [
    "MAX_RESOURCE_BYTES",
    "check_pools",
    "check_stored_size",
    "check_unique",
    "validate_as_number",
]

# etcd's default --max-request-bytes (1.5 MiB), which is also what bounds a Kubernetes object:
# a larger resource could be written to SQLite but never to etcd (docs/limits.md).
MAX_RESOURCE_BYTES = 1536 * 1024


def check_stored_size(res: Resource, size: int) -> None:
    """Refuse a resource whose stored JSON takes ``size`` bytes, if over the limit."""
    if size > MAX_RESOURCE_BYTES:
        raise ValidationError(
            f"the resource takes {size} bytes stored; the limit is {MAX_RESOURCE_BYTES} "
            "(1.5 MiB, etcd's request limit): split it, or keep large data elsewhere",
            kind=res.KIND,
            name=res.name,
        )


def validate_as_number(number: int) -> int:
    """``number`` if it is a valid AS number (1..4294967295), else :class:`ValidationError`."""
    if isinstance(number, bool) or not isinstance(number, int):
        raise ValidationError(f"expected an AS number, got {number!r}")
    try:
        return check_as_number(number)
    except FieldError as exc:
        raise ValidationError(exc.message) from None


def check_unique(resources: Sequence[Resource]) -> None:
    """No resource appears twice (same kind, namespace and name) in one input."""
    seen: set[tuple[str, str | None, str]] = set()
    for res in resources:
        if res.identity in seen:
            where = f" in namespace {res.namespace}" if res.namespace else ""
            raise ValidationError(
                f"{res.KIND} {res.name!r}{where} is defined more than once; keep one",
                kind=res.KIND,
                name=res.name,
            )
        seen.add(res.identity)


def check_pools(new: Sequence[IPPool], existing: Sequence[IPPool]) -> None:
    """Raise :class:`ValidationError` if applying ``new`` over ``existing`` is not allowed.

    O(n log n) in the number of pools (an apply of thousands of pools is a normal import):
    each network is parsed once, and overlaps are found by one sweep in address order.
    """
    check_unique(new)
    stored = {p.name: p for p in existing}
    replaced = {p.name for p in new}
    for pool in new:
        old = stored.get(pool.name)
        if old is not None:
            _check_replacement(old, pool)
    after = [p for p in existing if p.name not in replaced] + list(new)
    # Input order of the new pools: the error names the first new pool (in the user's
    # order) that overlaps anything, as an all-pairs check in that order would.
    order = {p.name: i for i, p in enumerate(new)}
    first: tuple[int, IPPool, IPPool] | None = None
    for pool, other in _overlapping_pairs(after, order):
        for a, b in ((pool, other), (other, pool)):
            index = order.get(a.name)
            if index is None:
                continue
            # A new pool overlapping another new one: name the earlier as the culprit.
            if first is None or index < first[0]:
                first = (index, a, b)
    if first is not None:
        _, pool, other = first
        raise ValidationError(
            f"{pool.spec.cidr} overlaps IPPool {other.name} ({other.spec.cidr}); pools "
            "must not share addresses",
            field="spec.cidr",
            kind=pool.KIND,
            name=pool.name,
        )


def _overlapping_pairs(
    pools: Sequence[IPPool], new: Mapping[str, int]
) -> Iterator[tuple[IPPool, IPPool]]:
    """Pairs of overlapping pools, at least one of each pair named in ``new``.

    Two CIDR networks overlap only if one contains the other. Sorted by (family, first
    address, prefix length), the networks that contain the current one are exactly those
    still "open" (their last address is not behind its first), and they form a chain of
    containment: a stack, each pool pushed and popped once. Every new pool that overlaps
    anything is in some pair: if an open network contains it, it is paired when it comes; if
    it contains later ones, the first of those comes right after it, with it on top of the
    stack. One pair per pool at most, so a chain of duplicates in a corrupt store costs
    O(n), not O(n^2).
    """
    spans = sorted(
        (
            (net.version, int(net.network_address), net.prefixlen, int(net.broadcast_address), i)
            for i, net in enumerate(ipaddress.ip_network(p.spec.cidr) for p in pools)
        ),
    )
    # (family, last address, index into pools, index of the innermost new pool at or below
    # this entry or -1): the last field makes the lookup for an old pool O(1).
    stack: list[tuple[int, int, int, int]] = []
    for version, start, _prefix, last, i in spans:
        while stack and (stack[-1][0] != version or stack[-1][1] < start):
            stack.pop()
        pool = pools[i]
        is_new = pool.name in new
        if stack:
            # Every open network contains this one. A new pool is reported with the innermost
            # of them; an old one with the innermost new one, if any (an overlap among old
            # pools alone is not this apply's doing: 'tortie ipam check' is for that).
            if is_new:
                yield pool, pools[stack[-1][2]]
            elif stack[-1][3] >= 0:
                yield pool, pools[stack[-1][3]]
        below = stack[-1][3] if stack else -1
        stack.append((version, last, i, i if is_new else below))


def _check_replacement(old: IPPool, new: IPPool) -> None:
    if old.spec.cidr != new.spec.cidr:
        raise ValidationError(
            f"cannot change the CIDR of an existing pool ({old.spec.cidr} -> {new.spec.cidr}); "
            "create a new pool, then disable and delete this one",
            field="spec.cidr",
            kind=new.KIND,
            name=new.name,
        )
    if old.spec.block_size != new.spec.block_size:
        raise ValidationError(
            f"cannot change the blockSize of an existing pool ({old.spec.block_size} -> "
            f"{new.spec.block_size}); create a new pool instead",
            field="spec.blockSize",
            kind=new.KIND,
            name=new.name,
        )
