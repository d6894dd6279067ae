"""The IPAM gc manager: release leaked addresses and empty blocks every few minutes.

Problem: a pod deleted while its node's agent was down, or a CNI DEL that never came, leaves
an allocation nobody will release (Calico's kube-controllers garbage-collects them). Every
node's agent runs IPAM's leak collection (:meth:`tortie.ipam.client.IPAM.gc`, which only
releases what is provably gone) and releases its empty blocks, about every
``interval`` seconds (jittered +-10%, so a fleet does not do it in lockstep).

Invariants: never on the first pass (the first collection comes one interval after start);
a failure is logged and tried again at the next interval (it is housekeeping: the node is
programmed and ready regardless). Like every manager it runs only while the datastore guard
trusts the store.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

from tortie.agent.manager import BaseManager, Result
from tortie.agent.view import View
from tortie.errors import TortieError
from tortie.ipam.client import IPAM

log = logging.getLogger(__name__)

IPAM_GC_INTERVAL = 300.0


class IpamGcManager(BaseManager):
    name = "ipam-gc"

    def __init__(
        self,
        ipam: IPAM,
        *,
        interval: float = IPAM_GC_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.ipam = ipam
        self.interval = interval
        self._clock = clock
        self._rng = rng or random.Random()
        self._due: float | None = None

    def update(self, view: View) -> None:
        return None

    def apply(self) -> Result:
        now = self._clock()
        if self._due is not None and now >= self._due:
            try:
                result = self.ipam.gc()
                self.ipam.release_empty_blocks()
            except TortieError as err:
                log.warning("IPAM garbage collection failed: %s", err)
            else:
                log.debug("IPAM gc: %s", result)
            self._due = None
        if self._due is None:
            self._due = now + self.interval * self._rng.uniform(0.9, 1.1)
        wake = Result()
        wake.wake(self._due - now)
        return wake
