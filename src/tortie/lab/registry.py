"""Where labs live on the host, which labs exist, lab ids, and the per-lab lock.

Problem: labs are found by name (``--name``, or "the only lab"), their kernel names need a
host-wide unique id (:mod:`.naming`), and ``up``/``down`` of the same lab must not interleave.

- Lab directories: ``<root>/<name>/`` (root ``/run/tortie/labs``, or ``$TORTIE_LAB_ROOT``, or
  ``tortie lab --root``) holding ``state.json``, ``lock``, the default SQLite datastore and the
  per-node directories. ``mkdir`` of that directory is what claims a name.
- Lab ids: ``/run/tortie/lab-ids/<id>``, a symlink to the lab directory, made with one atomic
  ``symlink(2)``: whoever creates it owns the id. An id is also skipped while any
  ``/run/netns/tl<id>-*`` exists (leftovers of something we do not know). The id registry is
  host-wide even when labs use different roots (tests use private roots).
- The lock: ``flock`` on ``<lab dir>/lock``, held by ``up`` for the whole build and by ``down``
  while it removes things; released by the kernel when the holder dies (``kill -9``).

Hazard: a stale id link (its lab directory removed by hand) is never reclaimed automatically:
two processes reclaiming the same link could both believe they own it. There are 999 ids.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tortie.lab.errors import (
    LabAmbiguousError,
    LabBuildError,
    LabBusyError,
    LabNotFoundError,
)
from tortie.lab.naming import MAX_LAB_ID, check_lab_name, lab_prefix
from tortie.lab.state import STATE_NAME

DEFAULT_ROOT = Path("/run/tortie/labs")
ROOT_ENV = "TORTIE_LAB_ROOT"
DEFAULT_IDS_DIR = Path("/run/tortie/lab-ids")
NETNS_DIR = Path("/run/netns")
LOCK_NAME = "lock"


def default_root() -> Path:
    return Path(os.environ.get(ROOT_ENV) or DEFAULT_ROOT)


@dataclass(frozen=True)
class LabPaths:
    root: Path = field(default_factory=default_root)
    ids_dir: Path = DEFAULT_IDS_DIR
    netns_dir: Path = NETNS_DIR

    def lab_dir(self, name: str) -> Path:
        # Absolute: the id registry links to it and ``down`` compares link targets.
        return (self.root / check_lab_name(name)).absolute()

    def state_file(self, name: str) -> Path:
        return self.lab_dir(name) / STATE_NAME

    def labs(self) -> list[str]:
        """Names of the labs under the root (directories, with or without a state file)."""
        try:
            entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        except FileNotFoundError:
            return []
        return [e.name for e in entries if e.is_dir(follow_symlinks=False)]

    def resolve(self, name: str | None) -> str:
        """``name`` if given (and it exists), else the only lab."""
        labs = self.labs()
        if name is not None:
            if name not in labs:
                known = f" (labs: {', '.join(labs)})" if labs else ""
                raise LabNotFoundError(f"no lab named {name!r} under {self.root}{known}")
            return name
        if not labs:
            raise LabNotFoundError(f"no lab under {self.root}; create one with 'tortie lab up'")
        if len(labs) > 1:
            raise LabAmbiguousError(
                f"several labs exist ({', '.join(labs)}); choose one with --name"
            )
        return labs[0]


def _netns_prefix_in_use(paths: LabPaths, lab_id: int) -> bool:
    prefix = lab_prefix(lab_id)
    try:
        return any(name.startswith(prefix) for name in os.listdir(paths.netns_dir))
    except FileNotFoundError:
        return False


def allocate_id(paths: LabPaths, lab_dir: Path) -> tuple[int, Path]:
    """Claim the smallest free lab id for ``lab_dir``; return it and its registry link."""
    paths.ids_dir.mkdir(parents=True, exist_ok=True)
    for lab_id in range(1, MAX_LAB_ID + 1):
        if _netns_prefix_in_use(paths, lab_id):
            continue
        link = paths.ids_dir / str(lab_id)
        try:
            os.symlink(lab_dir, link)
        except FileExistsError:
            continue
        return lab_id, link
    raise LabBuildError(
        f"all {MAX_LAB_ID} lab ids are taken ({paths.ids_dir}); remove labs with 'tortie lab down'"
    )


def release_ids(paths: LabPaths, lab_dir: Path) -> list[Path]:
    """Remove the registry links that point at ``lab_dir`` (and only those)."""
    removed = []
    try:
        entries = list(os.scandir(paths.ids_dir))
    except FileNotFoundError:
        return []
    for entry in entries:
        try:
            if os.readlink(entry.path) == os.fspath(lab_dir):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


def owner_of(paths: LabPaths, lab_id: int) -> str | None:
    try:
        return os.readlink(paths.ids_dir / str(lab_id))
    except OSError:
        return None


@contextmanager
def lab_lock(lab_dir: Path, wait: float = 0.0) -> Iterator[int]:
    """Hold the lab's lock (waiting up to ``wait`` seconds); LabBusyError if it stays taken."""
    fd = os.open(lab_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise LabBusyError(
                        f"lab {lab_dir.name!r} is locked by another tortie lab command "
                        f"({lab_dir / LOCK_NAME}); wait for it, or stop it"
                    ) from None
                time.sleep(0.05)
        yield fd
    finally:
        os.close(fd)


def is_locked(lab_dir: Path) -> bool:
    try:
        fd = os.open(lab_dir / LOCK_NAME, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False
