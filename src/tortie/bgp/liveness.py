"""Is the BGP speaker alive, not only its process? Probes, verdicts and the restart threshold.

Problem (issue 17, item 9b): a speaker can exist without working. ExaBGP stopped with SIGSTOP
(or wedged) keeps its PID and its sockets, so a check of the process alone says "running" and
``tortie node status`` kept showing its sessions Established, while no keepalive left the
node: its peers drop the sessions at their hold-timer expiry, and with them every route to
this node's pods. Calico covers BIRD the same way from outside: calico-node's liveness probe
(``-bird-live``) asks BIRD over its control socket and kubelet restarts the pod when it does
not answer.

What counts as alive (docs/bgp-liveness.md):
- the process is not stopped: ``/proc/PID/stat`` state ``T`` (a stop signal) or ``t`` (a
  tracer) means it runs nothing at all, whatever its sockets say;
- it answers. ExaBGP: every command the helper writes to it (``# tortie-probe``, a comment,
  whenever ExaBGP has been silent for :data:`PROBE_INTERVAL`; or any announce/withdraw/
  reload) is acknowledged with ``done``/``error`` (``exabgp.api.ack``), so "a line from
  ExaBGP since our last command" is the proof; and the agent asks its helper for ``status``
  every :data:`PROBE_INTERVAL`, which proves the helper. BIRD: the speaker's own poll of the
  control socket (every 0.2 s) succeeds.
- An answer outstanding for :data:`ANSWER_DEADLINE` makes the speaker "not responding".

The restart threshold (:func:`restart_after`): a frozen speaker sends no keepalives, so a
peer's hold timer runs out between 2/3 and all of the hold time H after the freeze (the last
keepalive left up to H/3 before it). A hold-timer expiry is not a graceful restart (RFC 4724):
the peer drops our routes at once. A speaker killed and restarted *before* that closes its
TCP sessions without a NOTIFICATION, which graceful restart covers: peers keep our routes
(stale) until the new speaker's End-of-RIB. So the agent kills an unresponsive speaker after
H/3 (30 s at the default 90 s, leaving H/3 of margin), but never sooner than
:data:`MIN_RESTART_AFTER` (a busy 2-core machine can stall a healthy reactor for seconds);
with small hold times (labs, tests) the sessions go down before that anyway. H is the
smallest non-zero hold time of the configured peers; without one (0 everywhere: no
keepalives) :data:`NO_HOLD_RESTART_AFTER`. The kill is SIGKILL: a wedged process may not act
on SIGTERM, and SIGTERM would make BIRD send a Cease (no graceful restart for its peers).

Invariants: verdicts are pure functions of observations and an injectable clock; nothing
here signals a process (the speakers do, through :class:`tortie.bgp.process.Supervised`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tortie.bgp.types import SpeakerConfig

__all__ = [
    "ANSWER_DEADLINE",
    "MIN_RESTART_AFTER",
    "NO_HOLD_RESTART_AFTER",
    "PROBE_COMMAND",
    "PROBE_INTERVAL",
    "Liveness",
    "LivenessTracker",
    "process_state",
    "restart_after",
    "stopped_detail",
]

PROBE_INTERVAL = 2.0
ANSWER_DEADLINE = 5.0
MIN_RESTART_AFTER = 10.0
NO_HOLD_RESTART_AFTER = 30.0
# ExaBGP's comment command: logged at debug level, answered "done". No registered command
# name followed by a space occurs in it, so ExaBGP's dispatcher matches only "#".
PROBE_COMMAND = "# tortie-probe"


def restart_after(config: SpeakerConfig) -> float:
    """Seconds a speaker may be unresponsive before it is killed (see the module docstring)."""
    holds = [p.hold_time for p in config.peers if p.hold_time > 0]
    if not holds:
        return NO_HOLD_RESTART_AFTER
    return max(MIN_RESTART_AFTER, min(holds) / 3)


def process_state(pid: int | None, proc: Path = Path("/proc")) -> str | None:
    """The one-letter state of ``pid`` (``R``, ``S``, ``T``...), or None if there is none."""
    if pid is None:
        return None
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return fields[0] if fields else None


def stopped_detail(what: str, pid: int | None, proc: Path = Path("/proc")) -> str | None:
    """A message if ``pid`` is stopped (by a stop signal or a tracer), else None."""
    state = process_state(pid, proc)
    if state == "T":
        return f"{what} (PID {pid}) is stopped (SIGSTOP/SIGTSTP): it runs nothing"
    if state == "t":
        return f"{what} (PID {pid}) is stopped by a tracer (a debugger): it runs nothing"
    return None


@dataclass(frozen=True, slots=True)
class Liveness:
    """The verdict: ``responding``, or why not (``detail``) and since when (monotonic)."""

    responding: bool = True
    detail: str = ""
    since: float | None = None

    def describe(self, now: float) -> str:
        if self.responding:
            return "responding"
        if self.since is None:
            return self.detail
        return f"{self.detail} (for {max(0.0, now - self.since):.0f} s)"


class LivenessTracker:
    """Folds observations (a problem text, or None when all is well) into a :class:`Liveness`
    and says when the restart is due. One per speaker, used from its own thread."""

    def __init__(self, restart_after: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.restart_after = restart_after
        self._clock = clock
        self.current = Liveness()
        self.restarts = 0

    def observe(self, problem: str | None) -> bool:
        """Record what was seen now; True if the verdict flipped (responding or not)."""
        now = self._clock()
        if problem is None:
            flipped = not self.current.responding
            self.current = Liveness()
            return flipped
        if self.current.responding:
            self.current = Liveness(False, problem, now)
            return True
        self.current = Liveness(False, problem, self.current.since)
        return False

    def restart_due(self) -> bool:
        since = self.current.since
        return (
            not self.current.responding
            and since is not None
            and self._clock() - since >= self.restart_after
        )

    def restarted(self) -> None:
        """The speaker was killed for it: start over (the new process gets its own time)."""
        self.restarts += 1
        self.current = Liveness()

    def describe(self) -> str:
        return self.current.describe(self._clock())
