"""May the agent act on the datastore it reads? Only if it is the store this node has been
using (the same id) and it has not gone back in time (its revision is not lower).

Problem (issue 17, item 1): a store rolled back by a lost ``-wal``, or another store put at
the same URL, looks to an agent like "most pods were deleted": a restarted agent trusted one,
deleted every pod's route and anti-spoofing entry, and the next CNI ADD handed out a live
pod's address again. Calico's Felix acts only on a datastore that says it is ready
(``ClusterInformation.datastoreReady``) and knows its cluster by ``clusterGUID``; tortie's
agent records which store it acts on and how far it has read it, and fails static otherwise.

Rules (docs/datastore.md, "Identity and fail-static"):
- The record ``<state-dir>/datastore.json`` holds ``{url, id, revision}``, written atomically:
  when the agent first trusts a store, after every verified re-list, at most every
  ``SAVE_INTERVAL`` while the revision moves (not on every pass), and when the agent stops.
- Verified (the store's ``identity()`` against the record's id, the listed revision against
  the recorded one): before registration, at every in-sync (start and every re-list, which
  is when a rolled-back store shows), whenever the etcd identity key changes, and every
  ``RECHECK_INTERVAL`` while refusing.
- Refusing means no kernel write and no datastore write (routes, devices, nftables, BGP, IPAM
  gc, the CNI server's allocations): the kernel stays exactly as it is, ``/readyz`` fails and
  ``tortie node status`` says what happened and what to do. It lifts by itself when the right
  store comes back; a deliberately restored or new store is accepted with
  ``tortie datastore accept --node NAME`` (rewrites the record), then an agent restart.

Hazards:
- The record lives in the node's state directory, ``/run/tortie/<node>`` by default: a tmpfs,
  so a reboot forgets it and the first start after one trusts (and, if missing, creates) what
  it finds. Put ``--state-dir`` on persistent storage to keep the guard across reboots.
- An unreadable record counts as a record of an unknown store: refused until accepted
  (guessing would defeat the guard).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tortie.agent.state import ClusterState
from tortie.datastore.api import (
    Compare,
    Datastore,
    DatastoreError,
    DatastoreReplacedError,
    KeyValue,
    ListResult,
    Op,
    TxnResult,
    Watch,
)
from tortie.datastore.syncer import SyncStatus
from tortie.errors import TortieError

log = logging.getLogger(__name__)

RECORD_NAME = "datastore.json"
SAVE_INTERVAL = 30.0  # seconds between saves of a moving revision
RECHECK_INTERVAL = 5.0  # while refusing


class RecordError(TortieError):
    pass


@dataclass(frozen=True, slots=True)
class Record:
    """The store this node acts on: its URL (for messages), id and the highest revision read."""

    url: str
    id: str
    revision: int

    def to_json(self) -> str:
        return json.dumps({"url": self.url, "id": self.id, "revision": self.revision}) + "\n"


def record_path(state_dir: Path) -> Path:
    return state_dir / RECORD_NAME


def load_record(path: Path) -> Record | None:
    """The record, None if there is none; :class:`RecordError` if it cannot be read."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise RecordError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        doc = json.loads(text)
        record = Record(str(doc["url"]), str(doc["id"]), int(doc["revision"]))
    except (ValueError, KeyError, TypeError) as err:
        raise RecordError(f"{path} is not a datastore record ({err})") from None
    return record


