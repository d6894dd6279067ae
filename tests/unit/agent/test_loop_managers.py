"""The loop knows managers only through their contract (issue 18, item 1), and retries only
dataplane and datastore failures (item 3). Stub managers record what the loop asks of them."""

from __future__ import annotations

import errno
import threading
from collections.abc import Mapping
from ipaddress import IPv4Interface

import pytest

from tortie.agent.desired import LocalNode
from tortie.agent.loop import AgentLoop
from tortie.agent.manager import BaseManager, Metrics, Result
from tortie.agent.state import ClusterState
from tortie.agent.view import View
from tortie.dataplane.monitor import KernelChanges
from tortie.dataplane.netlink import NetlinkError
from tortie.datastore.api import UnavailableError
from tortie.datastore.memory import MemoryDatastore
from tortie.datastore.syncer import InSync

pytestmark = pytest.mark.unit


class Stub(BaseManager):
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name = name
        self.calls = calls
        self.result = Result()
        self.error: BaseException | None = None
        self.due: list[str] = []
        self.resyncs = 0
        self.seen: View | None = None

    def update(self, view: View) -> None:
        self.calls.append(f"{self.name}.update")
        self.seen = view

    def apply(self) -> Result:
        self.calls.append(f"{self.name}.apply")
        if self.error is not None:
            raise self.error
        return self.result

    def on_kernel(self, changes: KernelChanges) -> list[str]:
        return list(self.due)

    def resync(self) -> None:
        self.resyncs += 1

    def metrics(self) -> Metrics:
        return Metrics(counters={f"{self.name}_things_total": 7}, gauges={f"{self.name}_up": 1})

    def status(self) -> Mapping[str, object]:
        return {self.name: "fine"}


class Guard:
    def __init__(self) -> None:
        self.problem = ""

    def check(self, state: ClusterState) -> str:
        return self.problem


class Rig:
    def __init__(self, *names: str) -> None:
        self.calls: list[str] = []
        self.managers = [Stub(n, self.calls) for n in names]
        self.now = 0.0
        self.guard = Guard()
        self.loop = AgentLoop(
            MemoryDatastore(),
            ClusterState("node1"),
            LocalNode("node1", IPv4Interface("192.168.49.2/24"), "eth0"),
            self.managers,
            resync_interval=90.0,
            guard=self.guard,  # type: ignore[arg-type]
            clock=lambda: self.now,
        )
        self.loop._resync_at = 1e9  # no periodic resync unless a test asks

    def __getitem__(self, name: str) -> Stub:
        return next(m for m in self.managers if m.name == name)

    def in_sync(self) -> None:
        self.loop.on_sync_event(InSync(1))
        self.loop.run_once()

    def ready(self) -> tuple[bool, str]:
        return self.loop.board.ready()


@pytest.fixture
def rig() -> Rig:
    return Rig("first", "second", "third")


def test_managers_run_in_order_update_then_apply_on_one_view(rig: Rig) -> None:
    rig.loop.run_once()
    assert rig.calls == []  # not before the datastore is in sync
    rig.in_sync()
    assert rig.calls == [
        "first.update",
        "first.apply",
        "second.update",
        "second.apply",
        "third.update",
        "third.apply",
    ]
    assert rig["first"].seen is rig["third"].seen  # one view per pass
    assert rig.ready() == (True, "ok")
    rig.calls.clear()
    rig.loop.run_once()
    assert rig.calls == []  # nothing changed, nothing due: no pass


def test_no_manager_runs_while_the_guard_refuses(rig: Rig) -> None:
    rig.guard.problem = "datastore replaced"
    rig.in_sync()
    assert rig.calls == [] and rig.ready() == (False, "dataplane not converged: datastore replaced")
    rig.guard.problem = ""
    rig.loop.run_once()
    assert "first.apply" in rig.calls  # lifted: a resync pass at once
    assert all(m.resyncs == 1 for m in rig.managers)


