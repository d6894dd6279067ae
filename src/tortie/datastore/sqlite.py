"""SQLite datastore: the :mod:`.api` contract on one local file, shared by many processes.

Problem: on a single node (and in labs) tortie's agent, CLI and CNI plugin processes share
state without running etcd. SQLite gives atomic, durable transactions across processes; this
module adds etcd's model on top: a global revision, per-key create/mod revisions, and a
change-log that watches poll.

Layout (schema version 1):
- ``meta``: one row: the current ``revision`` (1 for an empty store) and the compaction
  horizon ``compact_revision`` (watches starting before it get :class:`CompactedError`).
- ``kv``: the live keys, ``(key, value, create_revision, mod_revision)``.
- ``changes``: one row per changed key per revision ``(revision, seq, key, type, value)``;
  ``seq`` orders the ops of one transaction. ``compact(rev)`` deletes rows below ``rev``.

Invariants:
- Every write runs in ``BEGIN IMMEDIATE``: it takes the file's write lock before reading
  ``meta.revision``, so writers are serialised across processes, guards (compare
  ``mod_revision``) are checked against the state they modify, and a revision is taken exactly
  once per transaction that changes something (a transaction whose deletes all miss takes
  none, as in etcd). The ``kv`` rows and the ``changes`` rows of one revision commit together,
  so a watch sees a transaction entirely or not at all.
- Reads that need two statements (``list``, a watch poll) run in one read transaction: WAL
  gives them a snapshot, so ``list().revision`` matches its items exactly.
- Text compares with SQLite's BINARY collation (memcmp of UTF-8), which orders keys by code
  point: the same order as etcd's byte order and Python's ``sorted``.

Durability: ``synchronous=FULL``. With WAL, NORMAL survives process crashes but may lose the
last commits on power loss; an IPAM allocation that was handed to a pod and then forgotten
is a double allocation waiting to happen, and FULL still does ~2000 write txn/s here.

Hazards:
- Safe across processes and threads: each thread borrows a connection from a small pool
  (sqlite3 connections must not be used by two threads at once), and each watch has its own.
  Do not carry an open store across ``fork()``: open a new one in the child.
- WAL needs shared memory between processes: the file must be on a local filesystem (not NFS).
- A writer waits up to ``busy_timeout`` seconds (30 by default) for the write lock, then gets
  :class:`UnavailableError`. ``BEGIN IMMEDIATE`` is what makes the busy handler apply: a
  deferred transaction that upgrades from read to write would fail at once with SQLITE_BUSY.
- Watches check ``PRAGMA data_version`` (has any other connection committed?) when woken:
  at once by a commit made through the same :class:`SqliteDatastore` object; by inotify when
  another process commits (:mod:`.fswatch`): every commit ends by touching ``<db>-notify``
  (its mtime), *after* the commit is published. The WAL file's own writes would come too
  early: the writer publishes a commit in the WAL index, shared memory that inotify does not
  see, only after its fsync. Woken so, a watch reads 10 ms later (``NOTIFIED_SETTLE``: a
  burst of commits arrives as one batch). And every ``NOTIFIED_POLL_INTERVAL`` (1 s) as a
  safety net, for writers that are not this class. Where the kernel refuses an inotify
  instance, watches poll every ``poll_interval`` (20 ms) instead, about 1 % of a core per
  idle watcher.
- The change-log grows until someone calls :meth:`SqliteDatastore.compact` or
  :meth:`SqliteDatastore.prune_history`.
- Files: a new database (and the directories made for it) is created private (0600/0700);
  SQLite creates ``-wal`` and ``-shm`` with the database file's mode, so they stay private too.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from tortie.datastore import fswatch
from tortie.datastore.api import (
    AlreadyExistsError,
    CompactedError,
    Compare,
    ConflictError,
    Delete,
    EventType,
    KeyValue,
    ListResult,
    NotFoundError,
    Op,
    Put,
    TxnResult,
    UnavailableError,
    WatchEvent,
)
from tortie.datastore.memory import check_distinct_keys

__all__ = ["SqliteDatastore", "prefix_end"]

SCHEMA_VERSION = 1
DEFAULT_BUSY_TIMEOUT = 30.0
DEFAULT_POLL_INTERVAL = 0.02
# With inotify waking watches after every commit, polling is only a safety net (for writers
# that are not SqliteDatastore objects, e.g. the sqlite3 shell).
NOTIFIED_POLL_INTERVAL = 1.0
NOTIFY_SUFFIX = "-notify"
# Woken by another process's commit, a watch waits this long before it reads, so that a burst
# of commits (an IPAM assignment is several transactions) arrives as one batch, as the 20 ms
# poll batched it: every agent watches every change, and one pass per commit per agent costs
# more CPU than the wake-up saves (measured: a block claim reached the kernel 27 ms later
# without it, on a 10-node lab sharing 2 CPUs).
NOTIFIED_SETTLE = 0.01

_SCHEMA = """
CREATE TABLE meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    schema_version INTEGER NOT NULL,
    revision INTEGER NOT NULL,
    compact_revision INTEGER NOT NULL
);
CREATE TABLE kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    create_revision INTEGER NOT NULL,
    mod_revision INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE changes (
    revision INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    key TEXT NOT NULL,
    type TEXT NOT NULL,
    value TEXT,
    PRIMARY KEY (revision, seq)
) WITHOUT ROWID;
INSERT INTO meta (id, schema_version, revision, compact_revision) VALUES (1, 1, 1, 0);
"""

T = TypeVar("T")


def prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix`` (None: no bound).

    Works in code point order (= UTF-8 byte order). Skips the surrogate range, which cannot be
    encoded as UTF-8.
    """
    chars = list(prefix)
    while chars:
        cp = ord(chars[-1]) + 1
        if cp == 0xD800:
            cp = 0xE000
        if cp <= 0x10FFFF:
            chars[-1] = chr(cp)
            return "".join(chars)
        chars.pop()
    return None


