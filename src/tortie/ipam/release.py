"""Releasing addresses: by handle, by address (optionally guarded), and a node's all.

Problem: a release must free exactly the addresses meant, even when it is stale: garbage
collection decides "this address leaked" at one moment and releases later, by which time the
address may have been freed and handed to a new pod. Guards make that harmless: a request may
name the handle and the sequence number it saw, and an address whose current allocation does
not match is left alone.

Invariants:
- Each block is changed in one transaction together with every handle it touches, guarded by
  all their revisions; the handle's count for that block is recomputed from the new block,
  so a handle record that drifted is healed by the next release that touches it.
- Releasing an unknown handle, or an address that is free, succeeds and releases nothing.
- The return value lists exactly the addresses this call freed.

Hazard: release by handle follows the handle record's block list; addresses of the handle
that a concurrent assign adds after the record was read are not released by this call.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tortie.datastore.api import Compare, Delete, Op, Put
from tortie.ipam.block import release as release_ordinals
from tortie.ipam.errors import InvalidRequestError
from tortie.ipam.store import IPAMStore, Versioned, revision_of
from tortie.model.ipam import (
    AllocationBlock,
    IPAddress,
    IPAMHandle,
    IPNetwork,
    block_key,
    blocks_prefix,
    cidr_from_block_key,
    handle_key,
)


@dataclass(frozen=True, slots=True)
class ReleaseRequest:
    """Free ``ip`` if it is allocated and, when given, still to ``handle`` at ``sequence``."""

    ip: IPAddress
    handle: str | None = None
    sequence: int | None = None


def as_request(item: IPAddress | str | ReleaseRequest) -> ReleaseRequest:
    if isinstance(item, ReleaseRequest):
        return item
    if isinstance(item, str):
        try:
            return ReleaseRequest(ipaddress.ip_address(item))
        except ValueError as err:
            raise InvalidRequestError(f"{item!r} is not an IP address") from err
    return ReleaseRequest(item)


def _handle_ops(
    handle: Versioned[IPAMHandle] | None, handle_id: str, cidr: IPNetwork, remaining: int
) -> tuple[Compare, Op | None]:
    """Guard and write for ``handle_id`` holding ``remaining`` addresses in ``cidr``."""
    guard = Compare(handle_key(handle_id), revision_of(handle))
    if handle is None:
        if remaining == 0:
            return guard, None
        current = IPAMHandle(handle_id)
    else:
        current = handle.value
    new = current.with_count(cidr, remaining)
    if not new.block:
        return guard, Delete(new.key) if handle is not None else None
    if new == current:
        return guard, None
    return guard, Put(new.key, new.to_json())


class Releaser:
    def __init__(self, store: IPAMStore) -> None:
        self.s = store

    def in_block(self, cidr: IPNetwork, requests: Sequence[ReleaseRequest]) -> list[IPAddress]:
        """Release the matching addresses of one block; returns those freed."""
        bkey = block_key(cidr)
        retry = self.s.attempts(f"releasing addresses in block {cidr}")
        for _ in retry:
            blk = self.s.block(cidr)
            if blk is None:
                return []
            b = blk.value
            ordinals = self._matching(b, requests)
            if not ordinals:
                return []
            new = release_ordinals(b, ordinals, self.s.clock.now())
            compares = [Compare(bkey, blk.revision)]
            ops: list[Op] = [Put(bkey, new.to_json())]
            touched = {h for o in ordinals if (h := self._handle_of(b, o)) is not None}
            for handle_id in sorted(touched):
                guard, op = _handle_ops(
                    self.s.handle(handle_id),
                    handle_id,
                    cidr,
                    len(new.ordinals_of_handle(handle_id)),
                )
                compares.append(guard)
                if op is not None:
                    ops.append(op)
            if self.s.txn(compares, ops):
                return [b.address(o) for o in ordinals]
            retry.conflict()
        raise AssertionError("unreachable: attempts() raises when exhausted")

    @staticmethod
    def _handle_of(b: AllocationBlock, ordinal: int) -> str | None:
        attr = b.attribute_of(ordinal)
        return None if attr is None else attr.handle_id

    @staticmethod
    def _matching(b: AllocationBlock, requests: Sequence[ReleaseRequest]) -> list[int]:
        ordinals: list[int] = []
        for r in requests:
            o = b.ordinal(r.ip)
            attr = b.attribute_of(o)
            if attr is None or o in ordinals:
                continue
            if r.handle is not None and attr.handle_id != r.handle:
                continue
            if r.sequence is not None and b.sequence_numbers[o] != r.sequence:
                continue
            ordinals.append(o)
        return ordinals

    def ips(self, items: Iterable[IPAddress | str | ReleaseRequest]) -> list[IPAddress]:
        """Release addresses wherever their blocks are (also blocks of deleted pools)."""
        requests = [as_request(i) for i in items]
        if not requests:
            return []
        # Block keys name their CIDR: list them once instead of guessing from pool sizes,
        # which may have changed or whose pool may be gone.
        blocks = [cidr_from_block_key(kv.key) for kv in self.s.store.list(blocks_prefix()).items]
        by_block: dict[IPNetwork, list[ReleaseRequest]] = defaultdict(list)
        for r in requests:
            for cidr in blocks:
                if r.ip in cidr:
                    by_block[cidr].append(r)
                    break
        released: list[IPAddress] = []
        for cidr, reqs in by_block.items():
            released += self.in_block(cidr, reqs)
        return released

    def handle(self, handle_id: str) -> list[IPAddress]:
        """Release every address of ``handle_id``; unknown handles release nothing."""
        first = self.s.handle(handle_id)
        if first is None:
            return []
        released: list[IPAddress] = []
        hkey = handle_key(handle_id)
        for cidr_text in first.value.counts:
            cidr = ipaddress.ip_network(cidr_text)
            bkey = block_key(cidr)
            retry = self.s.attempts(f"releasing handle {handle_id} in block {cidr}")
            for _ in retry:
                h = self.s.handle(handle_id)
                if h is None:
                    return released  # released meanwhile by someone else
                blk = self.s.block(cidr)
                ordinals = blk.value.ordinals_of_handle(handle_id) if blk else []
                compares = [Compare(hkey, h.revision), Compare(bkey, revision_of(blk))]
                ops: list[Op] = []
                if blk is not None and ordinals:
                    ops.append(
                        Put(
                            bkey,
                            release_ordinals(blk.value, ordinals, self.s.clock.now()).to_json(),
                        )
                    )
                _, op = _handle_ops(h, handle_id, cidr, 0)
                if op is not None:
                    ops.append(op)
                if not ops or self.s.txn(compares, ops):
                    if blk is not None:
                        released += [blk.value.address(o) for o in ordinals]
                    break
                retry.conflict()
        return released

    def matching_attrs(self, predicate_key: str, value: str) -> list[IPAddress]:
        """Release every allocation whose attribute ``predicate_key`` equals ``value``."""
        released: list[IPAddress] = []
        for blk in self.s.blocks():
            b = blk.value
            reqs = [
                ReleaseRequest(b.address(o), attr.handle_id, b.sequence_numbers[o])
                for o, attr in b.allocated()
                if attr.attrs.get(predicate_key) == value
            ]
            if reqs:
                released += self.in_block(b.cidr, reqs)
        return released
