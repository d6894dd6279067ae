"""SQLite datastore: the :mod:`.api` contract on one local file, shared by many processes.

Problem: on a single node (and in labs) tortie's agent, CLI and CNI plugin processes share
state without running etcd. SQLite gives atomic, durable transactions across processes; this
module adds etcd's model on top: a global revision, per-key create/mod revisions, and a
change-log that watches read. What may be done to a path before it is known to be a tortie
store, and how a store is created, is :mod:`.sqlitefile`'s job; docs/datastore.md has the
rules and their sources.

Layout (schema version 2; version 1, without the id, is still read and written):
- ``meta``: one row: the current ``revision`` (1 for an empty store), the compaction horizon
  ``compact_revision`` (watches starting before it get :class:`CompactedError`), the store's
  ``datastore_id`` (a uuid4 written at creation) and ``created``.
- ``kv``: the live keys, ``(key, value, create_revision, mod_revision)``.
- ``changes``: one row per changed key per revision ``(revision, seq, key, type, value)``;
  ``seq`` orders the ops of one transaction. ``compact(rev)`` deletes rows below ``rev``.

Invariants:
- Opening never creates or changes anything (``create=True`` is the explicit act): a missing
  file is :class:`DatastoreMissingError`; connections are opened with URI ``mode=rw``.
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
- Identity: an object is bound to the file it opened (its inode), and remembers the store's id
  and the highest revision it has read. Every use first checks that the path still names that
  file: nothing there (moved away) is :class:`DatastoreMissingError`, retried by waiters and
  over when it is moved back; another file there is :class:`DatastoreReplacedError` for as
  long as it stays (the old file's connections are kept, never used: closing the last one
  would checkpoint and delete the ``-wal`` the new file now shares by name). Every connection
  it opens also checks the id and that the revision did not go backwards (a lost ``-wal``).
- Corruption: once SQLite reports SQLITE_CORRUPT/NOTADB ("database disk image is
  malformed"), the object refuses every further write (:class:`CorruptDatastoreError`, sticky),
  and its first write runs ``PRAGMA quick_check`` (once per object, so once per CLI process).
- Bounded files: every ``maintain_every`` (500) revisions the writer that crossed the mark
  compacts the change-log to the last ``history_keep`` (5,000) revisions and runs a passive
  WAL checkpoint; ``journal_size_limit`` truncates the ``-wal`` after a checkpoint resets it.
  Watchers further behind re-list (:class:`CompactedError`), as the syncer does.

Durability: ``synchronous=FULL``. With WAL, NORMAL survives process crashes but may lose the
last commits on power loss; an IPAM allocation that was handed to a pod and then forgotten
is a double allocation waiting to happen, and FULL still does ~2000 write txn/s here.

Hazards:
- Safe across processes and threads: each thread borrows a connection from a small pool
  (sqlite3 connections must not be used by two threads at once), and each watch has its own.
  Do not carry an open store across ``fork()``: open a new one in the child.
- WAL needs shared memory between processes: the file must be on a local filesystem (not NFS).
- Replacing the file of a store in use (``mv other.db tortie.db`` while agents run) is
  SQLite's "how to corrupt" case (https://www.sqlite.org/howtocorrupt.html, 1.4 and 2.4): the
  new file shares the old one's ``-wal``/``-shm`` names. This module detects it and refuses to
  act; it cannot undo it. Stop every process first (docs/datastore.md).
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
  idle watcher. ``-notify`` is made only at creation (and by ``tortie datastore init``);
  writers touch it only if it exists.
- Files: a new database (and the directories made for it) is created private (0600/0700);
  SQLite creates ``-wal`` and ``-shm`` with the database file's mode, so they stay private too.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from tortie.datastore import sqlitefile
from tortie.datastore.api import (
    AlreadyExistsError,
    CompactedError,
    Compare,
    ConflictError,
    CorruptDatastoreError,
    DatastoreError,
    DatastoreReplacedError,
    Delete,
    EventType,
    KeyValue,
    ListResult,
    NotADatastoreError,
    NotFoundError,
    Op,
    Put,
    TxnResult,
    UnavailableError,
    WatchEvent,
)
from tortie.datastore.memory import check_distinct_keys
from tortie.datastore.sqlitefile import NOTIFY_SUFFIX, SCHEMA_VERSION

if TYPE_CHECKING:
    import logging

    from tortie.datastore import fswatch

__all__ = ["SCHEMA_VERSION", "SqliteDatastore", "prefix_end"]


def _log() -> logging.Logger:
    # Imported when there is something to log, not by every command that opens a store: a
    # `tortie get` is a whole process (issue 17, item 14), and logging is ~5 ms of it.
    import logging

    return logging.getLogger(__name__)


DEFAULT_BUSY_TIMEOUT = 30.0
DEFAULT_POLL_INTERVAL = 0.02
# With inotify waking watches after every commit, polling is only a safety net (for writers
# that are not SqliteDatastore objects, e.g. the sqlite3 shell).
NOTIFIED_POLL_INTERVAL = 1.0
# Woken by another process's commit, a watch waits this long before it reads, so that a burst
# of commits (an IPAM assignment is several transactions) arrives as one batch, as the 20 ms
# poll batched it: every agent watches every change, and one pass per commit per agent costs
# more CPU than the wake-up saves (measured: a block claim reached the kernel 27 ms later
# without it, on a 10-node lab sharing 2 CPUs).
NOTIFIED_SETTLE = 0.01
# Self-maintenance (see the module docstring). 5,000 revisions are minutes of a busy cluster's
# history (a pod's ADD takes about three): an agent that falls further behind re-lists, as it
# does after any outage. Rows kept: at most (HISTORY_KEEP + MAINTAIN_EVERY) revisions' worth,
# so the file stops growing (SQLite reuses the freed pages; it does not shrink without VACUUM).
HISTORY_KEEP = 5_000
MAINTAIN_EVERY = 500
# SQLite truncates the -wal to this after a checkpoint resets it; between checkpoints it grows
# to about wal_autocheckpoint (1,000 pages, 4 MiB) plus the last transaction.
JOURNAL_SIZE_LIMIT = 4 * 1024 * 1024

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
    """The datastore on one SQLite file. See the module docstring for the design.

    ``create=True`` makes the store if the path is free (:func:`.sqlitefile.create_store`) and
    brings an existing one up to date (a schema-1 store gets its id; modes tightened,
    ``-notify`` made): that is ``tortie datastore init``. Without it nothing is created or
    changed before the file is known to be a tortie store."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        url: str | None = None,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        create: bool = False,
        history_keep: int = HISTORY_KEEP,
        maintain_every: int = MAINTAIN_EVERY,
    ) -> None:
        self._path = os.path.abspath(os.fspath(path))
        self._url = url or f"sqlite://{self._path}"
        self._busy_timeout = busy_timeout
        self.poll_interval = poll_interval
        if history_keep < 1 or maintain_every < 1:
            raise ValueError("history_keep and maintain_every must be at least 1")
        self._history_keep = history_keep
        self._maintain_every = maintain_every
        self._pool: list[sqlite3.Connection] = []
        self._pool_lock = threading.Lock()
        self._closed = False
        # Identity: the id the first connection read ("" for schema 1) and the highest
        # revision read through this object; checked by every new connection.
        self._identity: str | None = None
        self._seen_revision = 0
        self._inode: tuple[int, int] | None = None  # the file this object is bound to
        self._ident_lock = threading.Lock()
        self._corrupt: str | None = None  # sticky: why writes are refused
        self._quick_checked = False
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
        self.created = create and sqlitefile.create_store(self._path, self._url)
        checked = sqlitefile.check_store(self._path, self._url)
        conn = self._connect()
        try:
            if create:
                self._bring_up_to_date(conn, checked)
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

    def _bring_up_to_date(self, conn: sqlite3.Connection, checked: sqlitefile.Checked) -> None:
        """``init`` on an existing store: an id for a schema-1 store, modes, ``-notify``."""
        try:
            if sqlitefile.upgrade_schema(conn):
                _log().info("%s: schema 1 -> %d (an id was written)", self._path, SCHEMA_VERSION)
            meta = self._read_meta(conn)
        except sqlite3.Error as e:
            raise self._translate(e) from None
        with self._ident_lock:
            self._identity = str(meta.get("datastore_id") or "")
        sqlitefile.tighten_modes(self._path)
        sqlitefile.make_notify_file(self._path)

    def _connect(self) -> sqlite3.Connection:
        """A new connection to the file now at the path, checked: tortie's tables, WAL, the id
        and revision this object knows (see the module docstring)."""
        # Read before the connection's first snapshot: whatever was seen then is committed, so
        # the snapshot cannot be older (a later floor could be, without anything wrong).
        floor = self._seen_revision
        before = self._current_inode()
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves (the sqlite3 module's
            # implicit transactions would start them DEFERRED). check_same_thread=False: the
            # pool hands a connection to one thread at a time, and close() may run elsewhere.
            conn = sqlite3.connect(
                sqlitefile.file_uri(self._path, "rw"),
                uri=True,
                timeout=self._busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as e:
            if not os.path.lexists(self._path):
                raise sqlitefile.missing_error(self._path, self._url) from None
            raise self._unavailable(f"cannot open {self._path}: {e}") from None
        try:
            meta = self._read_meta(conn)
            if sqlitefile.inode(self._path, self._url) != before:
                raise self._unavailable(f"{self._path} changed while it was being opened; retry")
            if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                # Only now: the file is a tortie store (its meta was read).
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise self._unavailable(
                        f"cannot put {self._path} in WAL mode (got {mode!r}); it must be on a "
                        "local filesystem"
                    )
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
            self._check_identity(meta, floor)
        except sqlite3.Error as e:
            conn.close()
            raise self._translate(e) from None
        except BaseException:
            conn.close()
            raise
        if self._inode is None:
            self._inode = before
        return conn

    def _read_meta(self, conn: sqlite3.Connection) -> dict[str, Any]:
        """meta's row as a dict, in one read transaction (works on schema 1 and 2)."""
        conn.execute("BEGIN")
        try:
            try:
                cur = conn.execute("SELECT * FROM meta")
            except sqlite3.OperationalError as e:
                if "no such table" not in str(e):
                    raise
                raise NotADatastoreError(
                    self._url,
                    f"{self._path} is an SQLite database but not a tortie datastore (no meta "
                    "table); it was left as it was: check the path",
                ) from None
            names = [d[0] for d in cur.description]
            row = cur.fetchone()
        finally:
            conn.execute("COMMIT")
        if row is None:
            raise sqlitefile.corrupt_error(self._path, "tortie's meta table has no row")
        meta = dict(zip(names, row, strict=True))
        version = meta.get("schema_version")
        if version not in sqlitefile.READABLE_SCHEMAS:
            raise self._unavailable(
                f"{self._path} has schema version {version}; this tortie reads versions 1 and "
                f"{SCHEMA_VERSION}: upgrade tortie"
            )
        return meta

    def _check_identity(self, meta: dict[str, Any], floor: int) -> None:
        found = str(meta.get("datastore_id") or "")
        rev = int(meta["revision"])
        with self._ident_lock:
            known = self._identity
            if known and found != known:
                raise DatastoreReplacedError(
                    self._url,
                    f"{self._path} now holds the store with id {found or '(none: schema 1)'}; "
                    f"this process has been using the store with id {known}",
                )
            if rev < floor:
                raise DatastoreReplacedError(
                    self._url,
                    f"the revision of {self._path} is {rev}, lower than {floor} read from it "
                    "before: it was restored from an older copy, or commits were lost",
                )
            if found or known is None:
                self._identity = found
            self._seen_revision = max(self._seen_revision, rev)

    def _observe(self, floor: int, rev: int) -> None:
        """Record ``rev`` read by a snapshot that began after ``floor`` was seen; a lower
        ``rev`` means the file's content went back in time under us."""
        if rev < floor:
            raise DatastoreReplacedError(
                self._url,
                f"the revision of {self._path} went from {floor} back to {rev}: commits were "
                "lost (was its -wal removed?) or an older copy was put in its place",
            )
        if rev > self._seen_revision:
            with self._ident_lock:
                self._seen_revision = max(self._seen_revision, rev)

    # -- connections --------------------------------------------------------------------------
    def _current_inode(self) -> tuple[int, int]:
        """The inode at the path, if it is the file this object is bound to (see the module
        docstring): :class:`DatastoreMissingError` if nothing is there,
        :class:`DatastoreReplacedError` if another file is."""
        now = sqlitefile.inode(self._path, self._url)
        if self._inode is not None and now != self._inode:
            raise DatastoreReplacedError(
                self._url,
                f"{self._path} is no longer the file this process opened: another file was put "
                "in its place while it was in use, which SQLite does not survive (the new file "
                "shares the old one's -wal and -shm by name). This process will not use it: "
                "stop everything that uses the datastore, then put the right file back, or "
                "restart to use this one",
            )
        return now

    @contextlib.contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        """Borrow a connection to the file at the path; translate sqlite3 errors."""
        with self._pool_lock:
            if self._closed:
                raise self._unavailable("the datastore has been closed")
            conn = self._pool.pop() if self._pool else None
        if conn is not None:
            try:
                self._current_inode()
            except BaseException:
                self._give_back(conn)  # valid again if the file comes back
                raise
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

    def _translate(self, e: sqlite3.Error) -> DatastoreError:
        msg = str(e)
        if sqlitefile.is_corruption(e):
            err = sqlitefile.corrupt_error(self._path, msg)
            self._corrupt = str(err)
            return err
        if "locked" in msg or "busy" in msg:
            return self._unavailable(
                f"{msg}: another process held the write lock for more than {self._busy_timeout:g} s"
            )
        return self._unavailable(f"{msg} ({self._path})")

    def _quick_check(self, conn: sqlite3.Connection) -> None:
        """The first write of this object: is the file sound? (Once: it reads every page.)"""
        rows = [str(r[0]) for r in conn.execute("PRAGMA quick_check(5)").fetchall()]
        if rows != ["ok"]:
            err = sqlitefile.corrupt_error(self._path, "; ".join(rows))
            self._corrupt = str(err)
            raise err
        self._quick_checked = True

    def _write(self, body: Callable[[sqlite3.Connection, int], T]) -> T:
        """Run ``body(conn, current_revision)`` in a write transaction and commit it.

        ``body`` raises to roll back (e.g. a failed guard)."""
        if self._corrupt is not None:
            raise CorruptDatastoreError(self._corrupt)
        with self._conn() as conn:
            if not self._quick_checked:
                self._quick_check(conn)
            floor = self._seen_revision
            conn.execute("BEGIN IMMEDIATE")
            try:
                (rev,) = conn.execute("SELECT revision FROM meta").fetchone()
                self._observe(floor, rev)
                result = body(conn, rev)
                (new,) = conn.execute("SELECT revision FROM meta").fetchone()
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        self._observe(0, new)
        self._bump_generation()
        self._announce_commit()
        if new // self._maintain_every > rev // self._maintain_every:
            self._maintain(new)
        return result

    def _maintain(self, revision: int) -> None:
        """Bound the change-log and the WAL (see the module docstring). Best effort: the write
        that got here has committed; the next mark tries again."""
        horizon = revision - self._history_keep + 1
        try:
            if horizon > 1:
                self.compact(horizon)
            with self._conn() as conn:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except DatastoreError as e:
            _log().info("%s: maintenance at revision %d skipped: %s", self._path, revision, e)

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
    def identity(self) -> str:
        with self._conn() as conn:
            meta = self._read_meta(conn)
        found = str(meta.get("datastore_id") or "")
        with self._ident_lock:
            if found and not self._identity:
                self._identity = found  # a schema-1 store upgraded by another process
        return found

    def info(self) -> dict[str, object]:
        """What ``tortie datastore info`` shows: path, id, created, schema, revisions, sizes."""
        with self._conn() as conn:
            meta = self._read_meta(conn)
            (rows,) = conn.execute("SELECT count(*) FROM changes").fetchone()
            (keys,) = conn.execute("SELECT count(*) FROM kv").fetchone()
        sizes: dict[str, int] = {}
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                sizes[self._path + suffix] = os.stat(self._path + suffix).st_size
        return {
            "path": self._path,
            "id": str(meta.get("datastore_id") or ""),
            "created": str(meta.get("created") or ""),
            "schema": int(meta["schema_version"]),
            "revision": int(meta["revision"]),
            "compactRevision": int(meta["compact_revision"]),
            "keys": int(keys),
            "changeRows": int(rows),
            "bytes": sizes,
        }

    def get(self, key: str) -> KeyValue | None:
        with self._conn() as conn:
            return self._get(conn, key)

    def list(self, prefix: str) -> ListResult:
        where, args = _key_range_sql(prefix)
        with self._conn() as conn:
            floor = self._seen_revision
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
        self._observe(floor, rev)
        return ListResult(items=tuple(KeyValue(*row) for row in rows), revision=rev)

    def revision(self) -> int:
        with self._conn() as conn:
            floor = self._seen_revision
            rev = int(conn.execute("SELECT revision FROM meta").fetchone()[0])
        self._observe(floor, rev)
        return rev

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
        horizon. Watchers further behind than ``keep`` revisions re-list."""
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
            from tortie.datastore import fswatch  # for watches only (ctypes, inotify)

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
        """Wake other processes' watches (:mod:`.fswatch`): touch ``<db>-notify`` if it exists
        (never made here: only creation makes files; without it watches poll every second)."""
        with contextlib.suppress(OSError):
            os.utime(self._notify_path)

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
        store = self._store
        store._current_inode()  # moved away or replaced: raises (see the module docstring)
        (dv,) = conn.execute("PRAGMA data_version").fetchone()
        if dv == self._data_version:
            return None
        self._data_version = dv
        floor = store._seen_revision
        conn.execute("BEGIN")
        try:
            rev, horizon = conn.execute("SELECT revision, compact_revision FROM meta").fetchone()
            store._observe(floor, rev)
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
