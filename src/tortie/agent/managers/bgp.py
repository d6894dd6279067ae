"""The BGP manager: the speaker follows the cluster; what it learned feeds the routes.

Problem: the speaker (ExaBGP, or BIRD 2 on a route reflector) must peer as the datastore says
and announce this node's blocks and the addresses it holds in other nodes' blocks; the routes
manager then programs what it learned. :class:`~tortie.agent.bgp_driver.BgpDriver` does the
speaker's side; this manager puts it behind the manager contract.

- ``update``: what to announce (this node's confirmed blocks, and borrowed /32s it holds).
- ``apply``: the driver's sync (start, reconfigure or replace the speaker; announce). A speaker
  that cannot be started or configured, or runs but does not answer, is a FAILED item (the
  node is not ready; the status file's ``bgp.problem`` says why), retried with backoff.
- During the start-up grace (learned routes not yet complete) it asks for a pass when the
  grace ends (``wake_after``), when the routes manager switches to the learned routes.

Runs before the routes manager, which reads :meth:`BgpManager.learned` in the same pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from ipaddress import IPv4Address, IPv4Network

from tortie.agent.bgp_driver import BgpDriver
from tortie.agent.manager import BaseManager, Result
from tortie.agent.state import ClusterState
from tortie.agent.view import View
from tortie.errors import TortieError

log = logging.getLogger(__name__)


class BgpManager(BaseManager):
    name = "bgp"

    def __init__(self, driver: BgpDriver, clock: Callable[[], float] = time.monotonic) -> None:
        self.driver = driver
        self._clock = clock
        self._state: ClusterState | None = None
        self._announce: list[IPv4Network] = []

    def update(self, view: View) -> None:
        self._state = view.state
        self._announce = view.prefixes.local_blocks + view.prefixes.held_borrowed

    def apply(self) -> Result:
        assert self._state is not None, "apply before update"
        driver = self.driver
        try:
            changes = driver.sync(self._state, self._announce)
        except (TortieError, OSError) as err:
            # The speaker's own failures (its process, its files): this manager's to report.
            driver.problem = f"BGP speaker: {err}"
            changes = []
        if changes:
            log.info("bgp: %s", "; ".join(changes))
        result = Result()
        if driver.problem:
            result.fail("speaker", driver.problem)
        if driver.speaker is not None and not driver.authoritative():
            result.wake(driver.trusted_at - self._clock())
        return result

    def learned(self) -> dict[IPv4Network, IPv4Address]:
        return self.driver.learned()

    def authoritative(self) -> bool:
        return self.driver.authoritative()

    def status(self) -> Mapping[str, object]:
        driver = self.driver
        return {
            "bgp": {
                "state_dir": str(driver.state_dir),
                "speaker": type(driver.speaker).__name__ if driver.speaker else None,
                "problem": driver.problem,
            }
        }