def _key_range_sql(prefix: str) -> tuple[str, tuple[str, ...]]:
    """A WHERE fragment selecting keys under ``prefix`` that can use the primary-key index."""
    end = prefix_end(prefix)
    if end is None:
        return "key >= ?", (prefix,)
    return "key >= ? AND key < ?", (prefix, end)


class SqliteDatastore:
    """The datastore on one SQLite file. See the module docstring for the design."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        url: str | None = None,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> None:
        self._path = os.path.abspath(os.fspath(path))
        self._url = url or f"sqlite://{self._path}"
        self._busy_timeout = busy_timeout
        self.poll_interval = poll_interval
        self._pool: list[sqlite3.Connection] = []
        self._pool_lock = threading.Lock()
        self._closed = False
        # Bumped and notified after every commit made through this object, so this object's
        # watches wake without waiting for their next poll.
        self._changed = threading.Condition()
        self._generation = 0
        # Started with the first watch (stores without watches never need it); None until
        # then, and for good where the kernel refuses inotify.
        self._notifier: fswatch.FileChangeNotifier | None = None
        self._notifier_tried = False
        self._notify_path = self._path + NOTIFY_SUFFIX
        self._settle_until = 0.0  # time.monotonic() before which woken watches wait to read
        self._prepare_files()
        conn = self._connect()
        try:
            self._init_schema(conn)
        except BaseException:
            conn.close()
            raise
        self._pool.append(conn)

    @property
    def url(self) -> str:
        return self._url

    @property
    def path(self) -> str:
        return self._path

    # -- opening ------------------------------------------------------------------------------
    def _unavailable(self, detail: str) -> UnavailableError:
        return UnavailableError(self._url, detail)

    def _prepare_files(self) -> None:
        """Create the parent directories (0700) and the file (0600) if missing."""
        parent = os.path.dirname(self._path)
        missing: list[str] = []
        d = parent
        while d and not os.path.isdir(d):
            missing.append(d)
            up = os.path.dirname(d)
            if up == d:
                break
            d = up
        for d in reversed(missing):
            try:
                os.mkdir(d, 0o700)
            except FileExistsError:
                pass  # another process made it meanwhile
            except OSError as e:
                raise self._unavailable(
                    f"cannot create directory {d}: {e.strerror}; create it (as a user that "
                    "may write there) or choose another path with --datastore"
                ) from None
        try:
            # O_CREAT with mode 0600: the file never exists with wider permissions, whatever
            # the umask, and no process-wide umask change (racy with other threads) is needed.
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except IsADirectoryError:
            raise self._unavailable(
                f"{self._path} is a directory; give the path of a database file"
            ) from None
        except OSError as e:
            raise self._unavailable(
                f"cannot open {self._path}: {e.strerror}; check its permissions or choose "
                "another path with --datastore"
            ) from None
        try:
            st = os.fstat(fd)
            # An existing file made by something else may be world-readable: close that.
            # SQLite gives -wal and -shm the database file's mode, so this covers them for
            # files it creates from now on; fix any that exist already.
            if st.st_mode & 0o007 and st.st_uid == os.geteuid():
                os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~0o007)
        finally:
            os.close(fd)
        self._make_notify_file()
        for suffix in ("-wal", "-shm", NOTIFY_SUFFIX):
            with contextlib.suppress(OSError):
                st = os.stat(self._path + suffix)
                if st.st_mode & 0o007 and st.st_uid == os.geteuid():
                    os.chmod(self._path + suffix, stat.S_IMODE(st.st_mode) & ~0o007)

    def _connect(self) -> sqlite3.Connection:
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves (the sqlite3 module's
            # implicit transactions would start them DEFERRED). check_same_thread=False: the
            # pool hands a connection to one thread at a time, and close() may run elsewhere.
            conn = sqlite3.connect(
                self._path,
                timeout=self._busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as e:
            raise self._unavailable(f"cannot open {self._path}: {e}") from None
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise self._unavailable(
                    f"cannot put {self._path} in WAL mode (got {mode!r}); it must be on a "
                    "local filesystem"
                )
            conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.DatabaseError as e:
            conn.close()
            raise self._unavailable(
                f"{self._path} is not a usable SQLite database ({e}); move it away or choose "
                "another path with --datastore"
            ) from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                tables = {
                    row[0]
                    for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
                }
                if not tables:
                    for stmt in _SCHEMA.split(";"):
                        if stmt.strip():
                            conn.execute(stmt)
                elif not {"meta", "kv", "changes"} <= tables:
                    raise self._unavailable(
                        f"{self._path} is an SQLite database but not a tortie datastore "
                        f"(tables: {', '.join(sorted(tables))}); choose another path"
                    )
                else:
                    (version,) = conn.execute("SELECT schema_version FROM meta").fetchone()
                    if version != SCHEMA_VERSION:
                        raise self._unavailable(
                            f"{self._path} has schema version {version}; this tortie reads "
                            f"version {SCHEMA_VERSION}: upgrade tortie"
                        )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise self._unavailable(
                f"{self._path} is not a usable SQLite database ({e}); move it away or choose "
                "another path with --datastore"
            ) from None

    # -- connections --------------------------------------------------------------------------
    @contextlib.contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        """Borrow a connection; translate sqlite3 errors into :class:`UnavailableError`."""
        with self._pool_lock:
            if self._closed:
                raise self._unavailable("the datastore has been closed")
            conn = self._pool.pop() if self._pool else None
        if conn is None:
            conn = self._connect()
        try:
            yield conn
        except sqlite3.Error as e:
            # The connection may be mid-transaction or broken: drop it rather than pool it.
            conn.close()
            raise self._translate(e) from None
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            self._give_back(conn)
            raise
        else:
            self._give_back(conn)

    def _give_back(self, conn: sqlite3.Connection) -> None:
        with self._pool_lock:
            if not self._closed:
                self._pool.append(conn)
                return
        conn.close()

    def _translate(self, e: sqlite3.Error) -> UnavailableError:
        msg = str(e)
        if "locked" in msg or "busy" in msg:
            return self._unavailable(
                f"{msg}: another process held the write lock for more than {self._busy_timeout:g} s"
            )
        return self._unavailable(f"{msg} ({self._path})")

    def _write(self, body: Callable[[sqlite3.Connection, int], T]) -> T:
        """Run ``body(conn, current_revision)`` in a write transaction and commit it.

        ``body`` raises to roll back (e.g. a failed guard)."""
        with self._conn() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                (rev,) = conn.execute("SELECT revision FROM meta").fetchone()
                result = body(conn, rev)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        self._bump_generation()
        self._announce_commit()
        return result

    @staticmethod
    def _apply(conn: sqlite3.Connection, rev: int, ops: Sequence[Op]) -> int:
        """Apply ops at revision ``rev + 1``; return it, or ``rev`` if nothing changed."""
        new = rev + 1
        seq = 0
        for op in ops:
            if isinstance(op, Put):
                conn.execute(
                    "INSERT INTO kv (key, value, create_revision, mod_revision) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
                    "value = excluded.value, mod_revision = excluded.mod_revision",
                    (op.key, op.value, new, new),
                )
                conn.execute(
                    "INSERT INTO changes (revision, seq, key, type, value) VALUES (?, ?, ?, ?, ?)",
                    (new, seq, op.key, EventType.PUT.value, op.value),
                )
                seq += 1
            elif conn.execute("DELETE FROM kv WHERE key = ?", (op.key,)).rowcount:
                conn.execute(
                    "INSERT INTO changes (revision, seq, key, type, value) VALUES (?, ?, ?, ?, ?)",
                    (new, seq, op.key, EventType.DELETE.value, None),
                )
                seq += 1
        if seq == 0:
            return rev
        conn.execute("UPDATE meta SET revision = ?", (new,))
        return new

    @staticmethod
    def _mod_revision(conn: sqlite3.Connection, key: str) -> int:
        row = conn.execute("SELECT mod_revision FROM kv WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def _get(conn: sqlite3.Connection, key: str) -> KeyValue | None:
        row = conn.execute(
            "SELECT value, create_revision, mod_revision FROM kv WHERE key = ?", (key,)
        ).fetchone()
        return KeyValue(key, row[0], row[1], row[2]) if row else None

    # -- reads --------------------------------------------------------------------------------
    def get(self, key: str) -> KeyValue | None:
        with self._conn() as conn:
            return self._get(conn, key)

    def list(self, prefix: str) -> ListResult:
        where, args = _key_range_sql(prefix)
        with self._conn() as conn:
            # One read transaction: WAL gives both SELECTs the same snapshot.
            conn.execute("BEGIN")
            try:
                (rev,) = conn.execute("SELECT revision FROM meta").fetchone()
                rows = conn.execute(
                    "SELECT key, value, create_revision, mod_revision FROM kv "
                    f"WHERE {where} ORDER BY key",
                    args,
                ).fetchall()
            finally:
                conn.execute("COMMIT")
        return ListResult(items=tuple(KeyValue(*row) for row in rows), revision=rev)

    def revision(self) -> int:
        with self._conn() as conn:
            return int(conn.execute("SELECT revision FROM meta").fetchone()[0])

    def compact_revision(self) -> int:
        """The compaction horizon: watches must start at or after it."""
        with self._conn() as conn:
            return int(conn.execute("SELECT compact_revision FROM meta").fetchone()[0])

    # -- writes -------------------------------------------------------------------------------
    def create(self, key: str, value: str) -> KeyValue:
        def body(conn: sqlite3.Connection, rev: int) -> KeyValue:
            if self._mod_revision(conn, key):
                raise AlreadyExistsError(key)
            new = self._apply(conn, rev, [Put(key, value)])
            return KeyValue(key, value, new, new)

        return self._write(body)

    def update(self, key: str, value: str, mod_revision: int) -> KeyValue:
        def body(conn: sqlite3.Connection, rev: int) -> KeyValue:
            old = self._get(conn, key)
            if old is None:
                raise NotFoundError(key)
            if old.mod_revision != mod_revision:
                raise ConflictError(key, mod_revision, old.mod_revision)
            new = self._apply(conn, rev, [Put(key, value)])
            return KeyValue(key, value, old.create_revision, new)

        return self._write(body)

    def put(self, key: str, value: str) -> KeyValue:
        def body(conn: sqlite3.Connection, rev: int) -> KeyValue:
            old = self._get(conn, key)
            new = self._apply(conn, rev, [Put(key, value)])
            return KeyValue(key, value, old.create_revision if old else new, new)

        return self._write(body)

    def delete(self, key: str, mod_revision: int | None = None) -> None:
        def body(conn: sqlite3.Connection, rev: int) -> None:
            actual = self._mod_revision(conn, key)
            if not actual:
                raise NotFoundError(key)
            if mod_revision is not None and actual != mod_revision:
                raise ConflictError(key, mod_revision, actual)
            self._apply(conn, rev, [Delete(key)])

        self._write(body)

    def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        check_distinct_keys(ops)

        def body(conn: sqlite3.Connection, rev: int) -> TxnResult:
            for c in compares:
                if self._mod_revision(conn, c.key) != c.mod_revision:
                    return TxnResult(False, rev)
            return TxnResult(True, self._apply(conn, rev, ops))

        return self._write(body)

    # -- history ------------------------------------------------------------------------------
    def compact(self, revision: int) -> None:
        def body(conn: sqlite3.Connection, rev: int) -> None:
            target = min(revision, rev)
            (horizon,) = conn.execute("SELECT compact_revision FROM meta").fetchone()
            if target > horizon:
                conn.execute("DELETE FROM changes WHERE revision < ?", (target,))
                conn.execute("UPDATE meta SET compact_revision = ?", (target,))

        self._write(body)

    def prune_history(self, keep: int) -> int:
        """Compact so that only the last ``keep`` revisions of history remain; return the
        horizon. For a periodic job: watchers further behind than ``keep`` revisions re-list."""
        if keep < 1:
            raise ValueError("keep must be at least 1")
        horizon = max(1, self.revision() - keep + 1)
        self.compact(horizon)
        return horizon

    def watch(self, prefix: str, start_revision: int) -> SqliteWatch:
        if self._closed:
            raise self._unavailable("the datastore has been closed")
        self._start_notifier()
        w = SqliteWatch(self, prefix, start_revision)
        try:
            w.check_start()
        except BaseException:
            w.close()
            raise
        return w

    def _start_notifier(self) -> None:
        with self._pool_lock:
            if self._notifier_tried or self._closed:
                return
            self._notifier_tried = True
            self._notifier = fswatch.start(
                os.path.dirname(self._notify_path),
                (os.path.basename(self._notify_path),),
                self._other_process_committed,
            )

    def _other_process_committed(self) -> None:
        now = time.monotonic()
        if now >= self._settle_until:  # the first of a burst: the batch closes SETTLE later
            self._settle_until = now + NOTIFIED_SETTLE
        self._bump_generation()

    def _announce_commit(self) -> None:
        """Wake other processes' watches (:mod:`.fswatch`): touch ``<db>-notify``."""
        try:
            os.utime(self._notify_path)
        except FileNotFoundError:
            self._make_notify_file()  # removed by hand: make it again
        except OSError:
            pass  # a read-only or foreign file: their 1 s poll still sees the commit

    def _make_notify_file(self) -> None:
        """``<db>-notify``, empty and private, if missing. Optional: without it (a directory
        we may not write), other processes' watches poll instead of being woken."""
        with contextlib.suppress(OSError):
            os.close(os.open(self._notify_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))

    def _bump_generation(self) -> None:
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

    @property
    def watch_poll_interval(self) -> float:
        """How long a watch sleeps between checks when nothing wakes it."""
        notifier = self._notifier
        if notifier is None or not notifier.alive:
            return self.poll_interval
        return max(self.poll_interval, NOTIFIED_POLL_INTERVAL)

    def _wait_for_change(self, generation: int, timeout: float) -> int:
        """Wait until a local commit bumps the generation past ``generation`` or ``timeout``
        passes; return the generation now."""
        with self._changed:
            self._changed.wait_for(lambda: self._generation != generation, timeout)
            return self._generation

    def close(self) -> None:
        with self._pool_lock:
            self._closed = True
            pool, self._pool = self._pool, []
        for conn in pool:
            conn.close()
        notifier, self._notifier = self._notifier, None
        if notifier is not None:
            notifier.close()
        self._bump_generation()

    @property
    def closed(self) -> bool:
        return self._closed


