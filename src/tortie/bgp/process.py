"""A daemon the agent starts, watches, restarts with backoff and stops: ExaBGP or BIRD.

Problem: the speaker must keep running while the agent runs, survive the agent's own restart
(so a healthy node's sessions, and the routes its peers learned, do not flap when only the
agent restarts), and be stopped precisely: we may kill the processes we started and nothing
else (other speakers share the host in labs and tests).

Invariants:
- Only PIDs we started (this object, or an earlier agent, recorded in ``pid_path`` together
  with a marker that must appear in the process's command line) are ever signalled.
- ``start`` adopts a still-running daemon of ours (matching PID file and command line)
  instead of starting a second one; an adopted daemon is watched by polling ``/proc``.
- A daemon that exits is restarted after a backoff that doubles from ``min_backoff`` to
  ``max_backoff`` and resets once a run lasted ``stable_after`` seconds. A daemon its owner
  judged wedged (:mod:`tortie.bgp.liveness`) is killed (:meth:`Supervised.kill`) and then
  restarted the same way.
- Daemons run in their own session (a Ctrl-C aimed at the agent does not reach them) and, given
  ``netns``, in that network namespace through ``nsenter`` (which execs, so the PID is the
  daemon's own).

Hazards: callers drive :meth:`poll` from their own loop; nothing here runs a thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from tortie.bgp.types import BGPError

__all__ = ["Supervised", "netns_prefix"]

log = logging.getLogger(__name__)

MAX_LOG_BYTES = 5 * 1024 * 1024


def netns_prefix(netns: str | None) -> list[str]:
    """The command prefix that runs a program in network namespace ``netns`` (a name under
    /run/netns or a path), or nothing for the caller's own namespace."""
    if netns is None:
        return []
    path = netns if "/" in netns else f"/run/netns/{netns}"
    return ["nsenter", f"--net={path}"]


