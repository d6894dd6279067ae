"""The datastore conformance suite: every guarantee of tortie.datastore.api, for any backend.

Not collected by itself (no ``test_`` prefix, and the class name does not start with
``Test``): each backend's test module subclasses :class:`DatastoreConformance` and provides

- ``store``: an open store with no keys (a shared etcd may have a revision > 1), and
- ``store_url``: a URL that other processes can open to reach the same store.

Tests use revisions relative to what they read, never absolute ones, so they run on a shared
etcd. Waits are bounded by generous deadlines, never asserted on.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest

from tortie.datastore.api import (
    AlreadyExistsError,
    CompactedError,
    Compare,
    ConflictError,
    Datastore,
    DatastoreError,
    Delete,
    EventType,
    KeyValue,
    NotFoundError,
    Put,
    Watch,
    WatchEvent,
)

WAIT = 30.0  # generous: a loaded 2-core machine must not flake


def collect(w: Watch, n: int, deadline: float = WAIT) -> list[WatchEvent]:
    """Read events until ``n`` arrived (or the deadline passed: then return what came)."""
    out: list[WatchEvent] = []
    end = time.monotonic() + deadline
    while len(out) < n and time.monotonic() < end:
        out.extend(w.next(timeout=0.5))
    return out


def next_raises_compacted(w: Watch) -> CompactedError:
    end = time.monotonic() + WAIT
    while time.monotonic() < end:
        try:
            w.next(timeout=0.5)
        except CompactedError as e:
            return e
    raise AssertionError("no CompactedError from Watch.next")


UNICODE_KEY = "/ü/ñame-日本-🐈"
UNICODE_VALUE = '{"name": "héllo wörld ✓ 日本語 🐈‍⬛", "nul": "\\u0000"}'

WORKER = textwrap.dedent(
    """
    import sys
    from tortie.datastore.api import ConflictError
    from tortie.datastore.factory import open_datastore

    url, key, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = open_datastore(url)
    print("ready", flush=True)
    sys.stdin.readline()  # start together, to contend
    done = conflicts = 0
    while done < n:
        kv = store.get(key)
        try:
            store.update(key, str(int(kv.value) + 1), kv.mod_revision)
            done += 1
        except ConflictError:
            conflicts += 1
    store.close()
    print("conflicts", conflicts, flush=True)
    """
)


class DatastoreConformance:
    # -- basics -------------------------------------------------------------------------------
    def test_is_a_datastore(self, store: Datastore) -> None:
        assert isinstance(store, Datastore)
        assert store.url
        assert store.revision() >= 1

    # -- identity (docs/datastore.md) -------------------------------------------------------
    def test_identity_is_written_once_and_the_same_for_every_client(
        self, store: Datastore, store_url: str
    ) -> None:
        from tortie.datastore.factory import open_datastore

        if store_url.startswith("memory:"):
            ident = store.identity()
            assert ident and store.identity() == ident
            other = open_datastore(store_url)  # memory:// is a new store: a new id
            assert other.identity() not in ("", ident)
            return
        # Creation (tortie datastore init) writes the id; doing it again changes nothing.
        init = open_datastore(store_url, create=True)
        try:
            ident = init.identity()
            again = open_datastore(store_url, create=True)
            try:
                assert again.identity() == ident
            finally:
                again.close()
        finally:
            init.close()
        assert len(ident) == 36  # a uuid4
        assert store.identity() == ident
        store.put("/id/x", "1")
        store.delete("/id/x")
        assert store.identity() == ident  # writes never change it
        code = "import sys\nfrom tortie.datastore.factory import open_datastore\n"
        code += "print(open_datastore(sys.argv[1]).identity())"
        out = subprocess.run(
            [sys.executable, "-c", code, store_url],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == ident  # another process sees the same id

    def test_get_absent(self, store: Datastore) -> None:
        assert store.get("/absent") is None
        result = store.list("/")
        assert result.items == ()
        assert result.revision == store.revision()

    def test_create_then_get(self, store: Datastore) -> None:
        rev = store.revision()
        kv = store.create("/a", "1")
        assert kv == KeyValue("/a", "1", rev + 1, rev + 1)
        assert store.get("/a") == kv
        assert store.revision() == rev + 1

    def test_create_existing_raises(self, store: Datastore) -> None:
        store.create("/a", "1")
        rev = store.revision()
        with pytest.raises(AlreadyExistsError) as ei:
            store.create("/a", "2")
        assert ei.value.key == "/a"
        assert store.get("/a").value == "1"  # type: ignore[union-attr]
        assert store.revision() == rev

    def test_update_cas(self, store: Datastore) -> None:
        kv = store.create("/a", "1")
        kv2 = store.update("/a", "2", kv.mod_revision)
        assert kv2 == KeyValue("/a", "2", kv.create_revision, kv.mod_revision + 1)
        assert store.get("/a") == kv2
        rev = store.revision()
        with pytest.raises(ConflictError) as ei:
            store.update("/a", "3", kv.mod_revision)  # stale
        assert (ei.value.key, ei.value.expected, ei.value.actual) == (
            "/a",
            kv.mod_revision,
            kv2.mod_revision,
        )
        assert store.get("/a") == kv2
        assert store.revision() == rev

    def test_update_absent_raises_not_found(self, store: Datastore) -> None:
        rev = store.revision()
        with pytest.raises(NotFoundError):
            store.update("/absent", "1", 5)
        # 0 ("absent") must not turn update into create.
        with pytest.raises(NotFoundError):
            store.update("/absent", "1", 0)
        assert store.get("/absent") is None
        assert store.revision() == rev

    def test_update_with_zero_on_present_conflicts(self, store: Datastore) -> None:
        kv = store.create("/a", "1")
        with pytest.raises(ConflictError) as ei:
            store.update("/a", "2", 0)
        assert ei.value.actual == kv.mod_revision

    def test_put_creates_and_replaces(self, store: Datastore) -> None:
        rev = store.revision()
        kv = store.put("/a", "1")
        assert kv == KeyValue("/a", "1", rev + 1, rev + 1)
        kv2 = store.put("/a", "2")
        assert kv2 == KeyValue("/a", "2", rev + 1, rev + 2)
        assert store.get("/a") == kv2

    def test_recreate_after_delete_gets_new_create_revision(self, store: Datastore) -> None:
        store.create("/a", "1")
        store.delete("/a")
        kv = store.create("/a", "2")
        assert kv.create_revision == kv.mod_revision == store.revision()

    def test_delete(self, store: Datastore) -> None:
        store.create("/a", "1")
        rev = store.revision()
        store.delete("/a")
        assert store.get("/a") is None
        assert store.revision() == rev + 1
        with pytest.raises(NotFoundError):
            store.delete("/a")
        assert store.revision() == rev + 1

    def test_delete_with_revision(self, store: Datastore) -> None:
        kv = store.create("/a", "1")
        kv2 = store.update("/a", "2", kv.mod_revision)
        rev = store.revision()
        with pytest.raises(ConflictError) as ei:
            store.delete("/a", kv.mod_revision)
        assert (ei.value.expected, ei.value.actual) == (kv.mod_revision, kv2.mod_revision)
        with pytest.raises(ConflictError):
            store.delete("/a", 0)
        assert store.get("/a") == kv2
        assert store.revision() == rev
        store.delete("/a", kv2.mod_revision)
        assert store.get("/a") is None
        with pytest.raises(NotFoundError):
            store.delete("/a", kv2.mod_revision)
        with pytest.raises(NotFoundError):
            store.delete("/a", 0)

    # -- list ---------------------------------------------------------------------------------
    def test_list_by_prefix_sorted(self, store: Datastore) -> None:
        for key in ["/a/2", "/b/1", "/a/10", "/ab", "/a/1", "/a"]:
            store.put(key, key.upper())
        result = store.list("/a/")
        assert [kv.key for kv in result.items] == ["/a/1", "/a/10", "/a/2"]
        assert [kv.value for kv in result.items] == ["/A/1", "/A/10", "/A/2"]
        assert result.revision == store.revision()
        assert [kv.key for kv in store.list("/a").items] == ["/a", "/a/1", "/a/10", "/a/2", "/ab"]
        assert [kv.key for kv in store.list("").items] == [
            "/a",
            "/a/1",
            "/a/10",
            "/a/2",
            "/ab",
            "/b/1",
        ]
        assert store.list("/c").items == ()

    def test_list_items_carry_revisions(self, store: Datastore) -> None:
        a = store.create("/p/a", "1")
        b = store.create("/p/b", "1")
        b2 = store.update("/p/b", "2", b.mod_revision)
        assert store.list("/p/").items == (a, b2)

    def test_list_order_is_code_point_order(self, store: Datastore) -> None:
        keys = ["/k/é", "/k/z", "/k/Z", "/k/日", "/k/🐈", "/k/~", "/k/\u00ff", "/k/\u0100"]
        for k in keys:
            store.put(k, "v")
        assert [kv.key for kv in store.list("/k/").items] == sorted(keys)
        assert [kv.key for kv in store.list("/k/\u00ff").items] == ["/k/\u00ff"]

    def test_unicode_key_and_value(self, store: Datastore) -> None:
        start = store.revision() + 1
        kv = store.create(UNICODE_KEY, UNICODE_VALUE)
        assert store.get(UNICODE_KEY) == kv
        assert store.list("/ü/").items == (kv,)
        store.update(UNICODE_KEY, UNICODE_VALUE + "✓", kv.mod_revision)
        w = store.watch("/ü/", start)
        try:
            events = collect(w, 2)
        finally:
            w.close()
        assert [e.value for e in events] == [UNICODE_VALUE, UNICODE_VALUE + "✓"]
        assert {e.key for e in events} == {UNICODE_KEY}

    # -- revisions ----------------------------------------------------------------------------
    def test_revision_increments_by_exactly_one_per_write(self, store: Datastore) -> None:
        rev = store.revision()
        writes = [
            lambda: store.create("/r/a", "1"),
            lambda: store.put("/r/a", "2"),
            lambda: store.update("/r/a", "3", rev + 2),
            lambda: store.txn([], [Put("/r/b", "1"), Put("/r/c", "1"), Delete("/r/a")]),
            lambda: store.delete("/r/b"),
            lambda: store.delete("/r/c", rev + 4),
        ]
        for i, write in enumerate(writes, start=1):
            write()
            assert store.revision() == rev + i, f"write {i}"

    def test_failed_writes_take_no_revision(self, store: Datastore) -> None:
        kv = store.create("/a", "1")
        rev = store.revision()
        for fail in [
            lambda: store.create("/a", "x"),
            lambda: store.update("/a", "x", kv.mod_revision + 100),
            lambda: store.update("/b", "x", 1),
            lambda: store.delete("/b"),
            lambda: store.delete("/a", kv.mod_revision + 100),
        ]:
            with pytest.raises(DatastoreError):
                fail()
        assert store.txn([Compare("/a", 0)], [Put("/a", "x")]).succeeded is False
        assert store.revision() == rev

    # -- transactions -------------------------------------------------------------------------
    def test_txn_success_applies_all_at_one_revision(self, store: Datastore) -> None:
        a = store.create("/t/a", "1")
        store.create("/t/z", "1")
        rev = store.revision()
        result = store.txn(
            [Compare("/t/a", a.mod_revision), Compare("/t/new", 0)],
            [Put("/t/a", "2"), Put("/t/new", "1"), Delete("/t/z")],
        )
        assert result.succeeded
        assert result.revision == rev + 1 == store.revision()
        assert store.get("/t/a") == KeyValue("/t/a", "2", a.create_revision, rev + 1)
        assert store.get("/t/new") == KeyValue("/t/new", "1", rev + 1, rev + 1)
        assert store.get("/t/z") is None

    def test_txn_failure_applies_nothing(self, store: Datastore) -> None:
        a = store.create("/t/a", "1")
        b = store.create("/t/b", "1")
        rev = store.revision()
        before = store.list("/t/")
        result = store.txn(
            [Compare("/t/a", a.mod_revision), Compare("/t/b", b.mod_revision + 1)],
            [Put("/t/a", "2"), Put("/t/c", "1"), Delete("/t/b")],
        )
        assert not result.succeeded
        assert result.revision == rev == store.revision()
        assert store.list("/t/").items == before.items

    def test_txn_compare_zero_means_absent(self, store: Datastore) -> None:
        assert store.txn([Compare("/t/x", 0)], [Put("/t/x", "1")]).succeeded
        assert not store.txn([Compare("/t/x", 0)], [Put("/t/x", "2")]).succeeded
        assert store.get("/t/x").value == "1"  # type: ignore[union-attr]

    def test_txn_without_compares_and_ops(self, store: Datastore) -> None:
        store.create("/t/a", "1")
        rev = store.revision()
        assert store.txn([], [Put("/t/b", "1")]).succeeded
        assert store.revision() == rev + 1
        empty = store.txn([Compare("/t/b", rev + 1)], [])
        assert empty.succeeded and empty.revision == rev + 1 == store.revision()

    def test_txn_deleting_only_absent_keys_takes_no_revision(self, store: Datastore) -> None:
        # etcd's behaviour: a transaction that changes nothing does not advance the revision.
        store.create("/t/a", "1")
        rev = store.revision()
        result = store.txn([], [Delete("/t/absent")])
        assert result.succeeded and result.revision == rev == store.revision()

    def test_txn_rejects_two_ops_on_one_key(self, store: Datastore) -> None:
        rev = store.revision()
        with pytest.raises(DatastoreError):
            store.txn([], [Put("/t/a", "1"), Put("/t/a", "2")])
        with pytest.raises(DatastoreError):
            store.txn([], [Put("/t/a", "1"), Delete("/t/a")])
        assert store.revision() == rev
        assert store.get("/t/a") is None

    # -- watch --------------------------------------------------------------------------------
    def test_watch_after_list_delivers_exactly_the_changes_in_order(self, store: Datastore) -> None:
        store.create("/w/a", "1")
        store.create("/w/b", "1")
        listing = store.list("/w/")
        w = store.watch("/w/", listing.revision + 1)
        try:
            r1 = store.update("/w/a", "2", listing.items[0].mod_revision).mod_revision
            store.put("/x/outside", "1")  # other prefix: not delivered
            r2 = store.create("/w/c", "1").mod_revision
            store.delete("/w/b")
            r3 = store.revision()
            t = store.txn([], [Put("/w/d", "1"), Delete("/w/c"), Put("/wx", "1")]).revision
            events = collect(w, 5)
            assert w.next(timeout=0.2) == []  # nothing more: none repeated
        finally:
            w.close()
        assert events == [
            WatchEvent(EventType.PUT, "/w/a", "2", r1),
            WatchEvent(EventType.PUT, "/w/c", "1", r2),
            WatchEvent(EventType.DELETE, "/w/b", None, r3),
            WatchEvent(EventType.PUT, "/w/d", "1", t),
            WatchEvent(EventType.DELETE, "/w/c", None, t),
        ]

    def test_watch_from_an_older_revision_replays_history(self, store: Datastore) -> None:
        start = store.create("/h/a", "1").mod_revision
        store.put("/h/a", "2")
        store.delete("/h/a")
        w = store.watch("/h/", start + 1)
        try:
            events = collect(w, 2)
        finally:
            w.close()
        assert [(e.type, e.value, e.mod_revision) for e in events] == [
            (EventType.PUT, "2", start + 1),
            (EventType.DELETE, None, start + 2),
        ]

    def test_watch_prefix_filtering(self, store: Datastore) -> None:
        start = store.revision() + 1
        for key in ["/f/a", "/fa", "/f", "/g/a", "/f/b/c"]:
            store.put(key, "1")
        w = store.watch("/f/", start)
        try:
            events = collect(w, 2)
            assert w.next(timeout=0.2) == []
        finally:
            w.close()
        assert [e.key for e in events] == ["/f/a", "/f/b/c"]

    def test_watch_empty_prefix_sees_everything(self, store: Datastore) -> None:
        start = store.revision() + 1
        store.put("/a", "1")
        store.put("b", "1")
        w = store.watch("", start)
        try:
            events = collect(w, 2)
        finally:
            w.close()
        assert [e.key for e in events] == ["/a", "b"]

    def test_watch_next_times_out_with_empty_list(self, store: Datastore) -> None:
        w = store.watch("/quiet/", store.revision() + 1)
        try:
            store.put("/loud/a", "1")  # a write elsewhere is not an event here
            assert w.next(timeout=0.3) == []
        finally:
            w.close()

    def test_watch_blocks_until_a_change(self, store: Datastore) -> None:
        w = store.watch("/b/", store.revision() + 1)
        got: list[WatchEvent] = []

        def consume() -> None:
            got.extend(w.next(timeout=WAIT))

        t = threading.Thread(target=consume)
        t.start()
        time.sleep(0.2)
        kv = store.put("/b/a", "1")
        t.join(WAIT + 5)
        w.close()
        assert got == [WatchEvent(EventType.PUT, "/b/a", "1", kv.mod_revision)]

    def test_watch_before_compaction_horizon_raises(self, store: Datastore) -> None:
        first = store.create("/c/a", "1").mod_revision
        for i in range(3):
            store.put("/c/a", str(i))
        horizon = store.revision()
        store.compact(horizon)
        with pytest.raises(CompactedError) as ei:
            w = store.watch("/c/", first)
            try:
                raise next_raises_compacted(w)
            finally:
                w.close()
        assert ei.value.requested == first
        assert ei.value.compact_revision == horizon
        # Starting at the horizon is fine and sees the event there.
        w = store.watch("/c/", horizon)
        try:
            assert [e.mod_revision for e in collect(w, 1)] == [horizon]
        finally:
            w.close()

    def test_watch_from_horizon_sees_a_delete_at_the_horizon(self, store: Datastore) -> None:
        # etcd drops a tombstone at its compaction revision; the backend must hide that.
        store.create("/c/a", "1")
        store.delete("/c/a")
        horizon = store.revision()
        store.put("/c/b", "1")
        store.compact(horizon)
        w = store.watch("/c/", horizon)
        try:
            events = collect(w, 2)
        finally:
            w.close()
        assert [(e.type, e.key, e.mod_revision) for e in events] == [
            (EventType.DELETE, "/c/a", horizon),
            (EventType.PUT, "/c/b", horizon + 1),
        ]

    def test_compaction_keeps_data_and_is_idempotent(self, store: Datastore) -> None:
        kv = store.create("/c/a", "1")
        store.compact(store.revision())
        store.compact(store.revision())  # again: no error
        store.compact(kv.mod_revision - 1)  # below the horizon: no error
        store.compact(store.revision() + 1000)  # in the future: clamped
        assert store.get("/c/a") == kv
        assert store.list("/c/").items == (kv,)
        # Writes and watches go on after compaction.
        rev = store.revision()
        w = store.watch("/c/", rev + 1)
        try:
            store.put("/c/a", "2")
            assert [e.value for e in collect(w, 1)] == ["2"]
        finally:
            w.close()

    # -- concurrency --------------------------------------------------------------------------
    def test_threads_cas_increment(self, store: Datastore) -> None:
        store.create("/cnt", "0")
        errors: list[BaseException] = []

        def work() -> None:
            try:
                done = 0
                while done < 50:
                    kv = store.get("/cnt")
                    assert kv is not None
                    try:
                        store.update("/cnt", str(int(kv.value) + 1), kv.mod_revision)
                        done += 1
                    except ConflictError:
                        pass
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors
        assert store.get("/cnt").value == "200"  # type: ignore[union-attr]

    def test_multiprocess_cas_increment(self, store: Datastore, store_url: str) -> None:
        if store_url.startswith("memory:"):
            pytest.skip("not applicable: the memory store lives in one process")
        procs, n = 8, 200
        key = "/contended/counter"
        start = store.create(key, "0")
        children = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER, store_url, key, str(n)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(procs)
        ]
        try:
            for c in children:
                assert c.stdout is not None and c.stdin is not None and c.stderr is not None
                line = c.stdout.readline()
                assert line.strip() == "ready", line + c.stderr.read()
            for c in children:
                assert c.stdin is not None
                c.stdin.write("go\n")
                c.stdin.flush()
            outputs = [c.communicate(timeout=240) for c in children]
        finally:
            for c in children:
                if c.poll() is None:
                    c.kill()
                    c.wait()
        for c, (out, err) in zip(children, outputs, strict=True):
            assert c.returncode == 0, err
            assert out.startswith("conflicts"), out
        kv = store.get(key)
        assert kv is not None
        assert kv.value == str(procs * n)
        # Each successful CAS took exactly one revision.
        assert kv.mod_revision == start.mod_revision + procs * n
