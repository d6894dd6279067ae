"""Time as a dependency: IPAM's grace periods and timestamps read a :class:`Clock`.

Problem: leak collection and empty-block release depend on "how long ago"; tests must be able
to move time without sleeping. Nothing in :mod:`tortie.ipam` calls ``time.time()`` itself.

Invariant: ``now()`` is epoch seconds (UTC); ``sleep`` is only used for retry back-off.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch."""
        ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class ManualClock:
    """A clock that moves only when told (tests, simulations); ``sleep`` advances it."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def sleep(self, seconds: float) -> None:
        self._now += max(0.0, seconds)

    def advance(self, seconds: float) -> None:
        self._now += seconds
