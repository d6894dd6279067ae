"""The node agent's loop: fold -> gate -> managers -> publish -> schedule, and nothing else.

Problem: the datastore says what the cluster looks like, the kernel monitor what changed under
us, the BGP speaker what it learned; the node's kernel must converge to the matching state and
keep it through agent restarts, datastore outages, foreign changes and partial failures. What
that state is, per concern, is each manager's business (:mod:`tortie.agent.manager`); this
module only runs them.

The loop (Felix's, felix/design/dataplane.md; docs/agent.md):
- **fold**: the syncer, the kernel monitor and the BGP speaker (threads) only enqueue; the
  loop drains everything queued before computing once, and is the only writer of the
  :class:`ClusterState` and the only caller into the managers. Kernel facts go to every
  manager's ``on_kernel``; lost events mean every manager's ``resync``.
- **gate**: no manager runs before the syncer has reported in-sync (a half-read datastore
  would look like "delete most routes"), nor while the datastore guard refuses the store
  (:mod:`tortie.agent.trust`: another id, or its revision went backwards): no kernel or IPAM
  write at all, fail static; when the guard lifts, the next pass resyncs.
- **managers**: in their declared order, ``update`` then ``apply`` for each, when something
  changed, a retry or wake-up is due, or at the periodic resync (jittered +-10%, so a fleet
  does not resync in lockstep; every manager's ``resync`` first).
- **publish**: health (``/healthz``, ``/readyz``), the status detail, the metrics (the loop's
  counters and each manager's figures).
- **schedule**: the next pass at the earliest of a failed key's backoff, a waiting key's time,
  a manager's wake-up, the resync, or the 1 s heartbeat (:mod:`tortie.agent.retry`).

Errors (:mod:`tortie.agent.manager`): an exception out of a manager is caught only if it is a
DataplaneError or a DatastoreError (a FAILED item); anything else is a programming error and
leaves :meth:`AgentLoop.run` (``tortie node run`` exits non-zero; the kernel stays as it is).
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tortie.agent.desired import LocalNode
from tortie.agent.health import Health, HealthBoard
from tortie.agent.manager import Manager, Result
from tortie.agent.retry import Backoff
from tortie.agent.state import ClusterState
from tortie.agent.trust import DatastoreGuard
from tortie.agent.view import View
from tortie.dataplane.errors import DataplaneError
from tortie.dataplane.monitor import KernelChanges
from tortie.datastore.api import Datastore, DatastoreError
from tortie.datastore.syncer import StatusChanged, Syncer, SyncEvent

log = logging.getLogger(__name__)

SYNC_PREFIX = "/tortie/"
MAX_EVENTS_PER_PASS = 10_000
HEARTBEAT = 1.0


class _Nudge:
    """Something outside the datastore changed (BGP learned a route): recompute."""


@dataclass
class Counters:
    passes: int = 0
    resyncs: int = 0  # periodic resyncs
    dataplane_errors: int = 0  # failed keys whose error was a DataplaneError, per pass
    kernel_changes: int = 0  # batches from the kernel monitor
    kernel_repairs: int = 0  # of those, batches that asked for a pass
    kernel_lost: int = 0  # batches that lost events (full resync)


class AgentLoop:
    def __init__(
        self,
        store: Datastore,
        state: ClusterState,
        local: LocalNode,
        managers: Sequence[Manager],
        *,
        resync_interval: float,
        board: HealthBoard | None = None,
        guard: DatastoreGuard | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.state = state
        self.local = local
        self.managers = list(managers)
        self.resync_interval = resync_interval
        self.board = board or HealthBoard()
        self.guard = guard
        self.events: queue.Queue[SyncEvent | _Nudge | KernelChanges] = queue.Queue()
        self.counters = Counters()
        self.backoff = Backoff()
        self.results: dict[str, Result] = {}  # the last pass's, per manager
        self._clock = clock
        self._rng = rng or random.Random()
        self._wallclock = wallclock
        self._resync_at = 0.0
        self._next_pass_at: float | None = None  # a retry, a wait or a wake-up is due
        self._converged = False
        self._detail = "waiting for the datastore"
        self._refused = False
        self.sync_since: float | None = None  # Unix time of the syncer's last status change

    # -- threads: enqueue only ------------------------------------------------------------
    def on_sync_event(self, event: SyncEvent) -> None:
        self.events.put(event)

    def on_kernel_changes(self, changes: KernelChanges) -> None:
        self.events.put(changes)

    def nudge(self) -> None:
        """Any thread: ask the loop for a pass (BGP speaker events)."""
        self.events.put(_Nudge())

    # -- the loop -------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Until ``stop``; a programming error in a manager propagates (module docstring)."""
        syncer = Syncer(self.store, SYNC_PREFIX, self.on_sync_event, name="agent-syncer")
        syncer.start()
        self._resync_at = self._clock() + self._jittered(self.resync_interval)
        try:
            while not stop.is_set():
                self.run_once(timeout=self._timeout())
        finally:
            syncer.stop()

    def run_once(self, timeout: float = 0.0) -> None:
        """One pass: fold queued events, then run the managers if anything is due."""
        self._fold(timeout)
        self.counters.passes += 1
        if self.state.in_sync and not self._guard_refuses():
            now = self._clock()
            resync = now >= self._resync_at
            if resync:
                self._resync_at = now + self._jittered(self.resync_interval)
                for manager in self.managers:
                    manager.resync()
                self.counters.resyncs += 1
            due = self._next_pass_at is not None and now >= self._next_pass_at
            if self.state.dirty or resync or due:
                self.reconcile()
        self._publish()

    def _guard_refuses(self) -> bool:
        """No write while the guard refuses the datastore (the kernel stays as it is); once
        it lifts, resync at once (the kernel may have drifted meanwhile)."""
        problem = self.guard.check(self.state) if self.guard is not None else ""
        if problem:
            self._refused = True
            self._converged, self._detail = False, problem
            return True
        if self._refused:
            self._refused = False
            self._resync_at = self._clock()
        return False

    def reconcile(self) -> dict[str, Result]:
        """Every manager, in order: update from one view of the cluster, then apply."""
        self.state.dirty = False
        view = View(self.state, self.local)
        results: dict[str, Result] = {}
        for manager in self.managers:
            try:
                manager.update(view)
                results[manager.name] = manager.apply()
            except (DataplaneError, DatastoreError) as err:
                failed = Result()
                failed.fail(manager.name, f"{manager.name}: {err}", err)
                results[manager.name] = failed
        outcome = self.backoff.after_pass(results)
        self.results = results
        self.counters.dataplane_errors += outcome.dataplane_errors
        self._converged, self._detail = outcome.converged, outcome.detail
        now = self._clock()
        self._next_pass_at = None if outcome.delay is None else now + outcome.delay
        if outcome.problems:
            log.warning("not converged (retry in %.1fs): %s", outcome.delay, outcome.detail)
        elif not outcome.converged:
            log.debug("waiting (retry in %.1fs): %s", outcome.delay, outcome.detail)
        return results

    # -- fold -----------------------------------------------------------------------------
    def _fold(self, timeout: float) -> None:
        try:
            first = self.events.get(timeout=timeout) if timeout > 0 else self.events.get_nowait()
        except queue.Empty:
            return
        self._fold_one(first)
        for _ in range(MAX_EVENTS_PER_PASS):
            try:
                self._fold_one(self.events.get_nowait())
            except queue.Empty:
                return

    def _fold_one(self, event: SyncEvent | _Nudge | KernelChanges) -> None:
        if isinstance(event, _Nudge):
            self.state.dirty = True
        elif isinstance(event, KernelChanges):
            self._kernel_changed(event)
        else:
            if isinstance(event, StatusChanged):
                self.sync_since = self._wallclock()
            self.state.apply(event)

    def _kernel_changed(self, changes: KernelChanges) -> None:
        """Hand the kernel monitor's facts to the managers; a pass only if one asks for it.

        Our own writes echo back as events: they match what the managers want (or touch
        nothing they watch), so they ask for no pass, and a pass that writes nothing makes no
        new event: no feedback loop.
        """
        self.counters.kernel_changes += 1
        if changes.lost:
            log.info("kernel monitor: %s; resyncing routes, devices and nftables", changes.lost)
            self.counters.kernel_lost += 1
            for manager in self.managers:
                manager.resync()
            self.state.dirty = True
            return
        due = [why for manager in self.managers for why in manager.on_kernel(changes)]
        if due:
            self.counters.kernel_repairs += 1
            log.info("kernel: %s", "; ".join(sorted(set(due))[:5]))
            self.state.dirty = True

    # -- publish and schedule -------------------------------------------------------------
    def _publish(self) -> None:
        c = self.counters
        counters: dict[str, float] = {
            "agent_passes_total": c.passes,
            "route_resyncs_total": c.resyncs,  # the name from before the managers
            "dataplane_errors_total": c.dataplane_errors,
            "kernel_changes_total": c.kernel_changes,
            "kernel_repairs_total": c.kernel_repairs,
            "kernel_events_lost_total": c.kernel_lost,
        }
        gauges: dict[str, float] = {
            "in_sync": float(self.state.in_sync),
            "converged": float(self._converged),
            "datastore_revision": self.state.revision,
            "datastore_bad_keys": len(self.state.bad_keys),
        }
        helps: dict[str, str] = {}
        for manager in self.managers:
            metrics = manager.metrics()
            counters.update(metrics.counters)
            gauges.update(metrics.gauges)
            helps.update(metrics.help)
        self.board.publish(
            Health(
                heartbeat=self._clock(),
                in_sync=self.state.in_sync,
                converged=self._converged,
                detail=self._detail,
                counters=counters,
                gauges=gauges,
                help=helps,
            )
        )

    def _timeout(self) -> float:
        now = self._clock()
        deadlines = [self._resync_at, now + HEARTBEAT]
        if self._next_pass_at is not None:
            deadlines.append(self._next_pass_at)
        return max(0.0, min(deadlines) - now)

    def _jittered(self, interval: float) -> float:
        return interval * self._rng.uniform(0.9, 1.1)
