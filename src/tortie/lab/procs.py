"""Finding and stopping exactly the processes a lab started, never anyone else's.

Problem: ``lab down`` must stop the lab's agents, speakers and captures, also when the ``lab
up`` that started them was killed. A PID alone is not an identity: after our process died the
number can belong to anything. And a process started between "spawned" and "recorded" (a
``kill -9`` in that window) has no record at all.

Invariants:
- A recorded process is signalled only if its start time (``/proc/PID/stat`` field 22) still
  matches the record and so does its command line (or, for a process we spawned, which may
  be mid-``exec`` when recorded, it carries the lab's token); the signal goes through a
  pidfd opened *before* the check, so the check and the signal are about the same process.
- Every process the lab starts carries ``TORTIE_LAB_TOKEN=<the lab's random token>`` in its
  environment; :func:`pids_with_token` finds unrecorded ones by it (only root can read other
  processes' environments, and only a lab's own children carry its token).
- The calling process and its ancestors are never signalled (``tortie lab down`` run through
  ``tortie lab exec`` carries the token too).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from tortie.lab.state import ProcessRecord

TOKEN_ENV = "TORTIE_LAB_TOKEN"


@dataclass(frozen=True)
class ProcessIdentity:
    pid: int
    start_time: int
    cmdline: tuple[str, ...]


def _stat_start_time(stat: str) -> int:
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    rest = stat[stat.rindex(")") + 2 :].split()
    return int(rest[19])  # field 22 overall; rest starts at field 3


def identify(pid: int) -> ProcessIdentity | None:
    """The identity of a live process, or None if there is no such process (or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    if stat[stat.rindex(")") + 2 :].startswith("Z"):
        return None
    cmdline = tuple(x.decode(errors="replace") for x in raw.split(b"\0")[:-1])
    return ProcessIdentity(pid, _stat_start_time(stat), cmdline)


def record_for(
    pid: int,
    role: str,
    node: str | None = None,
    log: str | None = None,
    argv: tuple[str, ...] | None = None,
) -> ProcessRecord | None:
    """A record of live process ``pid``; ``argv`` is the command it will end up running.

    A process we spawn may still be between ``fork`` and ``exec`` (or inside ``nsenter``)
    when its PID is recorded, so for those the record keeps the final ``argv`` and
    :func:`is_ours` accepts a command line that ends with it.
    """
    ident = identify(pid)
    if ident is None:
        return None
    cmdline = argv if argv is not None else ident.cmdline
    return ProcessRecord(role, pid, ident.start_time, cmdline, node=node, log=log)


def has_token(pid: int, token: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
    except OSError:
        return False
    return f"{TOKEN_ENV}={token}".encode() in env.split(b"\0")


def is_ours(
    ident: ProcessIdentity,
    start_time: int,
    cmdline: tuple[str, ...] | None,
    token: str | None = None,
) -> bool:
    """Same start time, and the recorded command line (as a suffix) or the lab's token."""
    if ident.start_time != start_time:
        return False
    if cmdline is None:
        return True
    if cmdline and ident.cmdline[-len(cmdline) :] == cmdline:
        return True
    return token is not None and has_token(ident.pid, token)


def matches(record: ProcessRecord, token: str | None = None) -> bool:
    ident = identify(record.pid)
    return ident is not None and is_ours(ident, record.start_time, record.cmdline, token)


def _ancestors() -> set[int]:
    out, pid = set(), os.getpid()
    while pid > 1 and pid not in out:
        out.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            break
        pid = int(stat[stat.rindex(")") + 2 :].split()[1])
    return out


def _wait_pidfd(fd: int, timeout: float) -> bool:
    readable, _, _ = select.select([fd], [], [], timeout)
    return bool(readable)


def stop(
    pid: int,
    start_time: int,
    cmdline: tuple[str, ...] | None,
    grace: float = 3.0,
    token: str | None = None,
) -> str:
    """Stop one process if it is still the one described (:func:`is_ours`); say what happened.

    ``cmdline`` None skips the command-line check (token-found processes, whose identity is
    their environment). SIGTERM first, SIGKILL after ``grace`` seconds.
    """
    if pid in _ancestors():
        return "skipped (this process or an ancestor)"
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return "gone"
    try:
        ident = identify(pid)
        if ident is None:
            return "gone"
        if not is_ours(ident, start_time, cmdline, token):
            return "gone (PID reused by another process: left alone)"
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(fd, signal.SIGTERM)
        if _wait_pidfd(fd, grace):
            return "stopped"
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        _wait_pidfd(fd, grace)
        return "killed"
    finally:
        os.close(fd)


def stop_record(record: ProcessRecord, grace: float = 3.0, token: str | None = None) -> str:
    return stop(record.pid, record.start_time, record.cmdline, grace, token)


def _pids() -> Iterator[int]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            yield int(entry.name)


def pids_with_token(token: str, pids: Iterable[int] | None = None) -> list[int]:
    """Live processes whose environment carries ``TORTIE_LAB_TOKEN=token``."""
    own = _ancestors()
    return [
        pid
        for pid in (pids if pids is not None else _pids())
        if pid not in own and has_token(pid, token)
    ]


def stop_token_holders(token: str, grace: float = 3.0) -> list[tuple[int, str]]:
    """Stop every process carrying the lab's token; a few passes catch their children."""
    done: list[tuple[int, str]] = []
    for _ in range(3):
        found = pids_with_token(token)
        if not found:
            break
        for pid in found:
            ident = identify(pid)
            if ident is not None:
                done.append((pid, stop(pid, ident.start_time, None, grace)))
        time.sleep(0.01)
    return done
