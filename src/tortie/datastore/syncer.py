"""List+watch syncer: keeps a consumer's view of one key prefix equal to the datastore's.

Problem: the agent needs every resource under a prefix, then every change, with no change lost
or repeated, across datastore outages and compactions (after which a watch cannot resume and
the consumer must catch up from a fresh list). This is Calico's syncer pattern.

Protocol (events passed to the callback, in this order):
- ``StatusChanged(RESYNC)`` once the first list succeeded, one ``Update`` per key (key
  order), ``InSync(revision)``, then ``StatusChanged(IN_SYNC)``;
- then ``Update``/``Deleted`` per watch event, in revision order;
- after a compaction or a broken watch: ``StatusChanged(RESYNC)``, then only the *difference*
  against what was delivered: ``Update`` for new or changed keys (key order), ``Deleted`` for
  keys that vanished (key order, at the list's revision), and again ``InSync(revision)`` and
  ``StatusChanged(IN_SYNC)``.
- whenever the store cannot be reached (before the first list too):
  ``StatusChanged(WAIT_FOR_DATASTORE, detail)``, once per outage, then the resync above.
- when the store answers but is not the one delivered so far (another id, or its revision went
  backwards: :class:`DatastoreReplacedError`): ``StatusChanged(REPLACED, detail)``; the syncer
  keeps retrying, and a consumer must not act on its view meanwhile (docs/datastore.md).

Invariants:
- After each ``InSync(r)`` the consumer's view (applying the events in order) equals the
  store's list at revision ``r``; afterwards it equals the store at the revision of the last
  event delivered. The syncer remembers ``key -> (mod_revision, value)`` of what it delivered to
  compute diffs, so memory grows with the prefix's size.
- The watch starts at ``list.revision + 1``, which the contract makes gap-free.
- The callback runs on the syncer's thread, one event at a time; it must not block for long
  (the watch stalls meanwhile) and must not raise: if it does, the syncer stops and keeps the
  exception in :attr:`Syncer.error` (a bug is not retried in a loop).

Hazards:
- :meth:`Syncer.stop` returns within about ``poll_timeout`` (0.25 s) plus whatever datastore call
  is in flight (etcd RPCs have a deadline of a few seconds).
- While the datastore is unreachable the syncer retries with exponential backoff
  (``min_backoff`` doubling to ``max_backoff``); the consumer keeps its last view and learns
  the status from ``StatusChanged`` events.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from tortie.datastore.api import (
    CompactedError,
    Datastore,
    DatastoreError,
    DatastoreReplacedError,
    EventType,
    ListResult,
    UnavailableError,
    Watch,
)

__all__ = [
    "Deleted",
    "InSync",
    "StatusChanged",
    "SyncEvent",
    "SyncStatus",
    "Syncer",
    "Update",
]

log = logging.getLogger(__name__)


class SyncStatus(enum.Enum):
    WAIT_FOR_DATASTORE = "wait-for-datastore"
    REPLACED = "replaced"  # the store at the URL is not the one synced so far: do not act
    RESYNC = "resync"
    IN_SYNC = "in-sync"


@dataclass(frozen=True, slots=True)
class Update:
    """``key`` now has ``value``; ``revision`` is its mod_revision."""

    key: str
    value: str
    revision: int


@dataclass(frozen=True, slots=True)
class Deleted:
    """``key`` is gone, as of ``revision``."""

    key: str
    revision: int


@dataclass(frozen=True, slots=True)
class InSync:
    """Everything up to ``revision`` has been delivered."""

    revision: int


@dataclass(frozen=True, slots=True)
class StatusChanged:
    status: SyncStatus
    detail: str = ""


SyncEvent = Update | Deleted | InSync | StatusChanged


class _StoppedError(Exception):
    """Internal: the stop event was set."""


class Syncer:
    """List+watch ``prefix`` of ``store`` and feed the events to ``callback``.

    ``store`` is a :class:`Datastore`, or a function that opens one (then the syncer retries
    the opening while it raises :class:`UnavailableError`, and closes the store when it stops).
    To consume from another thread, pass ``queue.put`` as the callback.
    """

    def __init__(
        self,
        store: Datastore | Callable[[], Datastore],
        prefix: str,
        callback: Callable[[SyncEvent], None],
        *,
        poll_timeout: float = 0.25,
        min_backoff: float = 0.1,
        max_backoff: float = 5.0,
        name: str | None = None,
    ) -> None:
        if isinstance(store, Datastore):
            self._store: Datastore | None = store
            self._opener: Callable[[], Datastore] | None = None
        else:
            self._store = None
            self._opener = store
        self.prefix = prefix
        self._callback = callback
        self.poll_timeout = poll_timeout
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.name = name or f"syncer:{prefix}"
        self._status: SyncStatus | None = None
        self._delivered: dict[str, tuple[int, str]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    # -- control ------------------------------------------------------------------------------
    @property
    def status(self) -> SyncStatus:
        return self._status or SyncStatus.WAIT_FOR_DATASTORE

    def start(self) -> None:
        """Run in a daemon thread until :meth:`stop`."""
        if self._thread is not None:
            raise RuntimeError(f"{self.name} already started")
        self._thread = threading.Thread(target=self._thread_main, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Ask the syncer to stop and wait (up to ``timeout``) for its thread to end."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _thread_main(self) -> None:
        try:
            self.run(self._stop)
        except BaseException as e:
            self.error = e
            log.exception("%s stopped by an error", self.name)

    # -- the loop -----------------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None) -> None:
        """Sync until ``stop`` is set (in the calling thread). Raises what the callback raised,
        or a non-transient error opening the store (e.g. :class:`InvalidURLError`)."""
        if stop is not None:
            self._stop = stop
        try:
            self._loop()
        except _StoppedError:
            pass
        finally:
            if self._opener is not None and self._store is not None:
                self._store.close()
                self._store = None

    def _emit(self, event: SyncEvent) -> None:
        self._callback(event)

    def _set_status(self, status: SyncStatus, detail: str = "") -> None:
        if status != self._status:
            self._status = status
            self._emit(StatusChanged(status, detail))

    def _sleep(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise _StoppedError

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise _StoppedError

    def _loop(self) -> None:
        backoff = self.min_backoff
        while True:
            self._check_stop()
            try:
                store = self._open()
                listing = store.list(self.prefix)
                self._check_stop()
                # Only now: while the store is down the status stays WAIT_FOR_DATASTORE rather
                # than flapping with every retry.
                self._set_status(SyncStatus.RESYNC)
                self._deliver_snapshot(listing)
                watch = store.watch(self.prefix, listing.revision + 1)
                try:
                    self._emit(InSync(listing.revision))
                    self._set_status(SyncStatus.IN_SYNC)
                    backoff = self.min_backoff
                    self._follow(watch)
                finally:
                    watch.close()
            except CompactedError as e:
                # Fell behind the compaction horizon: re-list at once (no backoff: the store is
                # healthy). The next list is at or after the horizon, so this cannot spin.
                log.info("%s: %s", self.name, e)
                self._set_status(SyncStatus.RESYNC)
            except DatastoreReplacedError as e:
                log.error("%s: %s (checking again in %.3g s)", self.name, e, backoff)
                self._set_status(SyncStatus.REPLACED, str(e))
                self._sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
            except DatastoreError as e:
                if self._store is None and not isinstance(e, UnavailableError):
                    raise  # cannot open: a bad URL will not get better
                log.warning("%s: %s (retrying in %.3g s)", self.name, e, backoff)
                self._set_status(SyncStatus.WAIT_FOR_DATASTORE, str(e))
                self._sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)

    def _open(self) -> Datastore:
        if self._store is None:
            assert self._opener is not None
            self._store = self._opener()
        return self._store

    def _deliver_snapshot(self, listing: ListResult) -> None:
        """Emit the difference between what was delivered and ``listing``."""
        seen: set[str] = set()
        for kv in listing.items:
            seen.add(kv.key)
            if self._delivered.get(kv.key) != (kv.mod_revision, kv.value):
                self._delivered[kv.key] = (kv.mod_revision, kv.value)
                self._emit(Update(kv.key, kv.value, kv.mod_revision))
        for key in sorted(self._delivered.keys() - seen):
            del self._delivered[key]
            self._emit(Deleted(key, listing.revision))

    def _follow(self, watch: Watch) -> None:
        while True:
            self._check_stop()
            for ev in watch.next(self.poll_timeout):
                if ev.type is EventType.DELETE:
                    if self._delivered.pop(ev.key, None) is not None:
                        self._emit(Deleted(ev.key, ev.mod_revision))
                else:
                    value = ev.value or ""
                    self._delivered[ev.key] = (ev.mod_revision, value)
                    self._emit(Update(ev.key, value, ev.mod_revision))
