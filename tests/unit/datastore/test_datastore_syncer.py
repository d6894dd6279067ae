"""The list+watch syncer on the memory and SQLite stores: snapshot + InSync, live updates,
resync with an exact diff after compaction or a broken watch, outages, prompt stop."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tortie.datastore.api import (
    Datastore,
    InvalidURLError,
    ListResult,
    UnavailableError,
    Watch,
    WatchEvent,
)
from tortie.datastore.memory import MemoryDatastore
from tortie.datastore.sqlite import SqliteDatastore
from tortie.datastore.syncer import (
    Deleted,
    InSync,
    StatusChanged,
    Syncer,
    SyncEvent,
    SyncStatus,
    Update,
)

pytestmark = pytest.mark.unit

WAIT = 30.0
RESYNC = StatusChanged(SyncStatus.RESYNC)
IN_SYNC = StatusChanged(SyncStatus.IN_SYNC)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Datastore]:
    s: Datastore = (
        MemoryDatastore()
        if request.param == "memory"
        else SqliteDatastore(tmp_path / "s.db", create=True)
    )
    yield s
    s.close()


class Collector:
    """The syncer's callback: records events; ``take`` waits for them."""

    def __init__(self) -> None:
        self.q: queue.Queue[SyncEvent] = queue.Queue()

    def __call__(self, event: SyncEvent) -> None:
        self.q.put(event)

    def take_until(self, pred: Callable[[SyncEvent], bool]) -> list[SyncEvent]:
        """Events up to and including the first matching ``pred``."""
        out: list[SyncEvent] = []
        end = time.monotonic() + WAIT
        while time.monotonic() < end:
            try:
                ev = self.q.get(timeout=0.5)
            except queue.Empty:
                continue
            out.append(ev)
            if pred(ev):
                return out
        raise AssertionError(f"timed out; got {out}")

    def take(self, n: int) -> list[SyncEvent]:
        out: list[SyncEvent] = []
        end = time.monotonic() + WAIT
        while len(out) < n and time.monotonic() < end:
            with contextlib.suppress(queue.Empty):
                out.append(self.q.get(timeout=0.5))
        return out

    def until_in_sync(self) -> list[SyncEvent]:
        return self.take_until(lambda e: e == IN_SYNC)

    def quiet(self) -> bool:
        try:
            ev = self.q.get(timeout=0.3)
        except queue.Empty:
            return True
        raise AssertionError(f"unexpected event {ev}")


@pytest.fixture
def running() -> Iterator[Callable[[Syncer], Syncer]]:
    started: list[Syncer] = []

    def start(s: Syncer) -> Syncer:
        started.append(s)
        s.start()
        return s

    yield start
    for s in started:
        s.stop()


def test_initial_list_then_in_sync(store: Datastore, running: Callable[[Syncer], Syncer]) -> None:
    b = store.put("/p/b", "B")
    a = store.put("/p/a", "A")
    store.put("/q/x", "X")  # outside the prefix
    c = Collector()
    syncer = running(Syncer(store, "/p/", c))
    assert c.until_in_sync() == [
        RESYNC,
        Update("/p/a", "A", a.mod_revision),
        Update("/p/b", "B", b.mod_revision),
        InSync(store.revision()),
        IN_SYNC,
    ]
    assert syncer.status is SyncStatus.IN_SYNC
    assert c.quiet()


def test_empty_prefix_still_reports_in_sync(
    store: Datastore, running: Callable[[Syncer], Syncer]
) -> None:
    c = Collector()
    running(Syncer(store, "/empty/", c))
    assert c.until_in_sync() == [RESYNC, InSync(store.revision()), IN_SYNC]


def test_live_updates_in_order(store: Datastore, running: Callable[[Syncer], Syncer]) -> None:
    a = store.put("/p/a", "1")
    c = Collector()
    running(Syncer(store, "/p/", c))
    c.until_in_sync()
    a2 = store.update("/p/a", "2", a.mod_revision)
    n = store.create("/p/n", "x")
    store.put("/q/other", "1")
    store.delete("/p/a")
    deleted_at = store.revision()
    assert c.take(3) == [
        Update("/p/a", "2", a2.mod_revision),
        Update("/p/n", "x", n.mod_revision),
        Deleted("/p/a", deleted_at),
    ]
    assert c.quiet()


def test_resync_after_compaction_emits_exact_diff(
    store: Datastore, running: Callable[[Syncer], Syncer]
) -> None:
    store.put("/p/a", "1")
    store.put("/p/b", "1")
    unchanged = store.put("/p/c", "1")
    gate, blocked = threading.Event(), threading.Event()
    c = Collector()

    def callback(ev: SyncEvent) -> None:
        c(ev)
        if isinstance(ev, Update) and ev.key == "/p/block":
            blocked.set()
            gate.wait(WAIT)  # hold the syncer here while its watch falls behind

    running(Syncer(store, "/p/", callback))
    c.until_in_sync()
    block = store.put("/p/block", "1")
    assert blocked.wait(WAIT)
    a = store.put("/p/a", "2")
    store.delete("/p/b")
    store.put("/p/gone", "1")
    store.delete("/p/gone")  # created and deleted while behind: never seen
    e = store.put("/p/e", "1")
    store.compact(store.revision())
    rev = store.revision()
    gate.set()
    events = c.until_in_sync()
    assert events == [
        Update("/p/block", "1", block.mod_revision),
        RESYNC,
        Update("/p/a", "2", a.mod_revision),
        Update("/p/e", "1", e.mod_revision),
        Deleted("/p/b", rev),
        InSync(rev),
        IN_SYNC,
    ]
    assert store.get("/p/c") == unchanged  # unchanged keys are not re-sent
    # And live updates continue.
    f = store.put("/p/f", "1")
    assert c.take(1) == [Update("/p/f", "1", f.mod_revision)]


