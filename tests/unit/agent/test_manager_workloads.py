"""The workloads manager: each pod interface of ours configured once (and again after it is
made again or a resync), the others ignored and reported once, failures retried."""

from __future__ import annotations

import errno

import pytest
from agent_views import Cluster

from tortie.agent.manager import Result, State
from tortie.agent.managers import workloads
from tortie.agent.managers.workloads import WorkloadsManager
from tortie.dataplane.errors import DataplaneError
from tortie.dataplane.fake_netlink import FakeNetlink
from tortie.dataplane.monitor import KernelChanges
from tortie.dataplane.workload import NoInterfaceError

pytestmark = pytest.mark.unit
CALI = "cali1234567890a"


class Rig:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.cluster = Cluster()
        self.cluster.pool(ipip="Always")
        self.cluster.workload("pod1", CALI, "10.244.3.7")
        self.kernel = FakeNetlink()
        self.configured: list[str] = []
        self.errors: list[Exception] = []
        self.told: list[str] = []
        monkeypatch.setattr(workloads, "configure_workload_interface", self.configure)
        self.manager = WorkloadsManager(self.kernel, self.told.append)

    def configure(self, name: str) -> list[str]:
        if self.errors:
            raise self.errors.pop(0)
        self.configured.append(name)
        return ["proxy_arp=1"]

    def apply(self) -> Result:
        self.manager.update(self.cluster.view())
        return self.manager.apply()


@pytest.fixture
def rig(monkeypatch: pytest.MonkeyPatch) -> Rig:
    return Rig(monkeypatch)


def test_configured_once_when_the_interface_is_there(rig: Rig) -> None:
    assert rig.apply().converged and rig.configured == []  # not there yet: nothing to do
    rig.kernel.add_link(CALI)
    rig.apply()
    rig.apply()
    assert rig.configured == [CALI] and rig.told == [CALI]
    rig.manager.resync()
    rig.apply()
    assert rig.configured == [CALI, CALI]


def test_made_again_means_configured_again(rig: Rig) -> None:
    rig.kernel.add_link(CALI)
    rig.apply()
    index = rig.kernel.links[CALI].index
    rig.kernel.delete_link(CALI)
    gone = KernelChanges(links=(rig.kernel.link_change(CALI, index),))
    assert rig.manager.on_kernel(gone) == []  # the routes manager asks for the pass
    rig.kernel.add_link(CALI)
    rig.apply()
    assert rig.configured == [CALI, CALI]


def test_an_interface_gone_meanwhile_is_skipped_other_failures_retried(rig: Rig) -> None:
    rig.kernel.add_link(CALI)
    rig.errors = [NoInterfaceError(CALI)]
    assert rig.apply().converged and rig.configured == []
    rig.errors = [DataplaneError("workload interface: sysctls: denied", errno=errno.EACCES)]
    item = rig.apply().items[CALI]
    assert item.state is State.FAILED and not item.retryable
    assert item.message.startswith(f"workload interface {CALI}: ")
    assert rig.apply().converged and rig.configured == [CALI]


def test_an_endpoint_on_an_interface_not_ours_is_reported_once(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.cluster.workload("pod2", "eth0", "10.244.3.8")
    with caplog.at_level("WARNING", logger=workloads.__name__):
        for _ in range(3):
            rig.apply()
    warnings = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert len(warnings) == 1 and "default/node1-k8s-pod2-eth0" in warnings[0]
    assert rig.manager.metrics().gauges == {"workloads_ignored": 1}
    ignored = rig.manager.status()["ignored_endpoints"]
    assert list(ignored) == ["default/node1-k8s-pod2-eth0"]  # type: ignore[call-overload]
