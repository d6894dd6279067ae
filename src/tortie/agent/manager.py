"""The manager contract: one per concern of the node (routes, tunnel, VXLAN, nftables, ...).

Problem: the agent programs several kinds of kernel state (and a few datastore records), each
with its own driver, its own failure modes and its own way to notice drift. If the loop knows
each of them, every feature edits the loop, and every driver answers in its own shape. Felix
solved this with one interface for every dataplane manager (felix/design/dataplane.md, "The
OnUpdate / apply() split")::

    type Manager interface {
        OnUpdate(protoBufMsg any)      // cheap, no kernel I/O: record desired state
        CompleteDeferredWork() error   // the kernel work, over what changed
    }

and Cilium's statedb reconciler gives every reconciled object a status (pending, done, or an
error retried with backoff) from its ``Operations{Update, Delete, Prune}``. Here a manager is:

- :meth:`Manager.update` (Felix's ``OnUpdate``): computes its desired state from the cluster
  view (:class:`tortie.agent.view.View`), pure: no kernel, datastore or file I/O (it may hand
  the desired state to an in-memory driver that only marks things dirty, as
  :meth:`~tortie.dataplane.routetable.RouteTable.set_routes` does).
- :meth:`Manager.apply` (``CompleteDeferredWork``, and ``Update``/``Delete``/``Prune`` in one):
  does the I/O and answers in ONE shape, a :class:`Result`: per key ``DONE``, ``FAILED`` (with
  the error), ``DEFERRED`` (waiting for something, e.g. a device) or ``RETRY`` (after N
  seconds). A key that is not in the result is done: a table of 10,000 routes reports only the
  ones that are not.
- :meth:`Manager.on_kernel`: the kernel monitor's facts (:class:`KernelChanges`), no I/O;
  returns why a pass is due (empty: the facts change nothing of this manager's, e.g. echoes of
  its own writes). :meth:`Manager.resync`: forget what it believes the kernel holds; the next
  apply re-reads it (the periodic resync, and lost monitor events).
- :meth:`Manager.metrics` and :meth:`Manager.status`: what it publishes (Prometheus counters
  and gauges, keys of the status file), read on every pass and by the status thread.

The loop (:mod:`tortie.agent.loop`) calls the managers in their declared order, update then
apply for each, so a manager may read what an earlier one published in the same pass (the
tunnel device's address, BGP's learned routes). Adding a feature means adding a manager
(``agent/managers/``) and one line where the node's managers are listed
(:mod:`tortie.agent.node`), not editing the loop.

Errors (docs/agent.md, "Errors"): a manager reports the failures it expects (a
:class:`~tortie.dataplane.errors.DataplaneError`, an unavailable datastore) as ``FAILED`` items;
the loop retries each with backoff, and the other managers still apply. An exception out of a
manager is retried only if it is a ``DataplaneError`` or a ``DatastoreError``; anything else is a
programming error: the agent exits non-zero and the kernel stays as it is (fail static).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from tortie.dataplane.errors import DataplaneError

if TYPE_CHECKING:
    from tortie.agent.view import View
    from tortie.dataplane.monitor import KernelChanges


class State(enum.Enum):
    DONE = "done"
    FAILED = "failed"  # an error; retried with backoff
    DEFERRED = "deferred"  # waiting for something (a device); polled
    RETRY = "retry"  # come back after ``retry_after`` seconds (a grace period)


@dataclass(frozen=True, slots=True)
class Item:
    """One key's state after an apply.

    ``message``: for FAILED, what went wrong (the status detail shows it); for DEFERRED and
    RETRY, what the key waits for, in a plural form that is counted in the detail
    ("route(s) wait for their device" -> "3 route(s) wait for their device").
    """

    state: State
    message: str = ""
    error: BaseException | None = None
    retry_after: float | None = None  # RETRY: seconds from now
    retryable: bool = True  # FAILED: may trying again soon help (False: a person must act)


@dataclass(slots=True)
class Result:
    """What one :meth:`Manager.apply` left undone, per key (absent keys are done).

    ``wake_after``: seconds until this manager wants another pass even though nothing failed
    or waits (BGP's start-up grace ends, IPAM gc is due).
    """

    items: dict[str, Item] = field(default_factory=dict)
    wake_after: float | None = None

    def done(self, key: str) -> None:
        self.items[key] = Item(State.DONE)

    def fail(
        self,
        key: str,
        message: str,
        error: BaseException | None = None,
        *,
        retryable: bool | None = None,
    ) -> None:
        """``key`` failed; ``retryable`` defaults to the error's (a DataplaneError's) or True."""
        if retryable is None:
            retryable = error.retryable if isinstance(error, DataplaneError) else True
        self.items[key] = Item(State.FAILED, message, error, retryable=retryable)

    def defer(self, key: str, waits_for: str) -> None:
        self.items[key] = Item(State.DEFERRED, waits_for)

    def retry(self, key: str, waits_for: str, after: float) -> None:
        self.items[key] = Item(State.RETRY, waits_for, retry_after=after)

    def wake(self, after: float) -> None:
        self.wake_after = after if self.wake_after is None else min(self.wake_after, after)

    @property
    def converged(self) -> bool:
        return all(item.state is State.DONE for item in self.items.values())


@dataclass(frozen=True, slots=True)
class Metrics:
    """A manager's Prometheus figures (names without the ``tortie_`` prefix)."""

    counters: Mapping[str, float] = field(default_factory=dict)
    gauges: Mapping[str, float] = field(default_factory=dict)
    help: Mapping[str, str] = field(default_factory=dict)


class Manager(Protocol):
    """One concern of the node, as the loop sees it (module docstring)."""

    name: str  # "routes", "tunnel", ...: prefixes its keys in the loop's bookkeeping

    def update(self, view: View) -> None:
        """Compute the desired state from ``view``; pure (no I/O)."""
        ...

    def apply(self) -> Result:
        """Converge what this manager owns to its desired state (the I/O)."""
        ...

    def on_kernel(self, changes: KernelChanges) -> list[str]:
        """Take the kernel monitor's facts (no I/O); why a pass is due (empty: it is not)."""
        ...

    def resync(self) -> None:
        """Distrust what is cached about the kernel: the next apply re-reads it."""
        ...

    def metrics(self) -> Metrics: ...

    def status(self) -> Mapping[str, object]:
        """Keys of the agent's status file (``tortie node status -o json`` shows them)."""
        ...


class BaseManager:
    """Defaults for the optional parts of :class:`Manager` (subclass it and override)."""

    name = "manager"

    def on_kernel(self, changes: KernelChanges) -> list[str]:
        return []

    def resync(self) -> None:
        return None

    def metrics(self) -> Metrics:
        return Metrics()

    def status(self) -> Mapping[str, object]:
        return {}
