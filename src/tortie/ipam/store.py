"""Typed reads of IPAM keys and the bounded compare-and-swap retry loop.

Problem: every IPAM write is "read some keys, compute, write them back only if none changed";
this module gives the reads (decoded, with their mod revisions) and the loop around them.

Invariants:
- A :class:`Versioned` value carries the ``mod_revision`` it was read at; writes are guarded
  with :class:`Compare` on exactly those revisions (0 = "still absent"), so a write computed
  from stale reads never lands.
- :meth:`IPAMStore.attempts` yields at most ``max_retries`` times (Calico's 100), then raises
  :class:`TooManyConflictsError`: no caller loops forever.

Hazards:
- Back-off sleeps through the injected clock with jitter from the injected RNG: without
  jitter, processes that collided once tend to collide again in lock-step.
- A corrupt value raises :class:`IPAMDataError` with its key; callers that scan everything
  (check) use the ``*_lenient`` listings, which return the bad keys instead.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from tortie.datastore.api import Compare, Datastore, KeyValue, Op
from tortie.ipam.clock import Clock
from tortie.ipam.errors import TooManyConflictsError
from tortie.model.ipam import (
    AllocationBlock,
    BlockAffinity,
    IPAMDataError,
    IPAMHandle,
    IPNetwork,
    affinities_prefix,
    affinity_key,
    block_key,
    blocks_prefix,
    handle_key,
    handles_prefix,
)

T = TypeVar("T")

DEFAULT_MAX_RETRIES = 100
_MAX_BACKOFF = 0.02  # seconds: contention here is short transactions, not long holds


@dataclass(frozen=True, slots=True)
class Versioned(Generic[T]):
    value: T
    revision: int  # the key's mod_revision when read


def revision_of(v: Versioned[T] | None) -> int:
    """The guard revision for a value read as ``v`` (0: it was absent)."""
    return 0 if v is None else v.revision


def _decode_block(kv: KeyValue) -> AllocationBlock:
    return AllocationBlock.from_json(kv.value, kv.key)


def _load_doc(kv: KeyValue) -> dict[str, Any]:
    try:
        doc = json.loads(kv.value)
    except ValueError as err:
        raise IPAMDataError(f"{kv.key}: not JSON ({err})") from err
    except RecursionError:  # json recurses per level: thousands deep is a traceback otherwise
        raise IPAMDataError(f"{kv.key}: JSON nested too deep to read") from None
    if not isinstance(doc, dict):
        raise IPAMDataError(f"{kv.key}: expected a JSON object")
    return doc


def _decode_handle(kv: KeyValue) -> IPAMHandle:
    return IPAMHandle.from_kv(kv.key, kv.value)


def _decode_affinity(kv: KeyValue) -> BlockAffinity:
    return BlockAffinity.from_kv(kv.key, kv.value)


def _decode_all(
    items: Sequence[KeyValue], decode: Callable[[KeyValue], T]
) -> tuple[list[Versioned[T]], list[tuple[str, str]]]:
    good: list[Versioned[T]] = []
    bad: list[tuple[str, str]] = []
    for kv in items:
        try:
            good.append(Versioned(decode(kv), kv.mod_revision))
        except IPAMDataError as err:
            bad.append((kv.key, str(err)))
    return good, bad


def _strict(result: tuple[list[Versioned[T]], list[tuple[str, str]]]) -> list[Versioned[T]]:
    good, bad = result
    if bad:
        raise IPAMDataError(bad[0][1])
    return good


class IPAMStore:
    def __init__(
        self,
        store: Datastore,
        clock: Clock,
        rng: random.Random,
        max_retries: int = DEFAULT_MAX_RETRIES,
    ) -> None:
        self.store = store
        self.clock = clock
        self.rng = rng
        self.max_retries = max_retries

    # -- single keys ----------------------------------------------------------------------
    def block(
        self, cidr: IPNetwork, *, skip_full: bool = False
    ) -> Versioned[AllocationBlock] | None:
        """The block, or None if absent (or, with ``skip_full``, without a free address:
        scanning a node's full blocks then costs a JSON parse each, not a full decode)."""
        kv = self.store.get(block_key(cidr))
        if kv is None:
            return None
        if not skip_full:
            return Versioned(_decode_block(kv), kv.mod_revision)
        doc = _load_doc(kv)
        if AllocationBlock.is_full(doc):
            return None
        return Versioned(AllocationBlock.from_doc(doc, kv.key), kv.mod_revision)

    def handle(self, handle_id: str) -> Versioned[IPAMHandle] | None:
        kv = self.store.get(handle_key(handle_id))
        return None if kv is None else Versioned(_decode_handle(kv), kv.mod_revision)

    def affinity(self, node: str, cidr: IPNetwork) -> Versioned[BlockAffinity] | None:
        kv = self.store.get(affinity_key(node, cidr))
        return None if kv is None else Versioned(_decode_affinity(kv), kv.mod_revision)

    # -- listings -------------------------------------------------------------------------
    def blocks_lenient(
        self, version: int | None = None
    ) -> tuple[list[Versioned[AllocationBlock]], list[tuple[str, str]]]:
        return _decode_all(self.store.list(blocks_prefix(version)).items, _decode_block)

    def blocks(self, version: int | None = None) -> list[Versioned[AllocationBlock]]:
        return _strict(self.blocks_lenient(version))

    def affinities_lenient(
        self, node: str | None = None
    ) -> tuple[list[Versioned[BlockAffinity]], list[tuple[str, str]]]:
        return _decode_all(self.store.list(affinities_prefix(node)).items, _decode_affinity)

    def affinities(self, node: str | None = None) -> list[Versioned[BlockAffinity]]:
        return _strict(self.affinities_lenient(node))

    def handles_lenient(self) -> tuple[list[Versioned[IPAMHandle]], list[tuple[str, str]]]:
        return _decode_all(self.store.list(handles_prefix()).items, _decode_handle)

    def block_keys(self, version: int) -> set[str]:
        return {kv.key for kv in self.store.list(blocks_prefix(version)).items}

    # -- writes ---------------------------------------------------------------------------
    def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> bool:
        return self.store.txn(compares, ops).succeeded

    def revision(self) -> int:
        return self.store.revision()

    def attempts(self, what: str) -> Retry:
        """A bounded retry loop: ``for _ in r: ... if txn(...): return ...; r.conflict()``."""
        return Retry(self, what)


class Retry:
    """Iterates at most ``max_retries`` times, then raises; :meth:`conflict` backs off.

    Loop turns that are progress (a claim moving from one phase to the next) cost a turn
    but no sleep; only lost compare-and-swaps sleep.
    """

    def __init__(self, store: IPAMStore, what: str) -> None:
        self._store = store
        self._what = what
        self._failures = 0

    def __iter__(self) -> Iterator[int]:
        yield from range(self._store.max_retries)
        raise TooManyConflictsError(
            f"{self._what}: the datastore changed on each of {self._store.max_retries} "
            "attempts; another writer is very busy or looping, try again"
        )

    def conflict(self) -> None:
        """A compare-and-swap lost: wait a little (jittered, growing) before the next turn."""
        self._failures += 1
        if self._failures > 1:
            # The first retry is immediate: most conflicts are one other writer. Jitter
            # keeps processes that collided once from colliding again in lock-step.
            cap = min(_MAX_BACKOFF, 0.0005 * 2 ** min(self._failures, 10))
            self._store.clock.sleep(self._store.rng.uniform(0.0, cap))
