"""SQLite watches woken by inotify (tortie.datastore.fswatch) instead of a 20 ms poll."""

from __future__ import annotations

import struct
import threading
import time
from pathlib import Path

import pytest
from test_datastore_sqlite import mode

from tortie.datastore import fswatch
from tortie.datastore.api import EventType
from tortie.datastore.sqlite import NOTIFIED_POLL_INTERVAL, NOTIFIED_SETTLE, SqliteDatastore

pytestmark = pytest.mark.unit


def _event(name: str, pad: int = 16) -> bytes:
    raw = name.encode() + b"\0" * (pad - len(name))
    return struct.pack("=iIII", 1, fswatch.IN_MODIFY, 0, len(raw)) + raw


def test_changed_names_parses_a_read_buffer() -> None:
    buffer = _event("t.db-wal") + _event("t.db") + _event("x", pad=4)
    assert fswatch.changed_names(buffer) == {"t.db-wal", "t.db", "x"}
    assert fswatch.changed_names(b"") == set()
    assert fswatch.changed_names(buffer[:10]) == set()  # a torn record is ignored


def test_another_writer_wakes_a_watch_at_once(tmp_path: Path) -> None:
    # Two objects on one file behave like two processes (no shared in-process wake-up), and
    # the poll interval is so long that only the notifier can deliver the event in time.
    a = SqliteDatastore(tmp_path / "t.db", poll_interval=30.0, create=True)
    b = SqliteDatastore(tmp_path / "t.db", create=True)
    w = a.watch("/", a.revision() + 1)
    try:
        assert a._notifier is not None and a._notifier.alive
        assert w.next(timeout=0.3) == []
        timer = threading.Timer(0.2, lambda: b.put("/x", "1"))
        start = time.monotonic()
        timer.start()
        events = w.next(timeout=10.0)
        took = time.monotonic() - start
        timer.join()
    finally:
        w.close()
        a.close()
        b.close()
    assert [(e.type, e.key) for e in events] == [(EventType.PUT, "/x")]
    assert took < 2.0, took


def test_a_commit_touches_the_notify_file_after_it(tmp_path: Path) -> None:
    # The WAL's own writes come before the commit is published (the WAL index is shared
    # memory, which inotify does not see), so the wake-up is a file touched after COMMIT.
    s = SqliteDatastore(tmp_path / "t.db", create=True)
    notify = tmp_path / "t.db-notify"
    try:
        assert notify.exists() and mode(notify) == 0o600
        before = notify.stat().st_mtime_ns
        time.sleep(0.01)
        s.put("/k", "v")
        assert notify.stat().st_mtime_ns > before
        # Removed by hand: a commit does not make it again (writers make no files: issue 17),
        # watches poll each second meanwhile; `tortie datastore init` (create=True) makes it.
        notify.unlink()
        s.put("/k", "w")
        assert not notify.exists()
        SqliteDatastore(tmp_path / "t.db", create=True).close()
        assert notify.exists() and mode(notify) == 0o600
    finally:
        s.close()


def test_a_woken_watch_reads_a_burst_as_one_batch(tmp_path: Path) -> None:
    # Another process's commits wake the watch, which reads NOTIFIED_SETTLE later: a burst of
    # commits (an IPAM assignment is several) comes as one batch, not one pass per commit.
    a = SqliteDatastore(tmp_path / "t.db", poll_interval=30.0, create=True)
    b = SqliteDatastore(tmp_path / "t.db", create=True)
    w = a.watch("/", a.revision() + 1)

    def burst() -> None:
        for i in range(3):
            b.put(f"/k{i}", "v")

    try:
        assert w.next(timeout=0.2) == []
        timer = threading.Timer(0.1, burst)
        start = time.monotonic()
        timer.start()
        events = w.next(timeout=10.0)
        took = time.monotonic() - start - 0.1
        timer.join()
        first = len(events)
        while len(events) < 3:  # a slow machine may spread the burst over more batches
            events += w.next(timeout=5.0)
    finally:
        w.close()
        a.close()
        b.close()
    assert [e.key for e in events] == ["/k0", "/k1", "/k2"]
    # Read after the settle time (not at the first write), and long before any poll.
    assert took + 0.002 >= NOTIFIED_SETTLE and took < 0.5, took
    assert first >= 1


def test_an_idle_watch_checks_about_once_a_second(tmp_path: Path) -> None:
    s = SqliteDatastore(tmp_path / "t.db", create=True)
    w = s.watch("/", s.revision() + 1)
    polls = 0
    real_poll = w._poll

    def counting_poll() -> object:
        nonlocal polls
        polls += 1
        return real_poll()

    w._poll = counting_poll  # type: ignore[method-assign]
    try:
        assert s.watch_poll_interval == NOTIFIED_POLL_INTERVAL
        assert w.next(timeout=2.0) == []
    finally:
        w.close()
        s.close()
    # 20 ms polling would have checked about 100 times.
    assert 1 <= polls <= 4, polls


def test_other_files_in_the_directory_wake_nobody(tmp_path: Path) -> None:
    s = SqliteDatastore(tmp_path / "t.db", create=True)
    w = s.watch("/", s.revision() + 1)
    try:
        before = s._generation
        (tmp_path / "status.json").write_text("{}")
        time.sleep(0.3)
        assert s._generation == before
        other = SqliteDatastore(tmp_path / "t.db", create=True)
        other.put("/k", "v")
        other.close()
        deadline = time.monotonic() + 2.0
        while s._generation == before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert s._generation != before
    finally:
        w.close()
        s.close()


def test_without_inotify_watches_poll(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fswatch, "start", lambda *args: None)
    a = SqliteDatastore(tmp_path / "t.db", create=True)
    b = SqliteDatastore(tmp_path / "t.db", create=True)
    w = a.watch("/", a.revision() + 1)
    try:
        assert a.watch_poll_interval == a.poll_interval == 0.02
        b.put("/x", "1")
        events = w.next(timeout=5.0)
    finally:
        w.close()
        a.close()
        b.close()
    assert [e.key for e in events] == ["/x"]


def test_close_stops_the_notifier(tmp_path: Path) -> None:
    s = SqliteDatastore(tmp_path / "t.db", create=True)
    assert s._notifier is None  # no watch, no notifier
    w = s.watch("/", 1)
    notifier = s._notifier
    assert notifier is not None and notifier.alive
    w.close()
    s.close()
    assert not notifier.alive
    assert s._notifier is None
    assert s.watch_poll_interval == s.poll_interval


def test_a_refused_inotify_instance_is_not_an_error(tmp_path: Path) -> None:
    assert fswatch.start(str(tmp_path / "missing-dir"), ["x"], lambda: None) is None
