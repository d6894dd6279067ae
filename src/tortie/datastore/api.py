"""The datastore contract: a revisioned key-value store with etcd v3 semantics.

Problem: tortie's state (resources, IPAM blocks, affinities, handles) lives in SQLite, etcd or
memory, and the layers above must not care which. Every backend implements :class:`Datastore`
with the same semantics, proven by one conformance suite (tests/unit/datastore and
tests/interop/test_etcd_conformance.py).

Invariants (what every backend guarantees):
- The store has one global revision counter. Every successful write that changes something
  (create, update, put, delete, or a transaction with at least one effective op) increments it
  by exactly one; all ops of one transaction share that revision. A transaction whose ops are
  all deletes of absent keys takes no revision (etcd's behaviour). Two ops on one key in one
  transaction are rejected with :class:`DatastoreError` (etcd: "duplicate key"). Revisions
  start at 1 for an empty store (etcd's convention: the first write makes it 2), so 0 never
  names a real state.
- ``KeyValue.mod_revision`` is the revision of the last write to that key;
  ``create_revision`` that of its creation. Compare-and-swap compares ``mod_revision``;
  ``0`` in a :class:`Compare` (or ``create``) means "the key must not exist".
- ``list(prefix)`` is a consistent snapshot and returns the store revision it was read at.
  ``watch(prefix, start_revision=list.revision + 1)`` then delivers exactly the changes after
  the snapshot, in revision order, none lost, none repeated.
- A watch asked to start before the compaction horizon raises :class:`CompactedError` (from
  ``watch`` or from ``Watch.next``): the caller must re-list (the syncer does this).
- Keys are strings; values are UTF-8 text (tortie stores JSON).
- Limits: etcd takes at most 128 ops per transaction and about 1.5 MiB per request by default;
  beyond them the etcd backend raises a clear :class:`DatastoreError`. Callers that must stay
  all-or-nothing (``tortie apply``) therefore cap one apply at 128 resources on etcd.
- ``compact(rev)`` with a future revision clamps to the current one. A watch from exactly the
  horizon sees every event at and after it (the etcd backend compacts one revision lower to
  keep a delete at the horizon visible: etcd 3.4 drops it otherwise).

Hazards:
- Backends may be used from several threads; each method is individually safe. A ``Watch`` is
  read by one thread; its ``close()`` is safe from any thread and wakes a blocked ``next``.
- Errors: backends raise only :class:`DatastoreError` subclasses; driver exceptions are
  translated. :class:`UnavailableError` names the datastore URL so users know what to fix.

Identity (docs/datastore.md): every store has an id written once, when it is created
(``tortie datastore init``, an agent's first start), and ``identity()`` returns it. Opening
never creates a store: a missing one is :class:`DatastoreMissingError`. A store object that
finds another id, or a revision lower than one it saw, at the same URL raises
:class:`DatastoreReplacedError`: whoever acts on the store's content (the node agent) must not
act on a replaced or rolled-back store. A store known to be malformed refuses writes
(:class:`CorruptDatastoreError`).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from tortie.errors import TortieError

# ---------------------------------------------------------------------------------------------
# Errors


class DatastoreError(TortieError):
    """Base of every datastore error."""


class NotFoundError(DatastoreError):
    def __init__(self, key: str) -> None:
        super().__init__(f"{key}: not found")
        self.key = key


class AlreadyExistsError(DatastoreError):
    def __init__(self, key: str) -> None:
        super().__init__(f"{key}: already exists")
        self.key = key


class ConflictError(DatastoreError):
    """A compare-and-swap lost: the key changed since the caller read it."""

    def __init__(self, key: str, expected: int, actual: int) -> None:
        super().__init__(
            f"{key}: modified concurrently (expected revision {expected}, found {actual}); "
            "read it again and retry"
        )
        self.key = key
        self.expected = expected
        self.actual = actual


class CompactedError(DatastoreError):
    """The requested watch start revision is older than the compaction horizon: re-list."""

    def __init__(self, requested: int, compact_revision: int) -> None:
        super().__init__(
            f"revision {requested} has been compacted (compaction horizon {compact_revision}); "
            "resync from a fresh list"
        )
        self.requested = requested
        self.compact_revision = compact_revision


class UnavailableError(DatastoreError):
    """The datastore cannot be reached or opened. The message names the URL."""

    def __init__(self, url: str, detail: str) -> None:
        super().__init__(f"datastore {url} is unavailable: {detail}")
        self.url = url
        self.detail = detail


class DatastoreMissingError(UnavailableError):
    """There is no datastore at the URL (an SQLite file that does not exist). Opening never
    creates one: creation is explicit (``tortie datastore init``, an agent's first start). It may
    come back (a file moved away for a moment), so waiters retry."""


class NotADatastoreError(UnavailableError):
    """Something is at the URL's path, but not a tortie datastore: it was left untouched."""


class DatastoreReplacedError(DatastoreError):
    """The store at the URL is not the one this object (or an agent's record) knew: another
    id, or a revision lower than one already seen (a store restored from an older copy, or
    commits lost). Acting on it could undo work (re-hand out addresses): callers stop."""

    def __init__(self, url: str, detail: str) -> None:
        super().__init__(
            f"datastore {url} is not the one in use until now: {detail}. Nothing was written; "
            "see 'Identity' in docs/datastore.md to put the right store back or accept this one"
        )
        self.url = url
        self.detail = detail


class CorruptDatastoreError(DatastoreError):
    """The store is known to be malformed: every further write is refused (a write on broken
    pages can spread the damage, and a read that missed pages would hand out taken addresses)."""


class InvalidURLError(DatastoreError):
    def __init__(self, url: str, detail: str) -> None:
        super().__init__(
            f"invalid datastore URL {url!r}: {detail} "
            "(expected sqlite:///path/to/file.db, etcd://host:port[,host:port] or memory://)"
        )
        self.url = url


# ---------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: str
    create_revision: int
    mod_revision: int


@dataclass(frozen=True, slots=True)
class ListResult:
    items: tuple[KeyValue, ...]  # sorted by key
    revision: int  # the store revision the snapshot was read at


@dataclass(frozen=True, slots=True)
class Compare:
    """Transaction guard: ``key``'s mod_revision must equal ``mod_revision`` (0 = absent)."""

    key: str
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: str


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete ``key`` in a transaction. Deleting an absent key is a no-op (etcd semantics);
    guard with a :class:`Compare` to require presence."""

    key: str


Op = Put | Delete


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int  # the new revision if succeeded, else the current one


class EventType(enum.Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: EventType
    key: str
    value: str | None  # the new value for PUT, None for DELETE
    mod_revision: int  # the revision of this change


# ---------------------------------------------------------------------------------------------
# Protocols


@runtime_checkable
class Watch(Protocol):
    def next(self, timeout: float | None = None) -> list[WatchEvent]:
        """Block until events arrive (or ``timeout`` seconds pass: then return ``[]``).

        Raises :class:`CompactedError` if the history needed was compacted, and
        :class:`UnavailableError` if the store went away.
        """
        ...

    def close(self) -> None: ...


# The key of an etcd store's identity (the SQLite backend keeps it in its ``meta`` table).
# Only this key under /tortie/meta/ is the identity; other /tortie/meta/ keys are not resources.
IDENTITY_KEY = "/tortie/meta/datastore"


@runtime_checkable
class Datastore(Protocol):
    @property
    def url(self) -> str: ...

    def identity(self) -> str:
        """The id written when the store was created; ``""`` for a store that has none yet
        (an etcd cluster nobody initialised, an SQLite file of schema 1): ``tortie datastore
        init`` gives it one."""
        ...

    def get(self, key: str) -> KeyValue | None: ...

    def list(self, prefix: str) -> ListResult: ...

    def create(self, key: str, value: str) -> KeyValue:
        """Raises :class:`AlreadyExistsError`."""
        ...

    def update(self, key: str, value: str, mod_revision: int) -> KeyValue:
        """CAS write. Raises :class:`NotFoundError` or :class:`ConflictError`."""
        ...

    def put(self, key: str, value: str) -> KeyValue:
        """Unconditional write (create or replace)."""
        ...

    def delete(self, key: str, mod_revision: int | None = None) -> None:
        """Raises :class:`NotFoundError`, or :class:`ConflictError` if ``mod_revision`` is
        given and differs."""
        ...

    def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        """All compares hold -> apply all ops atomically at one new revision; else nothing."""
        ...

    def revision(self) -> int: ...

    def watch(self, prefix: str, start_revision: int) -> Watch:
        """Events for keys under ``prefix`` with mod_revision >= ``start_revision``."""
        ...

    def compact(self, revision: int) -> None:
        """Forget history before ``revision``; watches starting before it get CompactedError."""
        ...

    def close(self) -> None: ...
