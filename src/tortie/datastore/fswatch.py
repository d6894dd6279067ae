"""Wake SQLite watches when another process commits: inotify on the database's directory.

Problem: a SQLite file gives no signal when another process commits to it, so watches used
to poll ``PRAGMA data_version`` every 20 ms. That kept change latency near 10 ms and cost
every idle agent about 1 % of a core (50 polls a second, forever). Every commit through
:class:`~tortie.datastore.sqlite.SqliteDatastore` ends by touching a file next to the
database (``<db>-notify``), and the kernel reports that through inotify, so a watch can sleep
until a commit and then check ``data_version``.

How: one inotify instance per store that has a watch, on the database's *directory* (a watch
on the file itself would end if the file were removed and made again), filtered to the given
file names. A daemon thread blocks in ``select`` on the inotify descriptor and on a pipe that
:meth:`FileChangeNotifier.close` writes to, and calls ``on_change`` once per batch of events.

Invariants: ``on_change`` is called after every change to the watched names that the kernel
reports (writes, attribute changes such as a touched mtime, creation, a rename onto them),
possibly more often, never less; :meth:`close` returns after the thread has ended and both
descriptors are closed.

Hazards: inotify reports changes made through this machine's kernel only (a network
filesystem would wake nobody: SQLite's WAL needs a local filesystem anyway), and an instance
counts against ``fs.inotify.max_user_instances`` (128 by default): :func:`start` returns None
when the kernel refuses one, and the caller keeps polling. Events are not parsed beyond the
file name.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import select
import struct
import threading
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_MASK = IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE
_EVENT = struct.Struct("=iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def changed_names(buffer: bytes) -> set[str]:
    """The file names in a buffer of ``struct inotify_event`` records (as read(2) returns)."""
    names = set()
    offset = 0
    while offset + _EVENT.size <= len(buffer):
        _wd, _mask, _cookie, length = _EVENT.unpack_from(buffer, offset)
        start = offset + _EVENT.size
        raw = buffer[start : start + length]
        names.add(os.fsdecode(raw.split(b"\0", 1)[0]))
        offset = start + length
    return names


class FileChangeNotifier:
    """Calls ``on_change`` when any of ``names`` in ``directory`` is written (see module)."""

    def __init__(self, directory: str, names: Iterable[str], on_change: Callable[[], None]) -> None:
        self.directory = directory
        self.names = frozenset(names)
        self._on_change = on_change
        libc = _libc()
        fd = int(libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC))
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        try:
            wd = int(libc.inotify_add_watch(fd, os.fsencode(directory), _MASK))
            if wd < 0:
                err = ctypes.get_errno()
                raise OSError(err, f"inotify_add_watch {directory}: {os.strerror(err)}")
            self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._closed = False
        self._thread = threading.Thread(
            target=self._run, name="sqlite-change-notifier", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                ready, _, _ = select.select([self._fd, self._stop_r], [], [])
                if self._stop_r in ready:
                    return
                try:
                    buffer = os.read(self._fd, 64 * 1024)
                except BlockingIOError:
                    continue
                if changed_names(buffer) & self.names:
                    self._on_change()
        except Exception:  # a notifier that dies leaves the caller's fallback poll
            log.exception("file change notifier for %s stopped", self.directory)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        if self._closed:  # closing twice would close descriptor numbers reused meanwhile
            return
        self._closed = True
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")
        if self._thread is not threading.current_thread():
            self._thread.join()
        for fd in (self._fd, self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)


def start(
    directory: str, names: Iterable[str], on_change: Callable[[], None]
) -> FileChangeNotifier | None:
    """A running notifier, or None where the kernel refuses one (the caller keeps polling)."""
    try:
        return FileChangeNotifier(directory, names, on_change)
    except (OSError, AttributeError) as err:  # AttributeError: a libc without inotify
        log.info("no inotify for %s (%s): watches poll instead", directory, err)
        return None
