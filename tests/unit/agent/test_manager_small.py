"""The small managers: tunnel addresses (IPAM), the pod MTU file, IPAM gc."""

from __future__ import annotations

import random
from ipaddress import IPv4Interface
from pathlib import Path
from typing import Any

import pytest
from agent_views import Cluster

from tortie.agent.manager import State
from tortie.agent.managers.addresses import TunnelAddresses
from tortie.agent.managers.ipam_gc import IpamGcManager
from tortie.agent.managers.mtu import MtuManager
from tortie.dataplane.fake_netlink import FakeNetlink
from tortie.dataplane.monitor import AddrChange, KernelChanges
from tortie.datastore.api import UnavailableError
from tortie.ipam.client import IPAM
from tortie.model.resources import Node

pytestmark = pytest.mark.unit


class CountingIPAM:
    """IPAM, counting (and optionally failing) its tunnel-address calls and gc."""

    def __init__(self, inner: IPAM) -> None:
        self.inner = inner
        self.calls = 0
        self.gcs = 0
        self.fail: list[Exception] = []

    def ensure_tunnel_address(self, node: str, kind: str) -> Any:
        self.calls += 1
        if self.fail:
            raise self.fail.pop(0)
        return self.inner.ensure_tunnel_address(node, kind)  # type: ignore[arg-type]

    def gc(self) -> object:
        self.gcs += 1
        if self.fail:
            raise self.fail.pop(0)
        return self.inner.gc()

    def release_empty_blocks(self) -> object:
        return self.inner.release_empty_blocks()


def addresses(cluster: Cluster, ipam: CountingIPAM) -> TunnelAddresses:
    return TunnelAddresses(
        ipam,  # type: ignore[arg-type]
        cluster.res,
        "node1",
        IPv4Interface("192.168.49.2/24"),
        as_number=None,
        vtep_mac="66:00:00:00:00:01",
    )


def test_tunnel_addresses_follow_the_pools_and_are_recorded_on_the_node() -> None:
    cluster = Cluster()
    ipam = CountingIPAM(cluster.ipam)
    manager = addresses(cluster, ipam)
    cluster.pool(ipip="Always")
    manager.update(cluster.view())
    assert manager.apply().converged and manager.ipip is not None and manager.vtep is None
    bgp = cluster.res.require(Node, "node1").spec.bgp
    assert bgp is not None and bgp.ipv4_ipip_tunnel_addr == str(manager.ipip)
    calls = ipam.calls
    manager.update(cluster.view())
    manager.apply()
    assert ipam.calls == calls  # same pools: no IPAM write on every pass
    cluster.pool(vxlan="Always")
    manager.update(cluster.view())
    manager.apply()
    assert manager.ipip is None and manager.vtep is not None
    assert manager.status() == {"tunnel_address": None, "vxlan_tunnel_address": str(manager.vtep)}


def test_a_datastore_outage_is_a_failed_item_retried_with_the_same_pools() -> None:
    cluster = Cluster()
    ipam = CountingIPAM(cluster.ipam)
    manager = addresses(cluster, ipam)
    cluster.pool(ipip="Always")
    ipam.fail = [UnavailableError("etcd://127.0.0.1:2379", "connection refused")]
    manager.update(cluster.view())
    item = manager.apply().items["tunnel-address"]
    assert item.state is State.FAILED and item.message.startswith("tunnel address: ")
    assert manager.ipip is None
    assert manager.apply().converged and manager.ipip is not None  # the same pools: retried


def test_the_pod_mtu_follows_the_uplink_and_the_encapsulation(tmp_path: Path) -> None:
    cluster = Cluster()
    kernel = FakeNetlink()
    path = tmp_path / "mtu"
    manager = MtuManager(kernel, "eth0", path)
    cluster.pool(ipip="Never")
    manager.update(cluster.view())
    assert manager.apply().converged and manager.current == 1500  # no uplink yet: 1500
    kernel.add_link("eth0", kind=None, mtu=9000)
    for ipip, vxlan, want in (("Always", "Never", 8980), ("Never", "Always", 8950)):
        cluster.pool(ipip=ipip, vxlan=vxlan)
        manager.update(cluster.view())
        assert manager.apply().converged
        assert manager.current == want and path.read_text() == f"{want}\n"
    stamp = path.stat().st_mtime_ns
    manager.apply()
    assert path.stat().st_mtime_ns == stamp  # unchanged: not rewritten
    uplink = KernelChanges(links=(kernel.link_change("eth0"),))
    assert manager.on_kernel(uplink) == ["eth0 changed"]
    addr = KernelChanges(addrs=(AddrChange(2, "eth0", IPv4Interface("192.168.49.2/24")),))
    assert manager.on_kernel(addr) == ["address 192.168.49.2/24 of eth0"]
    assert manager.on_kernel(KernelChanges(links=(kernel.link_change("lo"),))) == []


def test_an_mtu_file_that_cannot_be_written_is_a_failed_item(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    manager = MtuManager(FakeNetlink(), "eth0", blocker / "mtu")  # a file as the directory
    manager.update(Cluster().view())
    item = manager.apply().items["file"]
    assert item.state is State.FAILED and str(blocker / "mtu") in item.message
    assert manager.current == 1500  # the CNI server still gets the value


def test_ipam_gc_runs_every_interval_never_first_and_a_failure_waits_for_the_next() -> None:
    cluster = Cluster()
    ipam = CountingIPAM(cluster.ipam)
    now = [0.0]
    manager = IpamGcManager(ipam, interval=300, clock=lambda: now[0], rng=random.Random(1))  # type: ignore[arg-type]
    first = manager.apply()
    assert ipam.gcs == 0 and first.converged and first.wake_after is not None
    assert 270 <= first.wake_after <= 330
    now[0] += first.wake_after
    ipam.fail = [UnavailableError("etcd://x", "down")]
    result = manager.apply()
    assert ipam.gcs == 1 and result.converged  # housekeeping: logged, not a failure
    assert result.wake_after is not None and 270 <= result.wake_after <= 330
    now[0] += 10
    manager.apply()
    assert ipam.gcs == 1  # not before the next interval
