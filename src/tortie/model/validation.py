"""Checks that need more than one resource: pools against pools, names against names.

Problem: a single IPPool can be valid on its own yet overlap another pool, or change a CIDR
that live blocks were carved from. These checks need the set of resources being applied and
the set already stored.

Invariants:
- ``check_pools(new, existing)`` considers the pools that will exist afterwards: ``existing``
  with every pool named in ``new`` replaced by its new version. A pool is never compared
  with the version it replaces.
- A stored pool's ``cidr`` and ``blockSize`` cannot change (Calico refuses too: blocks
  already allocated from it would no longer fit). Other fields may change.

Hazards:
- These checks are advisory unless the caller runs them inside the same datastore
  transaction (or compare-and-swap) that writes the pools; two concurrent applies can each
  pass and together overlap.
"""

from __future__ import annotations

from collections.abc import Sequence

from tortie.model.errors import ValidationError
from tortie.model.fields import FieldError, check_as_number
from tortie.model.resources import IPPool, Resource

__all__ = ["check_pools", "check_unique", "validate_as_number"]


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
    """Raise :class:`ValidationError` if applying ``new`` over ``existing`` is not allowed."""
    check_unique(new)
    stored = {p.name: p for p in existing}
    replaced = {p.name for p in new}
    for pool in new:
        old = stored.get(pool.name)
        if old is not None:
            _check_replacement(old, pool)
    after = [p for p in existing if p.name not in replaced] + list(new)
    for pool in new:
        for other in after:
            if other.name == pool.name or other.ip_version != pool.ip_version:
                continue
            if pool.network.overlaps(other.network):
                raise ValidationError(
                    f"{pool.spec.cidr} overlaps IPPool {other.name} ({other.spec.cidr}); pools "
                    "must not share addresses",
                    field="spec.cidr",
                    kind=pool.KIND,
                    name=pool.name,
                )


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
