"""In-memory datastore: the reference implementation of the contract in :mod:`.api`.

For unit tests and for anything that needs a store for one process only. It keeps the whole
change history (until compacted) so watches behave exactly like etcd's.

Invariants: one lock guards everything; the history list is in revision order; a watch reads
history from its cursor, so none is lost or repeated. A write that changes nothing (a
transaction whose ops only delete absent keys) does not take a revision, as in etcd.

Hazards: ``txn`` rejects two ops on one key (etcd answers "duplicate key given in txn
request"), so code tested here does not break on etcd.
"""

from __future__ import annotations

import builtins
import threading
import time
import uuid
from collections.abc import Sequence

from tortie.datastore.api import (
    AlreadyExistsError,
    CompactedError,
    Compare,
    ConflictError,
    DatastoreError,
    Delete,
    EventType,
    KeyValue,
    ListResult,
    NotFoundError,
    Op,
    Put,
    TxnResult,
    WatchEvent,
)


class MemoryDatastore:
    def __init__(self, url: str = "memory://") -> None:
        self._url = url
        self._lock = threading.Condition()
        self._data: dict[str, KeyValue] = {}
        self._rev = 1
        self._history: list[WatchEvent] = []
        self._compact_rev = 0
        self._closed = False
        self._identity = str(uuid.uuid4())  # a new store per object: a new id

    @property
    def url(self) -> str:
        return self._url

    def identity(self) -> str:
        return self._identity

    # -- reads ----------------------------------------------------------------------------
    def get(self, key: str) -> KeyValue | None:
        with self._lock:
            return self._data.get(key)

    def list(self, prefix: str) -> ListResult:
        with self._lock:
            items = tuple(kv for k, kv in sorted(self._data.items()) if k.startswith(prefix))
            return ListResult(items=items, revision=self._rev)

    def revision(self) -> int:
        with self._lock:
            return self._rev

    # -- writes ---------------------------------------------------------------------------
    def _apply(self, ops: Sequence[Op]) -> int:
        """Apply ops at one new revision. Caller holds the lock and has checked guards.

        Returns the new revision, or the current one if nothing changed (etcd does not take a
        revision for a transaction whose deletes all missed)."""
        if not any(isinstance(op, Put) or op.key in self._data for op in ops):
            return self._rev
        rev = self._rev + 1
        for op in ops:
            if isinstance(op, Put):
                old = self._data.get(op.key)
                created = old.create_revision if old else rev
                self._data[op.key] = KeyValue(op.key, op.value, created, rev)
                self._history.append(WatchEvent(EventType.PUT, op.key, op.value, rev))
            elif op.key in self._data:
                del self._data[op.key]
                self._history.append(WatchEvent(EventType.DELETE, op.key, None, rev))
        self._rev = rev
        self._lock.notify_all()
        return rev

    def create(self, key: str, value: str) -> KeyValue:
        with self._lock:
            if key in self._data:
                raise AlreadyExistsError(key)
            self._apply([Put(key, value)])
            return self._data[key]

    def update(self, key: str, value: str, mod_revision: int) -> KeyValue:
        with self._lock:
            old = self._data.get(key)
            if old is None:
                raise NotFoundError(key)
            if old.mod_revision != mod_revision:
                raise ConflictError(key, mod_revision, old.mod_revision)
            self._apply([Put(key, value)])
            return self._data[key]

    def put(self, key: str, value: str) -> KeyValue:
        with self._lock:
            self._apply([Put(key, value)])
            return self._data[key]

    def delete(self, key: str, mod_revision: int | None = None) -> None:
        with self._lock:
            old = self._data.get(key)
            if old is None:
                raise NotFoundError(key)
            if mod_revision is not None and old.mod_revision != mod_revision:
                raise ConflictError(key, mod_revision, old.mod_revision)
            self._apply([Delete(key)])

    def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        check_distinct_keys(ops)
        with self._lock:
            for c in compares:
                kv = self._data.get(c.key)
                if (kv.mod_revision if kv else 0) != c.mod_revision:
                    return TxnResult(False, self._rev)
            if not ops:
                return TxnResult(True, self._rev)
            return TxnResult(True, self._apply(ops))

    # -- history --------------------------------------------------------------------------
    def compact(self, revision: int) -> None:
        with self._lock:
            revision = min(revision, self._rev)
            self._history = [e for e in self._history if e.mod_revision >= revision]
            self._compact_rev = max(self._compact_rev, revision)

    def watch(self, prefix: str, start_revision: int) -> _MemoryWatch:
        with self._lock:
            if start_revision < self._compact_rev:
                raise CompactedError(start_revision, self._compact_rev)
        return _MemoryWatch(self, prefix, start_revision)

    def _events_from(self, prefix: str, start: int) -> builtins.list[WatchEvent]:
        # builtins.list: inside this class, ``list`` names the method.
        # Caller holds the lock.
        if start < self._compact_rev:
            raise CompactedError(start, self._compact_rev)
        return [e for e in self._history if e.mod_revision >= start and e.key.startswith(prefix)]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()


class _MemoryWatch:
    def __init__(self, store: MemoryDatastore, prefix: str, start: int) -> None:
        self._store = store
        self._prefix = prefix
        self._next_rev = start
        self._closed = False

    def next(self, timeout: float | None = None) -> list[WatchEvent]:
        store = self._store
        deadline = None if timeout is None else time.monotonic() + timeout
        with store._lock:

            def ready() -> bool:
                return self._closed or store._closed or store._rev >= self._next_rev

            # Loop: writes outside our prefix wake us too; returning [] for them would break
            # the contract that [] means the timeout passed.
            while True:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not store._lock.wait_for(ready, remaining):
                    return []
                if self._closed or store._closed:
                    return []
                events = store._events_from(self._prefix, self._next_rev)
                self._next_rev = store._rev + 1
                if events or remaining == 0.0:
                    return events

    def close(self) -> None:
        with self._store._lock:
            self._closed = True
            self._store._lock.notify_all()


def check_distinct_keys(ops: Sequence[Op]) -> None:
    """Reject two ops on one key in a transaction, as etcd does (so all backends agree)."""
    seen: set[str] = set()
    for op in ops:
        if op.key in seen:
            raise DatastoreError(
                f"{op.key}: more than one op on this key in one transaction (etcd forbids it)"
            )
        seen.add(op.key)
