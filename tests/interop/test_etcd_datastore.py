"""etcd backend specifics on a real etcd: unreachable endpoints, failover between endpoints,
etcd's limits, a restart under a watch and under the syncer."""

from __future__ import annotations

import queue
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from tortie.datastore.api import (
    IDENTITY_KEY,
    DatastoreError,
    Put,
    UnavailableError,
)
from tortie.datastore.etcd import EtcdDatastore
from tortie.datastore.factory import open_datastore
from tortie.datastore.syncer import (
    Deleted,
    InSync,
    StatusChanged,
    Syncer,
    SyncEvent,
    SyncStatus,
    Update,
)

pytestmark = pytest.mark.interop

WAIT = 60.0


@pytest.fixture
def prefix() -> str:
    return f"/test-{uuid.uuid4().hex[:8]}/"


@pytest.fixture
def store(etcd_url: str) -> Iterator[EtcdDatastore]:
    s = open_datastore(etcd_url)
    assert isinstance(s, EtcdDatastore)
    yield s
    s.close()


def test_nothing_listening_is_unavailable_quickly() -> None:
    url = "etcd://127.0.0.1:1"
    t = time.monotonic()
    with pytest.raises(UnavailableError) as ei:
        open_datastore(url)
    elapsed = time.monotonic() - t
    assert url in str(ei.value) and "is etcd running" in str(ei.value)
    # "Quickly": a refused connection must not wait out retries. Generous bound for CI.
    assert elapsed < 15, elapsed


def test_every_dead_endpoint_is_named() -> None:
    url = "etcd://127.0.0.1:1,127.0.0.1:2?timeout=2"
    with pytest.raises(UnavailableError) as ei:
        open_datastore(url)
    assert "127.0.0.1:1" in ei.value.detail and "127.0.0.1:2" in ei.value.detail


def test_a_dead_endpoint_is_skipped(etcd_url: str, prefix: str) -> None:
    live = etcd_url.removeprefix("etcd://")
    s = open_datastore(f"etcd://127.0.0.1:1,{live}")
    try:
        kv = s.put(prefix + "a", "1")
        assert s.get(prefix + "a") == kv
        w = s.watch(prefix, kv.mod_revision)
        try:
            assert [e.key for e in w.next(timeout=WAIT)] == [prefix + "a"]
        finally:
            w.close()
    finally:
        s.close()


def test_too_many_ops_is_a_datastore_error(store: EtcdDatastore, prefix: str) -> None:
    # etcd's default --max-txn-ops is 128: a clear error, not a gRPC traceback.
    ops = [Put(f"{prefix}{i}", "1") for i in range(200)]
    with pytest.raises(DatastoreError, match="too many operations"):
        store.txn([], ops)
    assert store.list(prefix).items == ()


def test_closed_store_is_unavailable(etcd_url: str) -> None:
    s = open_datastore(etcd_url)
    s.close()
    with pytest.raises(UnavailableError, match="closed"):
        s.get("/a")


def test_watch_and_calls_fail_cleanly_when_etcd_stops(start_etcd) -> None:
    start_etcd.start()
    s = open_datastore(start_etcd.url + "?timeout=2")
    try:
        w = s.watch("/", s.revision() + 1)
        start_etcd.stop()
        with pytest.raises(UnavailableError) as ei:
            end = time.monotonic() + WAIT
            while time.monotonic() < end:
                w.next(timeout=1)
        assert start_etcd.url in str(ei.value)
        w.close()
        with pytest.raises(UnavailableError):
            s.put("/a", "1")
        with pytest.raises(UnavailableError):
            s.list("/")
        # It comes back on the same ports: the same store object works again.
        start_etcd.start()
        end = time.monotonic() + WAIT
        while True:
            try:
                s.put("/a", "1")
                break
            except UnavailableError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.2)
    finally:
        s.close()


class Events:
    def __init__(self) -> None:
        self.q: queue.Queue[SyncEvent] = queue.Queue()

    def take_until(self, pred: Callable[[SyncEvent], bool]) -> list[SyncEvent]:
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


def test_syncer_on_etcd(store: EtcdDatastore, prefix: str) -> None:
    a = store.put(prefix + "a", "1")
    ev = Events()
    syncer = Syncer(store, prefix, ev.q.put)
    syncer.start()
    try:
        assert ev.take_until(lambda e: isinstance(e, InSync)) == [
            StatusChanged(SyncStatus.RESYNC),
            Update(prefix + "a", "1", a.mod_revision),
            InSync(store.revision()),
        ]
        b = store.put(prefix + "b", "2")
        store.delete(prefix + "a")
        got = ev.take_until(lambda e: isinstance(e, Deleted))
        assert got[-2:] == [
            Update(prefix + "b", "2", b.mod_revision),
            Deleted(prefix + "a", b.mod_revision + 1),
        ]
    finally:
        syncer.stop()


def test_syncer_survives_an_etcd_restart(start_etcd) -> None:
    start_etcd.start()
    url = start_etcd.url + "?timeout=2"
    seed = open_datastore(url)
    seed.put("/p/a", "1")
    seed.close()
    ev = Events()
    # The syncer opens the store itself and must wait while etcd is down.
    syncer = Syncer(lambda: open_datastore(url), "/p/", ev.q.put, min_backoff=0.05)
    syncer.start()
    try:
        ev.take_until(lambda e: e == StatusChanged(SyncStatus.IN_SYNC))
        start_etcd.stop()
        ev.take_until(lambda e: getattr(e, "status", None) is SyncStatus.WAIT_FOR_DATASTORE)
        start_etcd.start()
        after = ev.take_until(lambda e: e == StatusChanged(SyncStatus.IN_SYNC))
        # Nothing changed while etcd was down: the resync sends no updates.
        assert [e for e in after if isinstance(e, Update | Deleted)] == []
        writer = open_datastore(url)
        try:
            b = writer.put("/p/b", "1")
        finally:
            writer.close()
        assert ev.take_until(lambda e: isinstance(e, Update)) == [
            Update("/p/b", "1", b.mod_revision)
        ]
    finally:
        syncer.stop()


def test_identity_key_is_create_if_absent_and_watched_like_any_key(store: EtcdDatastore) -> None:
    """docs/datastore.md: /tortie/meta/datastore holds the id; init never overwrites it; the
    agent sees it deleted or replaced through its watch of /tortie/ and stops acting."""
    if store.get(IDENTITY_KEY) is not None:
        store.delete(IDENTITY_KEY)
    assert store.identity() == ""  # nobody initialised this etcd
    first = store.ensure_identity()
    assert store.ensure_identity() == first == store.identity()  # idempotent
    w = store.watch("/tortie/", store.revision() + 1)
    try:
        store.delete(IDENTITY_KEY)
        events = []
        end = time.monotonic() + WAIT
        while not events and time.monotonic() < end:
            events = w.next(timeout=0.5)
        assert [(e.type.value, e.key) for e in events] == [("delete", IDENTITY_KEY)]
    finally:
        w.close()
    assert store.identity() == ""
    store.put(IDENTITY_KEY, "not json")
    with pytest.raises(DatastoreError, match="holds no valid id"):
        store.identity()
    store.delete(IDENTITY_KEY)
    again = open_datastore(store.url, create=True)  # tortie datastore init
    try:
        assert again.identity() not in ("", first)  # a new store: a new id
    finally:
        again.close()
