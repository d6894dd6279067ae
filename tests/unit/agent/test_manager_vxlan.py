"""The VXLAN manager against a fake device driver: the device with this node's VTEP, remote
VTEPs with a MAC only, failures retried, kernel facts about the device."""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Interface

import pytest
from agent_views import Cluster
from test_loop import FakeVxlan

from tortie.agent.manager import Result, State
from tortie.agent.managers.addresses import TunnelAddresses
from tortie.agent.managers.vxlan import VxlanManager
from tortie.dataplane.fake_netlink import FakeNetlink
from tortie.dataplane.monitor import KernelChanges
from tortie.dataplane.vxlan import RemoteVTEP, VXLANError

pytestmark = pytest.mark.unit
MAC = "66:00:00:00:00:01"


class Flaky(FakeVxlan):
    def __init__(self, netlink: FakeNetlink) -> None:
        super().__init__(netlink)
        self.errors: list[Exception] = []

    def set_remote_vteps(self, vteps: Iterable[object]) -> list[str]:
        if self.errors:
            raise self.errors.pop(0)
        return super().set_remote_vteps(vteps)


class Rig:
    def __init__(self, *, driver: bool = True) -> None:
        self.cluster = Cluster()
        self.kernel = FakeNetlink()
        self.kernel.add_link("eth0", kind=None)
        self.driver = Flaky(self.kernel)
        self.changed: list[str] = []
        self.addresses = TunnelAddresses(
            self.cluster.ipam,
            self.cluster.res,
            "node1",
            IPv4Interface("192.168.49.2/24"),
            as_number=None,
            vtep_mac=MAC,
        )
        factory = (lambda: self.driver) if driver else None
        self.manager = VxlanManager(
            factory, self.kernel, "eth0", self.addresses, self.changed.append
        )

    def apply(self) -> Result:
        view = self.cluster.view()
        self.addresses.update(view)
        self.addresses.apply()
        self.manager.update(view)
        return self.manager.apply()


def test_the_device_carries_our_vtep_and_only_vteps_with_a_mac_are_programmed() -> None:
    rig = Rig()
    rig.cluster.pool(vxlan="Always")
    rig.cluster.node("node2", "192.168.49.3/24", vxlan=("10.244.9.0", "66:aa:bb:cc:dd:ee"))
    rig.cluster.node("node3", "192.168.49.4/24")  # no VTEP published yet
    assert rig.apply().converged
    assert rig.driver.mtu == 1450 and rig.driver.mac == MAC
    assert rig.driver.addr == IPv4Interface(f"{rig.addresses.vtep}/32")
    assert rig.driver.remotes == [
        RemoteVTEP(IPv4Address("192.168.49.3"), IPv4Address("10.244.9.0"), "66:aa:bb:cc:dd:ee")
    ]
    assert rig.changed == ["vxlan.calico"]
    rig.cluster.pool(vxlan="Never")
    assert rig.apply().converged and rig.kernel.get_link("vxlan.calico") is None


def test_a_driver_failure_is_a_failed_item_retried_on_the_next_apply() -> None:
    rig = Rig()
    rig.cluster.pool(vxlan="Always")
    rig.driver.errors = [VXLANError("vxlan.calico: 1 entries failed", ["created"])]
    item = rig.apply().items["vxlan.calico"]
    assert item.state is State.FAILED and item.message.startswith("vxlan device: vxlan.calico")
    assert rig.apply().converged


def test_vxlan_wanted_without_a_driver_says_so() -> None:
    rig = Rig(driver=False)
    rig.cluster.pool(vxlan="Always")
    item = rig.apply().items["vxlan.calico"]
    assert item.state is State.FAILED and "no VXLAN manager" in item.message
    rig.cluster.pool(vxlan="Never")
    assert rig.apply().converged


def test_kernel_facts_about_the_device_ask_for_a_pass() -> None:
    rig = Rig()
    assert rig.manager.on_kernel(KernelChanges(links=(rig.kernel.link_change("eth0"),))) == []
    rig.cluster.pool(vxlan="Always")
    rig.apply()
    index = rig.kernel.links["vxlan.calico"].index
    rig.kernel.delete_link("vxlan.calico")
    gone = KernelChanges(links=(rig.kernel.link_change("vxlan.calico", index),))
    assert rig.manager.on_kernel(gone) == ["vxlan.calico changed"]
    assert rig.apply().converged and rig.kernel.get_link("vxlan.calico") is not None
