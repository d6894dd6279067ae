"""The tunnel (IPIP) manager against a fake backend: the device follows the pools, the routes
manager hears of a (re)made device, failures are retried, kernel facts ask for a pass."""

from __future__ import annotations

import errno
from ipaddress import IPv4Address, IPv4Interface

import pytest
from agent_views import Cluster
from test_loop import FakeBackend

from tortie.agent.manager import Result, State
from tortie.agent.managers.addresses import TunnelAddresses
from tortie.agent.managers.tunnel import TunnelManager
from tortie.dataplane.fake_netlink import FakeNetlink
from tortie.dataplane.ipip import IPIPError
from tortie.dataplane.monitor import AddrChange, KernelChanges

pytestmark = pytest.mark.unit


class Flaky(FakeBackend):
    def __init__(self, netlink: FakeNetlink) -> None:
        super().__init__(netlink)
        self.errors: list[Exception] = []

    def ensure_device(self, mtu: int, tunnel_addr: object = None) -> list[str]:
        if self.errors:
            raise self.errors.pop(0)
        return super().ensure_device(mtu, tunnel_addr)  # type: ignore[arg-type]

    def counters(self) -> dict[str, int]:
        if self.errors:
            raise self.errors.pop(0)
        return {"dropped_unknown_source": 3}


class Rig:
    def __init__(self) -> None:
        self.cluster = Cluster()
        self.kernel = FakeNetlink()
        self.kernel.add_link("eth0", kind=None, mtu=9000)
        self.backend = Flaky(self.kernel)
        self.made = 0
        self.changed: list[str] = []
        self.addresses = TunnelAddresses(
            self.cluster.ipam,
            self.cluster.res,
            "node1",
            IPv4Interface("192.168.49.2/24"),
            as_number=None,
            vtep_mac="66:00:00:00:00:01",
        )
        self.manager = TunnelManager(
            self.factory, self.kernel, "eth0", self.addresses, self.changed.append
        )

    def factory(self) -> tuple[FakeBackend, str]:
        self.made += 1
        return self.backend, "test"

    def apply(self) -> Result:
        view = self.cluster.view()
        self.addresses.update(view)
        self.addresses.apply()
        self.manager.update(view)
        return self.manager.apply()


@pytest.fixture
def rig() -> Rig:
    return Rig()


def test_no_ipip_pool_no_backend(rig: Rig) -> None:
    rig.cluster.pool(ipip="Never")
    assert rig.apply().converged
    assert rig.made == 0 and rig.manager.status()["ipip_backend"] is None


def test_the_device_follows_the_pools_with_known_nodes_first(rig: Rig) -> None:
    rig.cluster.pool(ipip="Always")
    rig.cluster.node("node2", "192.168.49.3/24")
    assert rig.apply().converged
    assert rig.backend.calls == ["known", "ensure"]
    assert rig.backend.known == {IPv4Address("192.168.49.3")}  # not this node's own
    assert rig.backend.mtu == 8980 and rig.backend.addr == IPv4Interface(f"{rig.addresses.ipip}/32")
    assert rig.changed == ["tunl0"]  # made: the routes through it get another look
    assert rig.manager.status() == {"ipip_backend": "fake", "ipip_backend_reason": "test"}
    rig.apply()
    assert rig.changed == ["tunl0"] and rig.made == 1  # unchanged: not told again
    rig.cluster.pool(ipip="Never")
    rig.apply()
    assert rig.backend.removed == 1


def test_a_backend_failure_is_a_failed_item_retried_on_the_next_apply(rig: Rig) -> None:
    rig.cluster.pool(ipip="Always")
    rig.backend.errors = [IPIPError("tunl0 vanished", errno=errno.ENODEV)]
    result = rig.apply()
    item = result.items["tunl0"]
    assert item.state is State.FAILED and item.message == "tunnel device: tunl0 vanished"
    assert item.retryable and isinstance(item.error, IPIPError)
    assert rig.apply().converged and rig.kernel.get_link("tunl0") is not None
    rig.backend.errors = [IPIPError("BPF object missing: run `make -C bpf`", retryable=False)]
    assert not rig.apply().items["tunl0"].retryable


def test_a_programming_error_in_the_backend_is_not_caught(rig: Rig) -> None:
    rig.cluster.pool(ipip="Always")
    rig.backend.errors = [TypeError("ensure_device() takes 2 positional arguments")]
    with pytest.raises(TypeError):
        rig.apply()


def test_kernel_facts_about_the_device_ask_for_a_pass(rig: Rig) -> None:
    assert rig.manager.on_kernel(KernelChanges(links=(rig.kernel.link_change("eth0"),))) == []
    rig.cluster.pool(ipip="Always")
    rig.apply()
    index = rig.kernel.links["tunl0"].index
    rig.kernel.delete_link("tunl0")
    gone = KernelChanges(links=(rig.kernel.link_change("tunl0", index),))
    assert rig.manager.on_kernel(gone) == ["tunl0 changed"]
    addr = KernelChanges(addrs=(AddrChange(9, "tunl0", IPv4Interface("10.0.0.1/32")),))
    assert rig.manager.on_kernel(addr) == ["address 10.0.0.1/32 of tunl0"]
    assert rig.manager.on_kernel(KernelChanges(links=(rig.kernel.link_change("eth0"),))) == []
    assert rig.apply().converged and rig.kernel.get_link("tunl0") is not None


def test_counters_are_read_when_published_and_a_failed_read_keeps_the_last(rig: Rig) -> None:
    assert rig.manager.metrics().counters == {}
    rig.cluster.pool(ipip="Always")
    rig.apply()
    assert rig.manager.metrics().counters == {"ipip_dropped_unknown_source_total": 3}
    rig.backend.errors = [IPIPError("bpf(2): EPERM", errno=errno.EPERM)]
    assert rig.manager.metrics().counters == {"ipip_dropped_unknown_source_total": 3}