class SqliteWatch:
    """Polls the change-log from a cursor. One thread calls :meth:`next`; :meth:`close` may be
    called from any thread and makes a blocked :meth:`next` return ``[]`` promptly."""

    def __init__(self, store: SqliteDatastore, prefix: str, start_revision: int) -> None:
        self._store = store
        self._prefix = prefix
        self._where, self._args = _key_range_sql(prefix)
        self._cursor = start_revision
        self._closed = False
        # Held while the connection is in use, so close() never closes it under next().
        self._db_lock = threading.Lock()
        self._conn = store._connect()
        self._data_version: int | None = None

    def check_start(self) -> None:
        with self._db_lock:
            try:
                (horizon,) = self._conn.execute("SELECT compact_revision FROM meta").fetchone()
            except sqlite3.Error as e:
                raise self._store._translate(e) from None
        if self._cursor < horizon:
            raise CompactedError(self._cursor, horizon)

    def _poll(self) -> list[WatchEvent] | None:
        """Events since the cursor, or None if nothing was committed since the last poll."""
        conn = self._conn
        (dv,) = conn.execute("PRAGMA data_version").fetchone()
        if dv == self._data_version:
            return None
        self._data_version = dv
        conn.execute("BEGIN")
        try:
            rev, horizon = conn.execute("SELECT revision, compact_revision FROM meta").fetchone()
            if self._cursor < horizon:
                raise CompactedError(self._cursor, horizon)
            if rev < self._cursor:
                return []
            rows = conn.execute(
                "SELECT revision, key, type, value FROM changes "
                f"WHERE revision >= ? AND {self._where} ORDER BY revision, seq",
                (self._cursor, *self._args),
            ).fetchall()
        finally:
            conn.execute("COMMIT")
        self._cursor = rev + 1
        return [WatchEvent(EventType(t), key, value, r) for r, key, t, value in rows]

    def next(self, timeout: float | None = None) -> list[WatchEvent]:
        deadline = None if timeout is None else time.monotonic() + timeout
        store = self._store
        generation = store._generation
        while True:
            with self._db_lock:
                if self._closed or store.closed:
                    return []
                try:
                    events = self._poll()
                except sqlite3.Error as e:
                    raise store._translate(e) from None
            if events:
                return events
            wait = store.watch_poll_interval
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                wait = min(wait, remaining)
            generation = store._wait_for_change(generation, wait)
            settle = store._settle_until - time.monotonic()
            if settle > 0:
                time.sleep(settle)

    def close(self) -> None:
        # A next() waiting between polls sees the flag within one poll interval.
        self._closed = True
        with self._db_lock:
            self._conn.close()