def _cmdline(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # A zombie is dead for our purposes (its parent may never reap it).
    state = stat.rpartition(")")[2].split()[:1]
    if state == ["Z"]:
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace")


class Supervised:
    """One daemon (see the module docstring)."""

    def __init__(
        self,
        name: str,
        argv: Callable[[bool], Sequence[str]],
        *,
        pid_path: Path,
        log_path: Path,
        marker: str,
        env: Mapping[str, str] | None = None,
        netns: str | None = None,
        min_backoff: float = 0.5,
        max_backoff: float = 30.0,
        stable_after: float = 30.0,
        on_exit: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``argv(restarting)`` builds the command (``restarting`` is true after a crash);
        ``marker`` must appear in the daemon's command line for a PID file to be trusted."""
        self.name = name
        self._argv = argv
        self.pid_path = pid_path
        self.log_path = log_path
        self.marker = marker
        self.env = dict(env or {})
        self.netns = netns
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.stable_after = stable_after
        self.on_exit = on_exit
        self._clock = clock
        self._proc: subprocess.Popen[bytes] | None = None
        self._adopted: int | None = None
        self._started_at = 0.0
        self._backoff = min_backoff
        self._restart_at: float | None = None
        self._stopped = True
        self.restarts = 0
        self.last_exit = ""

    # -- queries ------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        if self._proc is not None:
            return self._proc.pid
        return self._adopted

    @property
    def running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        if self._adopted is not None:
            return self._owned(self._adopted)
        return False

    @property
    def adopted(self) -> bool:
        return self._adopted is not None

    @property
    def uptime(self) -> float:
        """Seconds since this run was started or adopted (0 when not running)."""
        return max(0.0, self._clock() - self._started_at) if self.running else 0.0

    def _owned(self, pid: int) -> bool:
        cmdline = _cmdline(pid)
        return cmdline is not None and self.marker in cmdline

    # -- control --------------------------------------------------------------------------

    def start(self, *, adopt: bool = True) -> None:
        """Start the daemon, or adopt ours if one is still running from an earlier agent."""
        self._stopped = False
        if self.running:
            return
        if adopt and (pid := self._pid_from_file()) is not None and self._owned(pid):
            log.info("%s: adopting the running daemon, PID %d", self.name, pid)
            self._adopted = pid
            self._started_at = self._clock()
            return
        self._spawn(restarting=False)

    def _pid_from_file(self) -> int | None:
        try:
            return int(self.pid_path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _spawn(self, *, restarting: bool) -> None:
        argv = [*netns_prefix(self.netns), *self._argv(restarting)]
        self._rotate_log()
        env = {**os.environ, **self.env}
        with open(self.log_path, "ab") as out:
            try:
                self._proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                raise BGPError(f"cannot start {self.name} ({argv[0]}): {exc}") from exc
        self._adopted = None
        self._started_at = self._clock()
        self._restart_at = None
        tmp = self.pid_path.with_suffix(".tmp")
        tmp.write_text(f"{self._proc.pid}\n")
        tmp.replace(self.pid_path)
        log.info("%s started, PID %d: %s", self.name, self._proc.pid, " ".join(argv))

    def _rotate_log(self) -> None:
        with contextlib.suppress(OSError):
            if self.log_path.stat().st_size > MAX_LOG_BYTES:
                self.log_path.replace(self.log_path.with_suffix(self.log_path.suffix + ".1"))

    def poll(self) -> str | None:
        """Notice an exit and restart when the backoff allows. Returns what happened
        (``"exited: ..."``, ``"restarted"``) or ``None``."""
        if self._stopped:
            return None
        now = self._clock()
        if self._restart_at is not None:
            if now < self._restart_at:
                return None
            self.restarts += 1
            try:
                self._spawn(restarting=True)
            except BGPError as exc:
                self._schedule_restart(now, str(exc))
                return f"exited: {exc}"
            return "restarted"
        if self.running:
            return None
        detail = self._exit_detail()
        self._proc = None
        self._adopted = None
        self._schedule_restart(now, detail)
        if self.on_exit is not None:
            self.on_exit(detail)
        return f"exited: {detail}"

    def _exit_detail(self) -> str:
        if self._proc is not None:
            code = self._proc.returncode
            if code is not None and code < 0:
                return f"killed by signal {-code}"
            return f"exit status {code}"
        return "the adopted process is gone"

    def _schedule_restart(self, now: float, detail: str) -> None:
        if now - self._started_at >= self.stable_after:
            self._backoff = self.min_backoff
        self.last_exit = detail
        self._restart_at = now + self._backoff
        log.warning("%s: %s; restarting in %.1f s", self.name, detail, self._backoff)
        self._backoff = min(self._backoff * 2, self.max_backoff)

    def send_signal(self, sig: int) -> bool:
        """Send ``sig`` to the daemon if it is running and ours; True if sent."""
        pid = self.pid
        if pid is None or not self.running:
            return False
        if self._proc is None and not self._owned(pid):
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
            return True
        return False

    def kill(self, why: str) -> bool:
        """SIGKILL the daemon because it is wedged (a stopped process cannot act on SIGTERM);
        :meth:`poll` then sees the exit and restarts it with the usual backoff. True if sent."""
        pid = self.pid
        if not self.send_signal(signal.SIGKILL):
            return False
        log.error("%s (PID %s): %s; killed it, the supervisor restarts it", self.name, pid, why)
        return True

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
        """Stop the daemon (``sig``, then SIGKILL after ``timeout``) and do not restart it."""
        self._stopped = True
        self._restart_at = None
        pid = self.pid
        if pid is not None and self.send_signal(sig):
            deadline = self._clock() + timeout
            while self.running and self._clock() < deadline:
                time.sleep(0.02)
            if self.running:
                log.warning("%s (PID %d) ignored signal %d; killing it", self.name, pid, sig)
                self.send_signal(signal.SIGKILL)
                end = self._clock() + 5.0
                while self.running and self._clock() < end:
                    time.sleep(0.02)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(1.0)
        self._proc = None
        self._adopted = None
        with contextlib.suppress(OSError):
            self.pid_path.unlink()

    def detach(self) -> None:
        """Forget the daemon without stopping it (the agent exits; a later agent adopts it)."""
        self._stopped = True
        self._restart_at = None
        self._proc = None
        self._adopted = None