def save_record(path: Path, record: Record) -> None:
    """Atomic (write aside, then rename), private."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(record.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _resolution(node: str) -> str:
    return (
        "The agent changes nothing in the kernel until it is resolved: put the right datastore "
        "back (the agent resumes by itself), or, if this store is meant (a deliberate restore), "
        f"run `tortie datastore accept --node {node}` and restart the agent"
    )


class DatastoreGuard:
    """The verdict the loop asks for before any write (see the module docstring)."""

    def __init__(
        self,
        store: Datastore,
        path: Path,
        node: str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.path = path
        self.node = node
        self._clock = clock
        self.problem = ""  # "" while the store is trusted
        self._unreadable = ""
        try:
            self.record = load_record(path)
        except RecordError as err:
            self.record = None
            self._unreadable = str(err)
        self._checked_syncs = 0
        self._checked_identity_events = 0
        self._recheck_at = 0.0
        self._saved_at = clock()

    @property
    def has_record(self) -> bool:
        """Has this node used a datastore before? (Then a missing one was moved, not new.)"""
        return self.record is not None or bool(self._unreadable)

    # -- verifying ------------------------------------------------------------------------
    def verify(self, revision: int) -> str:
        """Compare the store now at the URL (listed at ``revision``) with the record; record it
        if there is none. Returns the problem ("" when trusted), also kept in ``problem``."""
        self.problem = self._verdict(revision)
        if self.problem:
            log.error("refusing the datastore: %s", self.problem)
            self._recheck_at = self._clock() + RECHECK_INTERVAL
        return self.problem

    def _verdict(self, revision: int) -> str:
        try:
            ident = self.store.identity()
        except DatastoreReplacedError as err:
            return f"{err}. {_resolution(self.node)}"
        except DatastoreError as err:
            return f"cannot check which datastore {self.store.url} is: {err}"
        if self._unreadable:
            return (
                f"the record of the datastore this node uses is unreadable ({self._unreadable}); "
                + _resolution(self.node)
            )
        rec = self.record
        if rec is None and not ident:
            return (
                f"the datastore at {self.store.url} has no id: run `tortie datastore init` "
                "(docs/datastore.md)"
            )
        if rec is None:
            self._save(Record(self.store.url, ident, revision))
            log.info("datastore %s has id %s (recorded in %s)", self.store.url, ident, self.path)
            return ""
        if ident != rec.id:
            return (
                f"the datastore at {self.store.url} has id {ident or '(none)'}, but this node has "
                f"been using the store with id {rec.id} (at {rec.url}; recorded in {self.path}): "
                f"it was replaced or re-created. {_resolution(self.node)}"
            )
        if revision < rec.revision:
            return (
                f"the datastore at {self.store.url} is at revision {revision}, but this node has "
                f"read it up to revision {rec.revision} (recorded in {self.path}): it went back "
                "in time (restored from an older copy, or commits were lost). "
                + _resolution(self.node)
            )
        if revision > rec.revision:
            self._save(Record(self.store.url, ident, revision))
        return ""

    def check(self, state: ClusterState) -> str:
        """The loop's gate: "" when it may act on ``state``, else why not. Cheap: the store is
        asked only at a new in-sync, an identity-key change, or a recheck while refusing."""
        if state.sync_status is SyncStatus.REPLACED:
            self.problem = f"{state.sync_detail}. {_resolution(self.node)}"
            return self.problem
        now = self._clock()
        due = (
            state.syncs != self._checked_syncs
            or state.identity_events != self._checked_identity_events
            or (self.problem and now >= self._recheck_at)
        )
        if due and state.in_sync:
            self._checked_syncs = state.syncs
            self._checked_identity_events = state.identity_events
            return self.verify(state.listed_revision)
        if not self.problem and now - self._saved_at >= SAVE_INTERVAL:
            self.flush(state.revision)
        return self.problem

    # -- the record -----------------------------------------------------------------------
    def flush(self, revision: int) -> None:
        """Record ``revision`` if it moved (and the store is trusted)."""
        rec = self.record
        self._saved_at = self._clock()
        if self.problem or rec is None or revision <= rec.revision:
            return
        self._save(Record(rec.url, rec.id, revision))

    def _save(self, record: Record) -> None:
        try:
            save_record(self.path, record)
        except OSError as err:
            log.warning("cannot write %s: %s", self.path, err.strerror or err)
            return
        self.record = record
        self._saved_at = self._clock()

    # -- writes by others (the CNI server) ------------------------------------------------
    def guarded(self, store: Datastore) -> Datastore:
        """``store`` whose writes are refused while this guard refuses the store."""
        return GuardedDatastore(store, self)

    def refuse_write(self) -> None:
        if self.problem:
            raise DatastoreReplacedError(self.store.url, self.problem)


class GuardedDatastore:
    """A :class:`Datastore` that refuses writes while its guard refuses the store: the CNI
    server must not allocate addresses from a rolled-back or foreign store either."""

    def __init__(self, inner: Datastore, guard: DatastoreGuard) -> None:
        self._inner = inner
        self._guard = guard

    @property
    def url(self) -> str:
        return self._inner.url

    def identity(self) -> str:
        return self._inner.identity()

    def get(self, key: str) -> KeyValue | None:
        return self._inner.get(key)

    def list(self, prefix: str) -> ListResult:
        return self._inner.list(prefix)

    def revision(self) -> int:
        return self._inner.revision()

    def watch(self, prefix: str, start_revision: int) -> Watch:
        return self._inner.watch(prefix, start_revision)

    def create(self, key: str, value: str) -> KeyValue:
        self._guard.refuse_write()
        return self._inner.create(key, value)

    def update(self, key: str, value: str, mod_revision: int) -> KeyValue:
        self._guard.refuse_write()
        return self._inner.update(key, value, mod_revision)

    def put(self, key: str, value: str) -> KeyValue:
        self._guard.refuse_write()
        return self._inner.put(key, value)

    def delete(self, key: str, mod_revision: int | None = None) -> None:
        self._guard.refuse_write()
        self._inner.delete(key, mod_revision)

    def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        self._guard.refuse_write()
        return self._inner.txn(compares, ops)

    def compact(self, revision: int) -> None:
        self._guard.refuse_write()
        self._inner.compact(revision)

    def close(self) -> None:
        """The inner store belongs to the agent: it closes it."""
