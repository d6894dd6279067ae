"""Issue 17, items 1, 2 and 4 on the SQLite backend: opening never creates or changes a file,
a file that is not tortie's is left exactly as it was, a replaced or rolled-back store is
refused, a malformed one refuses writes, and the change-log and WAL stay bounded."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from sqlite_damage import corrupt_oldest_changes

from tortie.datastore.api import (
    CorruptDatastoreError,
    DatastoreMissingError,
    DatastoreReplacedError,
    NotADatastoreError,
    UnavailableError,
)
from tortie.datastore.factory import open_datastore
from tortie.datastore.sqlite import SqliteDatastore

pytestmark = pytest.mark.unit


def snapshot(path: Path) -> dict[str, object]:
    """Everything about the files at ``path``* that opening must not change."""
    out: dict[str, object] = {}
    for p in sorted(path.parent.iterdir()):
        if p.name.startswith(path.name):
            st = p.stat()
            out[p.name] = (
                hashlib.sha256(p.read_bytes()).hexdigest(),
                stat.S_IMODE(st.st_mode),
                st.st_ino,
                st.st_mtime_ns,
            )
    return out


def journal_mode_byte(path: Path) -> int:
    return path.read_bytes()[18]  # 1: rollback journal, 2: WAL


# -- item 1: opening never creates -------------------------------------------------------------
def test_opening_a_missing_file_creates_nothing(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "t.db"
    url = f"sqlite://{db}"
    with pytest.raises(DatastoreMissingError) as ei:
        open_datastore(url)
    msg = str(ei.value)
    assert url in msg and "tortie datastore init" in msg and "moved" in msg
    assert isinstance(ei.value, UnavailableError)  # waiters retry: it may come back
    assert not (tmp_path / "sub").exists()


def test_a_missing_file_with_its_journal_left_says_it_was_moved(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    s = SqliteDatastore(db, create=True)
    try:
        s.put("/k", "v")  # held open: the -wal stays
        os.rename(db, tmp_path / "away.db")
        before = snapshot(db)
        with pytest.raises(DatastoreMissingError, match="moved away while in use"):
            open_datastore(f"sqlite://{db}")
        # Not even an explicit creation may take the journal over.
        with pytest.raises(UnavailableError, match="Refusing to create"):
            open_datastore(f"sqlite://{db}", create=True)
        assert not db.exists()
        assert snapshot(db) == before
    finally:
        s.close()


def test_moved_away_under_an_open_store_then_back(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    s = SqliteDatastore(db, create=True)
    try:
        s.put("/a", "1")
        os.rename(db, tmp_path / "away.db")
        # The object does not go on writing into a file that is no longer the store's path.
        with pytest.raises(DatastoreMissingError):
            s.put("/a", "2")
        with pytest.raises(DatastoreMissingError):
            s.get("/a")
        assert not db.exists()
        os.rename(tmp_path / "away.db", db)
        assert s.get("/a").value == "1"  # type: ignore[union-attr]
        s.put("/a", "3")
    finally:
        s.close()


def test_the_issue_scenario_keeps_every_commit(tmp_path: Path) -> None:
    """Commits still in the WAL of a live store, the file moved away, a reader opens the path:
    it fails, nothing is created, the -wal is untouched; moved back, every commit is there."""
    db = tmp_path / "datastore.db"
    agent = SqliteDatastore(db, create=True)
    try:
        for i in range(20):
            agent.put(f"/tortie/k/{i}", str(i))
        rev = agent.revision()
        wal = Path(f"{db}-wal")
        assert wal.stat().st_size > 0  # un-checkpointed commits
        os.rename(db, tmp_path / "moved.db")
        before = snapshot(db)
        code = "import sys\nfrom tortie.datastore.factory import open_datastore\n"
        code += "open_datastore(sys.argv[1]).list('/')"
        out = subprocess.run(
            [sys.executable, "-c", code, f"sqlite://{db}"],
            check=False,
            capture_output=True,
            text=True,
        )
        assert out.returncode != 0 and "DatastoreMissingError" in out.stderr
        assert not db.exists()
        assert snapshot(db) == before  # the -wal and -shm: same inode, bytes, mode
        os.rename(tmp_path / "moved.db", db)
    finally:
        agent.close()
    s = SqliteDatastore(db)
    try:
        assert s.revision() == rev
        assert len(s.list("/tortie/k/").items) == 20
    finally:
        s.close()


WRITER = textwrap.dedent(
    """
    import sys, time
    from tortie.datastore.api import DatastoreError
    from tortie.datastore.factory import open_datastore

    store = open_datastore(sys.argv[1])
    acked = 0
    print("ready", flush=True)
    deadline = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < deadline:
        try:
            store.put("/counter", str(acked + 1))
        except DatastoreError:
            time.sleep(0.001)
            continue
        acked += 1
    store.close()
    print(acked, flush=True)
    """
)


def test_readers_racing_a_moved_away_live_store_lose_nothing(tmp_path: Path) -> None:
    """The race of issue 17 item 1, many times: a writer process commits all along, the file
    is moved away and back, readers open the path meanwhile. No reader creates a file, no
    commit the writer was told succeeded is lost, and the revision never goes backwards."""
    db = tmp_path / "datastore.db"
    url = f"sqlite://{db}"
    SqliteDatastore(db, create=True).close()
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, url, "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None
    assert writer.stdout.readline().strip() == "ready"
    away = tmp_path / "away.db"
    rounds = absent_refusals = present_reads = 0
    last_rev = 0
    try:
        while writer.poll() is None and rounds < 400:
            rounds += 1
            os.rename(db, away)
            for _ in range(3):
                with pytest.raises(DatastoreMissingError):
                    open_datastore(url)
                absent_refusals += 1
            assert not db.exists(), f"round {rounds}: a reader created the file"
            os.rename(away, db)
            try:
                s = open_datastore(url)
            except DatastoreMissingError:
                continue
            try:
                rev = s.revision()
                assert rev >= last_rev, f"round {rounds}: revision {rev} < {last_rev}"
                last_rev = rev
                present_reads += 1
            finally:
                s.close()
        out, err = writer.communicate(timeout=60)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
        if away.exists() and not db.exists():
            os.rename(away, db)
    assert writer.returncode == 0, err
    acked = int(out.strip().splitlines()[-1])
    assert rounds >= 20 and present_reads >= 10 and acked > 0, (rounds, present_reads, acked)
    s = open_datastore(url)
    try:
        kv = s.get("/counter")
        assert kv is not None and int(kv.value) == acked  # every acknowledged commit is there
    finally:
        s.close()


def _open_close_elsewhere(db: Path) -> None:
    """Another process opens the store and closes it: if it finds no other process holding the
    file's locks, its close checkpoints and deletes the -wal and -shm (SQLite's rule)."""
    code = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
        "c.execute('SELECT count(*) FROM kv').fetchone(); c.close()"
    )
    subprocess.run([sys.executable, "-c", code, str(db)], check=True, timeout=60)


@pytest.mark.parametrize("second", ["store", "check"])
def test_opening_the_file_again_in_one_process_keeps_its_locks(tmp_path: Path, second: str) -> None:
    # Found while fixing item 1: reading the header with a raw open()/close() dropped every
    # POSIX lock this process held on the file (locks belong to process and inode), so another
    # process's close deleted the -wal that the first store still committed into.
    db = tmp_path / "t.db"
    url = f"sqlite://{db}"
    first = open_datastore(url, create=True)
    try:
        first.put("/k/0", "before")
        assert os.path.exists(f"{db}-wal")
        if second == "store":
            other = open_datastore(url)
            assert other.get("/k/0") is not None
            other.close()
        else:
            from tortie.datastore import sqlitefile

            sqlitefile.check_store(str(db), url)
        _open_close_elsewhere(db)
        assert os.path.exists(f"{db}-wal"), "the live store's -wal was deleted under it"
        first.put("/k/1", "after")
        reader = open_datastore(url)
        try:
            assert reader.get("/k/1") is not None
        finally:
            reader.close()
    finally:
        first.close()


# -- item 2: a path that is not tortie's is left untouched ---------------------------------------
def _attempts(db: Path) -> None:
    """Open ``db`` as readers do, then as `tortie datastore init` does: both refused."""
    for create in (False, True):
        with pytest.raises(UnavailableError) as ei:
            open_datastore(f"sqlite://{db}", create=create)
        assert "left untouched" in str(ei.value) or "not a tortie datastore" in str(ei.value)


def test_a_plain_file_is_left_exactly_as_it_was(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("root:x:0:0:root:/root:/bin/bash\n")
    f.chmod(0o644)
    before = snapshot(f)
    _attempts(f)
    assert snapshot(f) == before  # bytes, mode 0644, no f-notify, no f-wal or f-shm


def test_an_empty_file_is_not_taken_for_a_store(tmp_path: Path) -> None:
    f = tmp_path / "empty.db"
    f.touch(0o644)
    before = snapshot(f)
    with pytest.raises(NotADatastoreError, match="is empty"):
        open_datastore(f"sqlite://{f}")
    _attempts(f)
    assert snapshot(f) == before


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_another_programs_sqlite_database_is_left_as_it_was(tmp_path: Path, journal: str) -> None:
    db = tmp_path / "other.db"
    c = sqlite3.connect(db)
    c.execute(f"PRAGMA journal_mode={journal}")
    c.execute("CREATE TABLE users (name TEXT)")
    c.execute("INSERT INTO users VALUES ('ada')")
    c.commit()
    c.close()
    db.chmod(0o644)
    mode_byte = journal_mode_byte(db)
    before = snapshot(db)
    _attempts(db)
    assert snapshot(db) == before  # no -notify, no -wal/-shm, mode and bytes as they were
    assert journal_mode_byte(db) == mode_byte  # not switched to WAL


def test_a_database_with_a_meta_table_that_is_not_tortie_s(tmp_path: Path) -> None:
    db = tmp_path / "other.db"
    c = sqlite3.connect(db)
    c.execute("CREATE TABLE meta (k TEXT)")
    c.commit()
    c.close()
    before = snapshot(db)
    _attempts(db)
    assert snapshot(db) == before


def test_proc_self_status_is_refused() -> None:
    # Issue 17 item 11: a traceback. (Only kernel files that nothing can change are used here:
    # a test pointed at /etc/passwd or /dev/null would damage the machine when run on code
    # with the bug it looks for. Their stand-ins follow, in a temporary directory.)
    with pytest.raises(NotADatastoreError, match="not an SQLite database"):
        open_datastore("sqlite:///proc/self/status")
    assert not os.path.exists("/proc/self/status-notify")


def test_a_copy_of_etc_passwd_is_left_untouched(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_bytes(Path("/etc/passwd").read_bytes())
    passwd.chmod(0o644)
    before = snapshot(passwd)
    _attempts(passwd)
    assert snapshot(passwd) == before  # 0644 stays 0644, no passwd-notify


def test_a_socket_is_refused_untouched(tmp_path: Path) -> None:
    import socket

    path = tmp_path / "sock.db"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        mode = path.stat().st_mode
        with pytest.raises(NotADatastoreError, match="not a regular file"):
            open_datastore(f"sqlite://{path}", create=True)
        assert path.stat().st_mode == mode
        assert sorted(p.name for p in tmp_path.iterdir()) == ["sock.db"]


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.db"
    os.mkfifo(fifo)
    with pytest.raises(NotADatastoreError, match="not a regular file"):
        open_datastore(f"sqlite://{fifo}")


# -- identity ---------------------------------------------------------------------------------
def test_another_file_put_in_place_is_refused_until_the_right_one_is_back(
    tmp_path: Path,
) -> None:
    db = tmp_path / "t.db"
    s = SqliteDatastore(db, create=True)
    try:
        s.put("/a", "1")
        os.rename(db, tmp_path / "orig.db")
        SqliteDatastore(tmp_path / "other.db", create=True).close()
        os.rename(tmp_path / "other.db", db)  # a restore under a live process
        with pytest.raises(DatastoreReplacedError) as ei:
            s.get("/a")
        assert "no longer the file this process opened" in str(ei.value)
        assert "Nothing was written" in str(ei.value)
        with pytest.raises(DatastoreReplacedError):
            s.put("/a", "2")
        w_error = None
        try:
            s.watch("/", 1)
        except DatastoreReplacedError as err:
            w_error = err
        assert w_error is not None
        os.replace(tmp_path / "orig.db", db)  # the right file is back
        assert s.get("/a").value == "1"  # type: ignore[union-attr]
        s.put("/a", "3")
    finally:
        s.close()


def drop_connections(s: SqliteDatastore) -> None:
    """As if the pool were empty: the next use opens a new connection (and checks it)."""
    for conn in s._pool:
        conn.close()
    s._pool.clear()


def test_another_store_copied_over_the_file_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    s = SqliteDatastore(db, create=True)
    try:
        s.put("/a", "1")
        ident = s.identity()
        other = SqliteDatastore(tmp_path / "other.db", create=True)
        other_id = other.identity()
        other.close()
        drop_connections(s)
        shutil.copyfile(tmp_path / "other.db", db)  # the same inode, another store's bytes
        with pytest.raises(DatastoreReplacedError) as ei:
            s.get("/a")
        assert ident in str(ei.value) and other_id in str(ei.value)
    finally:
        s.close()


def test_a_store_whose_revision_went_backwards_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    s = SqliteDatastore(db, create=True)
    try:
        s.put("/a", "1")
        s.close()
        shutil.copy(db, tmp_path / "backup.db")  # a copy at this revision (and this id)
        s = SqliteDatastore(db)
        for i in range(5):
            s.put("/a", str(i))
        seen = s.revision()
        drop_connections(s)
        shutil.copyfile(tmp_path / "backup.db", db)  # restored from the older copy, in place
        with pytest.raises(DatastoreReplacedError, match=f"lower than {seen}"):
            s.revision()
    finally:
        s.close()


def test_a_schema_1_store_is_read_and_gets_an_id_on_init(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.executescript(
        """
        CREATE TABLE meta (id INTEGER PRIMARY KEY CHECK (id = 1), schema_version INTEGER NOT
            NULL, revision INTEGER NOT NULL, compact_revision INTEGER NOT NULL);
        CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, create_revision INTEGER
            NOT NULL, mod_revision INTEGER NOT NULL) WITHOUT ROWID;
        CREATE TABLE changes (revision INTEGER NOT NULL, seq INTEGER NOT NULL, key TEXT NOT
            NULL, type TEXT NOT NULL, value TEXT, PRIMARY KEY (revision, seq)) WITHOUT ROWID;
        INSERT INTO meta VALUES (1, 1, 1, 0);
        """
    )
    c.close()
    s = SqliteDatastore(db)
    try:
        assert s.identity() == ""  # read as it is: no id until init
        s.put("/a", "1")
        init = SqliteDatastore(db, create=True)
        ident = init.identity()
        init.close()
        assert len(ident) == 36
        assert s.identity() == ident and s.get("/a").value == "1"  # type: ignore[union-attr]
    finally:
        s.close()


# -- item 4: a malformed store refuses writes ----------------------------------------------------
def test_a_malformed_store_refuses_writes_and_says_how_to_recover(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    s = SqliteDatastore(db, create=True)
    for i in range(300):
        s.put(f"/k/{i:04}", "x" * 200)
    s.close()  # checkpointed: everything is in the main file
    corrupt_oldest_changes(db)
    before = snapshot(db)
    s = SqliteDatastore(db)
    try:
        with pytest.raises(CorruptDatastoreError) as ei:
            s.delete("/k/0007")  # the first write checks the file
        msg = str(ei.value)
        assert str(db) in msg and "malformed" in msg and ".recover" in msg
        with pytest.raises(CorruptDatastoreError):  # sticky
            s.put("/new", "1")
    finally:
        s.close()
    assert snapshot(db)[db.name] == before[db.name]


def test_a_corruption_seen_by_a_read_makes_writes_refused(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    s = SqliteDatastore(db, create=True)
    try:
        s.put("/a", "1")  # the first write's check passed
        err = sqlite3.DatabaseError("database disk image is malformed")
        err.sqlite_errorcode = 11  # type: ignore[attr-defined]
        assert isinstance(s._translate(err), CorruptDatastoreError)
        with pytest.raises(CorruptDatastoreError, match="refuses to write"):
            s.put("/a", "2")
        assert s.get("/a").value == "1"  # type: ignore[union-attr]  # reads go on
    finally:
        s.close()


# -- bounded files ------------------------------------------------------------------------------
def test_change_log_and_wal_stay_bounded(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    s = SqliteDatastore(db, create=True, history_keep=300, maintain_every=100)
    w = s.watch("/", 1)  # a live watcher, as agents are
    stop = threading.Event()

    def follow() -> None:
        while not stop.is_set():
            try:
                w.next(timeout=0.1)
            except Exception:  # fell behind the horizon: fine here
                return

    t = threading.Thread(target=follow)
    t.start()
    try:
        value = "v" * 1500
        for i in range(4000):
            s.put(f"/k/{i % 50}", value)
        with s._conn() as conn:
            (rows,) = conn.execute("SELECT count(*) FROM changes").fetchone()
        assert rows <= 300 + 100
        assert s.compact_revision() > s.revision() - 400
        assert os.path.getsize(f"{db}-wal") <= 8 * 1024 * 1024
        # Steady state: the file stops growing (freed pages are reused).
        size = db.stat().st_size
        for i in range(2000):
            s.put(f"/k/{i % 50}", value)
        assert db.stat().st_size <= size * 1.25
    finally:
        stop.set()
        t.join()
        w.close()
        s.close()


def test_maintenance_does_not_strand_a_watch_that_keeps_up(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    s = SqliteDatastore(db, create=True, history_keep=50, maintain_every=10)
    try:
        w = s.watch("/", s.revision() + 1)
        got = 0
        for i in range(200):
            s.put("/k", str(i))
            got += len(w.next(timeout=5))
        assert got == 200
        w.close()
    finally:
        s.close()
