"""SQLite backend specifics: files and permissions, bad paths, persistence, cross-process
watches, locking, history pruning."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from datastore_conformance import collect

from tortie.datastore.api import CompactedError, EventType, UnavailableError
from tortie.datastore.sqlite import SqliteDatastore, prefix_end

pytestmark = pytest.mark.unit


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_file_and_directories_are_private(tmp_path: Path) -> None:
    db = tmp_path / "a" / "b" / "tortie.db"
    old = os.umask(0o022)  # the usual umask: would give 0644 files and 0755 dirs
    try:
        s = SqliteDatastore(db, create=True)
        s.put("/k", "v")
        w = s.watch("/", 1)  # a reader too, so -shm certainly exists
        w.next(timeout=0.1)
    finally:
        os.umask(old)
    try:
        assert mode(tmp_path / "a") == 0o700
        assert mode(tmp_path / "a" / "b") == 0o700
        for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            assert p.exists(), p
            assert mode(p) & 0o077 == 0, f"{p}: {oct(mode(p))}"
    finally:
        w.close()
        s.close()


def test_existing_world_readable_file_is_tightened(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    SqliteDatastore(db, create=True).close()
    db.chmod(0o644)
    SqliteDatastore(db, create=True).close()
    assert mode(db) & 0o007 == 0


def test_file_that_is_not_a_database(tmp_path: Path) -> None:
    db = tmp_path / "junk.db"
    db.write_bytes(b"this is not an SQLite database, just some text\n" * 100)
    url = f"sqlite://{db}"
    with pytest.raises(UnavailableError) as ei:
        SqliteDatastore(db, url=url, create=True)
    msg = str(ei.value)
    assert url in msg and "not an SQLite database" in msg and "left untouched" in msg


def test_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "other.db"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE users (name TEXT)")
    c.close()
    with pytest.raises(UnavailableError, match="not a tortie datastore"):
        SqliteDatastore(db, create=True)


def test_directory_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    db = tmp_path / "file" / "sub" / "t.db"  # a parent is a regular file
    url = f"sqlite://{db}"
    with pytest.raises(UnavailableError) as ei:
        SqliteDatastore(db, url=url, create=True)
    assert url in str(ei.value) and "--datastore" in str(ei.value)


def test_path_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(UnavailableError, match="is a directory"):
        SqliteDatastore(tmp_path, create=True)


def test_data_and_history_persist_across_reopen(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    s = SqliteDatastore(db, create=True)
    kv = s.create("/a", "1")
    s.put("/b", "1")
    s.compact(kv.mod_revision + 1)
    rev = s.revision()
    s.close()
    s = SqliteDatastore(db, create=True)
    try:
        assert s.get("/a") == kv
        assert s.revision() == rev
        assert s.compact_revision() == kv.mod_revision + 1
        with pytest.raises(CompactedError):
            s.watch("/", kv.mod_revision)
    finally:
        s.close()


def test_watch_sees_writes_of_another_store_object(tmp_path: Path) -> None:
    # Two objects on one file behave like two processes: no in-process wake-up, so this
    # exercises the data_version poll.
    a = SqliteDatastore(tmp_path / "t.db", create=True)
    b = SqliteDatastore(tmp_path / "t.db", create=True)
    w = a.watch("/", a.revision() + 1)
    try:
        kv = b.put("/x", "1")
        b.delete("/x")
        events = collect(w, 2)
    finally:
        w.close()
        a.close()
        b.close()
    assert [(e.type, e.mod_revision) for e in events] == [
        (EventType.PUT, kv.mod_revision),
        (EventType.DELETE, kv.mod_revision + 1),
    ]


def test_watch_sees_writes_of_another_process(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    s = SqliteDatastore(db, create=True)
    w = s.watch("/p/", s.revision() + 1)
    code = textwrap.dedent(
        """
        import sys
        from tortie.datastore.sqlite import SqliteDatastore
        s = SqliteDatastore(sys.argv[1], create=True)
        for i in range(20):
            s.put(f"/p/{i:02d}", str(i))
        s.close()
        """
    )
    try:
        subprocess.run([sys.executable, "-c", code, str(db)], check=True, timeout=120)
        events = collect(w, 20)
    finally:
        w.close()
        s.close()
    assert [e.key for e in events] == [f"/p/{i:02d}" for i in range(20)]


def test_lagging_watch_gets_compacted_error(tmp_path: Path) -> None:
    s = SqliteDatastore(tmp_path / "t.db", create=True)
    try:
        w = s.watch("/", s.revision() + 1)
        s.put("/a", "1")
        s.put("/a", "2")
        s.compact(s.revision())
        with pytest.raises(CompactedError):
            w.next(timeout=5)
        w.close()
    finally:
        s.close()


def test_prune_history_keeps_the_last_revisions(tmp_path: Path) -> None:
    s = SqliteDatastore(tmp_path / "t.db", create=True)
    try:
        for i in range(10):
            s.put("/a", str(i))
        rev = s.revision()
        assert s.prune_history(3) == rev - 2
        assert s.compact_revision() == rev - 2
        with pytest.raises(CompactedError):
            s.watch("/", rev - 3)
        w = s.watch("/", rev - 2)
        assert [e.value for e in collect(w, 3)] == ["7", "8", "9"]
        w.close()
        with pytest.raises(ValueError):
            s.prune_history(0)
    finally:
        s.close()


def test_writer_blocked_past_busy_timeout_is_unavailable(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    s = SqliteDatastore(db, busy_timeout=0.2, create=True)
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another "process" holds the write lock
        with pytest.raises(UnavailableError, match="locked"):
            s.put("/a", "1")
        assert s.get("/a") is None  # reads still work under WAL
        holder.execute("ROLLBACK")
        s.put("/a", "1")  # and the store recovers
    finally:
        holder.close()
        s.close()


def test_closed_store_is_unavailable(tmp_path: Path) -> None:
    s = SqliteDatastore(tmp_path / "t.db", create=True)
    w = s.watch("/", 1)
    s.close()
    with pytest.raises(UnavailableError, match="closed"):
        s.get("/a")
    assert w.next(timeout=0.1) == []
    w.close()


def test_default_url_names_the_absolute_path(tmp_path: Path) -> None:
    s = SqliteDatastore(tmp_path / "t.db", create=True)
    try:
        assert s.url == f"sqlite://{tmp_path}/t.db"
    finally:
        s.close()


@pytest.mark.parametrize(
    ("prefix", "end"),
    [
        ("/a/", "/a0"),
        ("", None),
        ("a\U0010ffff", "b"),
        ("\U0010ffff", None),
        ("x\ud7ff", "x\ue000"),
        ("é", "ê"),
    ],
)
def test_prefix_end(prefix: str, end: str | None) -> None:
    assert prefix_end(prefix) == end


def test_many_processes_create_the_same_new_file_at_once(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/new/t.db"
    code = (
        "import sys\n"
        "from tortie.datastore.factory import open_datastore\n"
        "s = open_datastore(sys.argv[1], create=True)\n"
        "s.put('/k/' + sys.argv[2], 'v')\n"
        "s.close()\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, url, str(i)], stderr=subprocess.PIPE)
        for i in range(8)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    s = SqliteDatastore(tmp_path / "new" / "t.db", create=True)
    try:
        assert len(s.list("/k/").items) == 8
        assert s.revision() == 9
    finally:
        s.close()
