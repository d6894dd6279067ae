"""What is at an SQLite datastore's path, and making a new store: the only code that creates a
file, or changes one, before it is known to be tortie's.

Problem (issue 17): ``sqlite:///path`` used to be opened with ``O_CREAT`` and switched to WAL at
once. A read command run while the live file was moved away for a moment created an empty file
there, and opening that in WAL mode deleted the ``-wal`` that running agents were still
committing into: commits lost, then duplicate addresses. A mistyped path had its mode changed
and a ``-notify`` file made next to it; another program's SQLite database was switched to WAL
for good.

Rules (docs/datastore.md):
- Opening never creates: a missing file is :class:`DatastoreMissingError`, and connections use
  SQLite's URI ``mode=rw`` (never ``rwc``: https://www.sqlite.org/uri.html), so a file moved
  away between the check and the open is not made again either.
- Nothing is changed before the file is known to be a tortie store (:func:`check_store`): a
  regular file (not a FIFO, device or directory: nothing is opened that could block), not
  empty, then SQLite's header and tortie's tables read with ``immutable=1`` (no lock, no
  journal, no ``-wal``/``-shm`` made), and never with a raw ``open()`` (it would drop this
  process's SQLite locks on the file: :func:`check_store`). Only then may the caller switch
  it to WAL, tighten its mode or make ``-notify`` (and only creation does the last two).
- Creation is explicit (:func:`create_store`): a complete store (schema, id, WAL mode) is built
  in a temporary file next to the target and hard-linked into place, so the path never holds
  a half-made store and an existing file is never overwritten. It refuses where a ``-wal`` or
  ``-shm`` is left without its database: that is a live store moved away, and a new database
  at that path would adopt its journal (SQLite's WAL header names no database:
  https://www.sqlite.org/walformat.html).

Hazards:
- ``immutable=1`` ignores the WAL. A store made before schema 2 may have its tables only in
  its WAL (agents that never checkpointed): an empty main file in WAL mode with a ``-wal``
  beside it is left to the caller, which checks the tables on a live connection (that may
  make a ``-shm`` next to it).
- The checks and the open are not atomic: the caller checks again on its connection (tables,
  id, revision) and compares the file's inode before and after.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import stat
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

from tortie.datastore.api import (
    CorruptDatastoreError,
    DatastoreMissingError,
    NotADatastoreError,
    UnavailableError,
)

__all__ = [
    "NOTIFY_SUFFIX",
    "SCHEMA_VERSION",
    "Checked",
    "check_store",
    "create_store",
    "file_uri",
    "inode",
    "is_corruption",
    "make_notify_file",
    "missing_error",
    "tighten_modes",
]

SCHEMA_VERSION = 2  # 2 added meta.datastore_id and meta.created
READABLE_SCHEMAS = frozenset({1, 2})
TABLES = frozenset({"meta", "kv", "changes"})
NOTIFY_SUFFIX = "-notify"
JOURNAL_SUFFIXES = ("-wal", "-shm")
# SQLite's primary result codes for a broken file (https://www.sqlite.org/rescode.html).
SQLITE_CORRUPT = 11
SQLITE_NOTADB = 26

SCHEMA = """
CREATE TABLE meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    schema_version INTEGER NOT NULL,
    revision INTEGER NOT NULL,
    compact_revision INTEGER NOT NULL,
    datastore_id TEXT NOT NULL DEFAULT '',
    created TEXT NOT NULL DEFAULT ''
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
"""


def file_uri(path: str, mode: str, *, immutable: bool = False) -> str:
    """An SQLite URI for the absolute ``path`` (any bytes in it quoted): ``file://`` and an
    empty authority, so a path starting with ``//`` is not read as a host
    (https://www.sqlite.org/uri.html)."""
    uri = f"file://{quote(os.fsencode(os.path.abspath(path)))}?mode={mode}"
    return uri + "&immutable=1" if immutable else uri


def is_corruption(err: sqlite3.Error) -> bool:
    """SQLITE_CORRUPT or SQLITE_NOTADB ("database disk image is malformed")."""
    code = getattr(err, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB):
        return True
    return "malformed" in str(err)


def corrupt_error(path: str, detail: str) -> CorruptDatastoreError:
    return CorruptDatastoreError(
        f"the datastore {path} is malformed (SQLite: {detail}); tortie refuses to write to it. "
        f"Stop what uses it, then restore a backup, or salvage it with `sqlite3 {path} "
        f".recover | sqlite3 {path}.recovered` and move that into place (docs/datastore.md)"
    )


def _why(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err)


def missing_error(path: str, url: str) -> DatastoreMissingError:
    """No file at ``path``; the message says whether it looks moved away (a journal is left)."""
    left = [path + s for s in JOURNAL_SUFFIXES if os.path.lexists(path + s)]
    if left:
        return DatastoreMissingError(
            url,
            f"{path} does not exist, but {' and '.join(left)} do: the database was moved "
            "away while in use. Move it back (nothing was created or changed); create a new "
            "one with `tortie datastore init` only if it is gone for good",
        )
    return DatastoreMissingError(
        url,
        f"{path} does not exist; create it with `tortie datastore init`, or check the path: "
        "was it moved?",
    )


def _stat(path: str, url: str) -> os.stat_result:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise missing_error(path, url) from None
    except NotADirectoryError:
        raise UnavailableError(
            url, f"{path}: a parent of it is not a directory; check the path"
        ) from None
    except (OSError, ValueError) as err:
        raise UnavailableError(url, f"cannot look at {path}: {_why(err)}") from None
    if stat.S_ISDIR(st.st_mode):
        raise NotADatastoreError(url, f"{path} is a directory; give the path of a database file")
    if not stat.S_ISREG(st.st_mode):
        raise NotADatastoreError(
            url, f"{path} is not a regular file (a device, FIFO or socket); it was left untouched"
        )
    return st


def inode(path: str, url: str) -> tuple[int, int]:
    """``(st_dev, st_ino)`` of the regular file at ``path``; :class:`DatastoreMissingError` if
    there is none."""
    st = _stat(path, url)
    return st.st_dev, st.st_ino


@dataclass(frozen=True, slots=True)
class Checked:
    """What :func:`check_store` found."""

    schema_version: int | None  # None: the tables may be in the WAL only (see the hazards)


def _tables(path: str, url: str) -> tuple[frozenset[str], int | None]:
    """The table names and meta's schema_version (None without meta), from the main file only."""
    try:
        conn = sqlite3.connect(file_uri(path, "ro", immutable=True), uri=True)
    except sqlite3.Error as err:
        raise UnavailableError(url, f"cannot read {path}: {err}") from None
    try:
        names = frozenset(
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        )
        version = None
        if names >= TABLES:
            row = conn.execute("SELECT schema_version FROM meta").fetchone()
            if row is None:
                raise corrupt_error(path, "tortie's meta table has no row")
            version = row[0]
        return names, version
    except sqlite3.DatabaseError as err:
        if getattr(err, "sqlite_errorcode", None) == SQLITE_NOTADB:
            # SQLite checks the header's magic string first: this is someone else's file (or
            # a store whose first page is gone, which nothing can open either).
            raise NotADatastoreError(
                url,
                f"{path} is not an SQLite database; it was left untouched: check the path, or "
                "choose another with --datastore",
            ) from None
        if is_corruption(err):
            raise corrupt_error(path, str(err)) from None
        raise NotADatastoreError(
            url,
            f"{path} is not a usable SQLite database ({err}); it was left untouched: check the "
            "path, or move it away",
        ) from None
    finally:
        conn.close()


def check_store(path: str, url: str) -> Checked:
    """Is ``path`` a tortie store this tortie reads? Changes nothing, creates nothing.

    Raises :class:`DatastoreMissingError`, :class:`NotADatastoreError` (something else is
    there: left untouched), :class:`CorruptDatastoreError`, or :class:`UnavailableError`.

    The file is read only through SQLite (an ``immutable=1`` connection), never with a raw
    ``open()``: POSIX record locks belong to the process and inode, and closing *any*
    descriptor of the file drops every lock the process holds on it, including those of
    live SQLite connections. Another process's last connection then takes the exclusive lock,
    checkpoints and deletes the ``-wal`` and ``-shm`` this process still commits into: the
    data loss of issue 17 item 1 by another road. SQLite's own descriptors are safe: its unix
    VFS keeps a descriptor whose inode still holds locks open until they are released
    (https://www.sqlite.org/howtocorrupt.html, section 2.2)."""
    st = _stat(path, url)
    if st.st_size == 0:
        raise NotADatastoreError(
            url,
            f"{path} is empty (or a kernel file that reports no size): not an SQLite database "
            "and not a tortie datastore (tortie never leaves one empty); it was left untouched: "
            "check the path",
        )
    names, version = _tables(path, url)
    if version is not None:
        if version not in READABLE_SCHEMAS:
            raise UnavailableError(
                url,
                f"{path} has schema version {version}; this tortie reads versions "
                f"{', '.join(map(str, sorted(READABLE_SCHEMAS)))}: upgrade tortie",
            )
        return Checked(int(version))
    if not names and os.path.exists(path + "-wal"):
        return Checked(None)
    what = f"tables: {', '.join(sorted(names))}" if names else "it has no tables"
    raise NotADatastoreError(
        url,
        f"{path} is an SQLite database but not a tortie datastore ({what}); it was left "
        "untouched: check the path",
    )


def _make_parents(path: str, url: str) -> None:
    """Create the missing parent directories, private (0700)."""
    missing: list[str] = []
    d = os.path.dirname(path)
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
            if not os.path.isdir(d):
                raise UnavailableError(
                    url,
                    f"cannot create directory {d}: a file is in the way; check the path or "
                    "choose another with --datastore",
                ) from None
        except OSError as err:
            raise UnavailableError(
                url,
                f"cannot create directory {d}: {_why(err)}; create it (as a user that may "
                "write there) or choose another path with --datastore",
            ) from None


def _fsync(path: str, flags: int = os.O_RDONLY) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, flags | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _build(tmp: str, url: str) -> None:
    """A complete, checkpointed store in ``tmp`` (an empty file): schema, id, WAL mode."""
    conn = sqlite3.connect(file_uri(tmp, "rw"), uri=True, isolation_level=None)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise UnavailableError(
                url,
                f"cannot put {tmp} in WAL mode (got {mode!r}); the datastore must be on a local "
                "filesystem",
            )
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("BEGIN IMMEDIATE")
        for stmt in SCHEMA.split(";"):
            if stmt.strip():
                conn.execute(stmt)
        conn.execute(
            "INSERT INTO meta (id, schema_version, revision, compact_revision, datastore_id, "
            "created) VALUES (1, ?, 1, 0, ?, ?)",
            (SCHEMA_VERSION, str(uuid.uuid4()), datetime.now(UTC).isoformat(timespec="seconds")),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()  # the last connection: checkpoints, removes tmp-wal and tmp-shm


def create_store(path: str, url: str) -> bool:
    """Make a new, empty store at ``path`` unless something is there; True if made.

    Never overwrites: the store is built aside and hard-linked into place (a concurrent
    creator's store wins and this one is dropped). Refuses where a ``-wal``/``-shm`` is left
    without its database (see the module docstring)."""
    _make_parents(path, url)
    if os.path.lexists(path):
        return False
    left = [path + s for s in JOURNAL_SUFFIXES if os.path.lexists(path + s)]
    if left:
        raise UnavailableError(
            url,
            f"{path} does not exist, but {' and '.join(left)} do: the database was moved away "
            "while in use. Refusing to create a new one there (it would take over that "
            "journal): move the database back; if it is gone for good and no process has "
            "the journal open, remove those files and create it again",
        )
    directory, name = os.path.split(path)
    # os.urandom, as secrets.token_hex does, without importing secrets (hmac, hashlib, random)
    # into every command that opens a store.
    tmp = os.path.join(directory, f".{name}.init-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        # 0600 from the start, whatever the umask; SQLite gives -wal/-shm the same mode.
        os.close(os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except OSError as err:
        raise UnavailableError(
            url,
            f"cannot create {path}: {_why(err)}; check the permissions of {directory} or "
            "choose another path with --datastore",
        ) from None
    try:
        try:
            _build(tmp, url)
        except sqlite3.Error as err:
            raise UnavailableError(url, f"cannot create {path}: {err}") from None
        _fsync(tmp)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False  # someone else made one meanwhile: theirs stands
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise UnavailableError(url, f"cannot create {path}: {_why(err)}") from None
            # A filesystem without hard links: rename (not atomic against a racing creator).
            if os.path.lexists(path):
                return False
            os.rename(tmp, path)
        _fsync(directory, os.O_RDONLY | os.O_DIRECTORY)
    finally:
        for leftover in (tmp, tmp + "-wal", tmp + "-shm"):
            with contextlib.suppress(OSError):
                os.unlink(leftover)
    make_notify_file(path)
    return True


def upgrade_schema(conn: sqlite3.Connection) -> bool:
    """Give a schema-1 store (on ``conn``, a checked tortie store) an id: schema 2. Returns
    True if it did. Idempotent; one transaction, so concurrent upgraders agree on one id."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        (version,) = conn.execute("SELECT schema_version FROM meta").fetchone()
        if version != 1:
            conn.execute("COMMIT")
            return False
        conn.execute("ALTER TABLE meta ADD COLUMN datastore_id TEXT NOT NULL DEFAULT ''")
        conn.execute("ALTER TABLE meta ADD COLUMN created TEXT NOT NULL DEFAULT ''")
        conn.execute(
            "UPDATE meta SET schema_version = ?, datastore_id = ?, created = ?",
            (SCHEMA_VERSION, str(uuid.uuid4()), datetime.now(UTC).isoformat(timespec="seconds")),
        )
        conn.execute("COMMIT")
        return True
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def make_notify_file(path: str) -> None:
    """``<db>-notify``, empty and private, if missing (creation and ``init`` only: writers
    touch it only if it exists). Optional: without it watches in other processes poll."""
    with contextlib.suppress(OSError):
        fd = os.open(path + NOTIFY_SUFFIX, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.close(fd)


def tighten_modes(path: str) -> None:
    """Close world access to a store's files that we own (creation and ``init`` only)."""
    for p in (path, *(path + s for s in (*JOURNAL_SUFFIXES, NOTIFY_SUFFIX))):
        with contextlib.suppress(OSError):
            st = os.stat(p)
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o007 and st.st_uid == os.geteuid():
                os.chmod(p, stat.S_IMODE(st.st_mode) & ~0o007)