def test_kernel_facts_reach_every_manager_and_a_pass_comes_only_if_one_asks(rig: Rig) -> None:
    rig.in_sync()
    rig.calls.clear()
    rig.loop.on_kernel_changes(KernelChanges())
    rig.loop.run_once()
    assert rig.calls == [] and rig.loop.counters.kernel_repairs == 0
    rig["second"].due = ["tunl0 changed"]
    rig.loop.on_kernel_changes(KernelChanges())
    rig.loop.run_once()
    assert "third.apply" in rig.calls and rig.loop.counters.kernel_repairs == 1
    rig.loop.on_kernel_changes(KernelChanges(lost="overrun"))
    rig.loop.run_once()
    assert all(m.resyncs == 1 for m in rig.managers)
    assert rig.loop.counters.kernel_lost == 1 and rig.loop.counters.kernel_changes == 3


def test_the_periodic_resync_asks_every_manager_first(rig: Rig) -> None:
    rig.in_sync()
    rig.loop._resync_at = rig.now + 90
    rig.now += 100
    rig.calls.clear()
    rig.loop.run_once()
    assert all(m.resyncs == 1 for m in rig.managers) and "first.apply" in rig.calls
    assert rig.loop.counters.resyncs == 1


def test_a_wake_up_brings_a_pass_when_it_is_due(rig: Rig) -> None:
    rig["third"].result.wake(300.0)
    rig.in_sync()
    assert rig.ready() == (True, "ok")
    rig.calls.clear()
    rig.now += 299
    rig.loop.run_once()
    assert rig.calls == []
    rig.now += 1
    rig.loop.run_once()
    assert "first.apply" in rig.calls


def test_metrics_are_gathered_from_every_manager(rig: Rig) -> None:
    rig.in_sync()
    text = rig.loop.board.metrics_text()
    for name in ("first", "second", "third"):
        assert f"tortie_{name}_things_total 7" in text and f"tortie_{name}_up 1" in text
    assert "tortie_agent_passes_total 1" in text and "tortie_converged 1" in text


@pytest.mark.parametrize(
    "error",
    [NetlinkError(errno.EBUSY, "link busy"), UnavailableError("etcd://x", "connection refused")],
    ids=["dataplane", "datastore"],
)
def test_a_dataplane_or_datastore_error_is_retried_with_backoff_and_the_others_apply(
    rig: Rig, error: Exception
) -> None:
    rig["second"].error = error
    rig.in_sync()
    assert rig.calls[-2:] == ["third.update", "third.apply"]  # the others still applied
    ready, why = rig.ready()
    assert not ready and why.startswith("dataplane not converged: second: ")
    passes = []
    for step in (0.4, 0.1, 0.9, 0.1, 1.9, 0.1):  # due after 0.5, then 1, then 2 s
        rig.now += step
        rig.calls.clear()
        rig.loop.run_once()
        passes.append("second.apply" in rig.calls)
    assert passes == [False, True, False, True, False, True]
    rig["second"].error = None
    rig.now += 4
    rig.loop.run_once()
    assert rig.ready() == (True, "ok")
    assert rig.loop.counters.dataplane_errors == (4 if isinstance(error, NetlinkError) else 0)


@pytest.mark.parametrize("error", [TypeError("a bug"), NotImplementedError(), AttributeError("x")])
def test_a_programming_error_leaves_the_loop_before_the_next_manager(
    rig: Rig, error: Exception
) -> None:
    rig["second"].error = error
    with pytest.raises(type(error)):
        rig.in_sync()
    assert rig.calls == ["first.update", "first.apply", "second.update", "second.apply"]


def test_run_stops_its_syncer_and_lets_a_programming_error_out() -> None:
    rig = Rig("only")
    rig["only"].error = TypeError("a bug")
    rig.loop.on_sync_event(InSync(1))
    before = threading.active_count()
    with pytest.raises(TypeError, match="a bug"):
        rig.loop.run(threading.Event())
    assert threading.active_count() <= before  # the syncer thread is gone