class Flaky:
    """A store wrapper whose list() or Watch.next() fail on demand."""

    def __init__(self, inner: Datastore) -> None:
        self.inner = inner
        self.list_failures = 0
        self.break_watch = threading.Event()

    @property
    def url(self) -> str:
        return self.inner.url

    def list(self, prefix: str) -> ListResult:
        if self.list_failures > 0:
            self.list_failures -= 1
            raise UnavailableError(self.url, "injected outage")
        return self.inner.list(prefix)

    def watch(self, prefix: str, start_revision: int) -> Watch:
        return FlakyWatch(self, self.inner.watch(prefix, start_revision))

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


class FlakyWatch:
    def __init__(self, owner: Flaky, inner: Watch) -> None:
        self.owner, self.inner = owner, inner

    def next(self, timeout: float | None = None) -> Sequence[WatchEvent]:
        if self.owner.break_watch.is_set():
            self.owner.break_watch.clear()
            raise UnavailableError(self.owner.url, "injected broken watch")
        return self.inner.next(timeout)

    def close(self) -> None:
        self.inner.close()


def test_waits_for_datastore_then_syncs(
    store: Datastore, running: Callable[[Syncer], Syncer]
) -> None:
    a = store.put("/p/a", "1")
    flaky = Flaky(store)
    flaky.list_failures = 2
    c = Collector()
    running(Syncer(flaky, "/p/", c, min_backoff=0.01))  # type: ignore[arg-type]
    events = c.until_in_sync()
    wait = StatusChanged(
        SyncStatus.WAIT_FOR_DATASTORE, str(UnavailableError(store.url, "injected outage"))
    )
    assert events == [
        wait,  # once, though two attempts failed
        RESYNC,
        Update("/p/a", "1", a.mod_revision),
        InSync(store.revision()),
        IN_SYNC,
    ]


def test_broken_watch_resyncs_with_diff(
    store: Datastore, running: Callable[[Syncer], Syncer]
) -> None:
    store.put("/p/a", "1")
    flaky = Flaky(store)
    c = Collector()
    running(Syncer(flaky, "/p/", c, min_backoff=0.01))  # type: ignore[arg-type]
    c.until_in_sync()
    flaky.list_failures = 1
    flaky.break_watch.set()
    events = c.until_in_sync()
    assert [e.status for e in events if isinstance(e, StatusChanged)] == [
        SyncStatus.WAIT_FOR_DATASTORE,
        SyncStatus.RESYNC,
        SyncStatus.IN_SYNC,
    ]
    # Nothing changed meanwhile: the resync sends no update, only InSync.
    assert [e for e in events if isinstance(e, Update | Deleted)] == []


def test_opener_is_retried_and_its_store_closed(
    tmp_path: Path, running: Callable[[Syncer], Syncer]
) -> None:
    attempts: list[SqliteDatastore] = []

    def opener() -> Datastore:
        if not attempts:
            attempts.append(None)  # type: ignore[arg-type]
            raise UnavailableError("sqlite:///x", "not yet")
        s = SqliteDatastore(tmp_path / "s.db", create=True)
        attempts.append(s)
        return s

    c = Collector()
    syncer = running(Syncer(opener, "/p/", c, min_backoff=0.01))
    events = c.until_in_sync()
    assert events[0] == StatusChanged(
        SyncStatus.WAIT_FOR_DATASTORE, str(UnavailableError("sqlite:///x", "not yet"))
    )
    syncer.stop()
    assert attempts[1].closed


def test_bad_url_stops_the_syncer(running: Callable[[Syncer], Syncer]) -> None:
    def opener() -> Datastore:
        raise InvalidURLError("nope", "bad")

    syncer = running(Syncer(opener, "/p/", Collector()))
    syncer.stop()
    assert isinstance(syncer.error, InvalidURLError)


def test_callback_error_stops_the_syncer(
    store: Datastore, running: Callable[[Syncer], Syncer]
) -> None:
    store.put("/p/a", "1")
    done = threading.Event()

    def callback(ev: SyncEvent) -> None:
        if isinstance(ev, Update):
            done.set()
            raise RuntimeError("consumer bug")

    syncer = running(Syncer(store, "/p/", callback))
    assert done.wait(WAIT)
    syncer.stop()
    assert not syncer.is_alive()
    assert isinstance(syncer.error, RuntimeError)


def test_stop_is_prompt(store: Datastore) -> None:
    c = Collector()
    syncer = Syncer(store, "/p/", c)
    syncer.start()
    c.until_in_sync()
    syncer.stop(timeout=WAIT)
    assert not syncer.is_alive()
    assert syncer.error is None


def test_stop_during_backoff(store: Datastore) -> None:
    flaky = Flaky(store)
    flaky.list_failures = 10**6
    c = Collector()
    syncer = Syncer(flaky, "/p/", c, min_backoff=60, max_backoff=60)  # type: ignore[arg-type]
    syncer.start()
    c.take_until(lambda e: getattr(e, "status", None) is SyncStatus.WAIT_FOR_DATASTORE)
    syncer.stop(timeout=WAIT)
    assert not syncer.is_alive()


def test_run_in_callers_thread(store: Datastore) -> None:
    stop = threading.Event()
    events: list[SyncEvent] = []

    def callback(ev: SyncEvent) -> None:
        events.append(ev)
        if ev == IN_SYNC:
            stop.set()

    Syncer(store, "/p/", callback).run(stop)
    assert events[-2:] == [InSync(store.revision()), IN_SYNC]
