"""After a pass: is the node converged, what does the status say, and when is the next pass?

Problem: every manager answers its apply with a :class:`~tortie.agent.manager.Result` (per key
failed, deferred or waiting); the loop needs one answer for the node: ``/readyz`` and the
status file's ``detail``, a log line, and when to come back.

Rules (docs/agent.md, "Errors"):
- Converged: nothing failed, deferred or waiting. The detail is then ``ok``; otherwise up to
  three reasons, failures first (each its message, in the managers' order), then what waits,
  counted ("2 route(s) wait for their device").
- A FAILED key is retried with its own exponential backoff: ``RETRY_MIN`` after its first
  failure, doubling per consecutive failing pass, at most ``RETRY_MAX``; a key that fails with
  ``retryable=False`` (a person must act) is retried every ``RETRY_MAX``. A key that did not
  fail in a pass starts again from ``RETRY_MIN``. The next pass comes when the earliest
  failing key is due; it re-applies every manager (they are idempotent), so a key may be
  tried before its own time: the backoff bounds how often the node retries, not each key.
- With nothing failed, waiting is quiet: DEFERRED keys are polled every ``RETRY_MIN`` (the
  kernel monitor usually tells sooner), RETRY keys come back when they asked (at least 50 ms).
- ``wake_after`` (a manager wants a pass even though all is done) is honoured in any case.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from tortie.agent.manager import Result, State
from tortie.dataplane.errors import DataplaneError

RETRY_MIN = 0.5
RETRY_MAX = 30.0
RETRY_SOONEST = 0.05


@dataclass(frozen=True, slots=True)
class Outcome:
    converged: bool
    detail: str
    delay: float | None  # seconds until the next pass is wanted; None: not before an event
    problems: list[str] = field(default_factory=list)
    dataplane_errors: int = 0  # failed keys whose error is a DataplaneError


class Backoff:
    """Consecutive failing passes per key (``manager/key``), and the pass summary."""

    def __init__(self, minimum: float = RETRY_MIN, maximum: float = RETRY_MAX) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.attempts: dict[str, int] = {}

    def delay(self, attempts: int, *, retryable: bool = True) -> float:
        if not retryable:
            return self.maximum
        return min(self.maximum, self.minimum * 2.0 ** (attempts - 1))

    def after_pass(self, results: Mapping[str, Result]) -> Outcome:
        problems: list[str] = []
        waiting: Counter[str] = Counter()
        failed: list[float] = []
        waits: list[float] = []
        wakes: list[float] = []
        attempts: dict[str, int] = {}
        dataplane_errors = 0
        for name, result in results.items():
            if result.wake_after is not None:
                wakes.append(max(RETRY_SOONEST, result.wake_after))
            for key, item in result.items.items():
                if item.state is State.FAILED:
                    k = f"{name}/{key}"
                    attempts[k] = self.attempts.get(k, 0) + 1
                    failed.append(self.delay(attempts[k], retryable=item.retryable))
                    problems.append(item.message)
                    dataplane_errors += isinstance(item.error, DataplaneError)
                elif item.state is State.DEFERRED:
                    waiting[item.message] += 1
                    waits.append(self.minimum)
                elif item.state is State.RETRY:
                    waiting[item.message] += 1
                    retry = item.retry_after if item.retry_after is not None else self.minimum
                    waits.append(max(RETRY_SOONEST, retry))
        self.attempts = attempts
        converged = not problems and not waiting
        reasons = problems + [f"{n} {what}" for what, n in waiting.items()]
        detail = "; ".join(reasons[:3]) if reasons else "ok"
        delays = failed or waits
        delay = min(delays + wakes) if delays or wakes else None
        return Outcome(converged, detail, delay, problems, dataplane_errors)
