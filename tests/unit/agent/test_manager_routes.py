"""The routes manager against a fake kernel: desired routes from the view, failures, waits,
kernel facts, and BGP's learned routes."""

from __future__ import annotations

import errno
from ipaddress import IPv4Address, IPv4Network

import pytest
from agent_views import Cluster

from tortie.agent.manager import Result, State
from tortie.agent.managers.routes import IN_GRACE, WAITS_FOR_DEVICE, RoutesManager
from tortie.dataplane.fake_netlink import FakeNetlink
from tortie.dataplane.monitor import KernelChanges, RouteChange
from tortie.dataplane.routes import KernelRoute
from tortie.dataplane.routetable import RouteTable

pytestmark = pytest.mark.unit


class Learned:
    def __init__(self) -> None:
        self.routes: dict[IPv4Network, IPv4Address] = {}
        self.trusted = False

    def learned(self) -> dict[IPv4Network, IPv4Address]:
        return dict(self.routes)

    def authoritative(self) -> bool:
        return self.trusted


class Rig:
    def __init__(self, *, bgp: Learned | None = None) -> None:
        self.cluster = Cluster()
        self.kernel = FakeNetlink()
        self.kernel.add_link("eth0", kind=None)
        self.now = 0.0
        table = RouteTable(self.kernel, cni_grace_period=10.0, clock=lambda: self.now)
        self.manager = RoutesManager(table, bgp=bgp)

    def remote_block(self, node: str = "node2", ip: str = "192.168.49.3/24") -> IPv4Network:
        self.cluster.node(node, ip)
        addr = self.cluster.ipam.assign(node=node, handle=f"x.{node}")[0]
        return IPv4Network(f"{addr}/26", strict=False)

    def apply(self) -> Result:
        self.manager.update(self.cluster.view())
        return self.manager.apply()

    def routes(self) -> dict[IPv4Network, KernelRoute]:
        return {r.dst: r for r in self.kernel.table()}


@pytest.fixture
def rig() -> Rig:
    return Rig()


def test_routes_from_the_view_are_programmed_and_done(rig: Rig) -> None:
    rig.cluster.pool(ipip="Never")
    block = rig.remote_block()
    result = rig.apply()
    assert result.converged and result.items == {}
    route = rig.routes()[block]
    assert route.gateway == IPv4Address("192.168.49.3") and route.proto == 80
    metrics = rig.manager.metrics()
    assert metrics.counters["route_writes_total"] == 1 and metrics.gauges["routes_desired"] == 1
    writes = rig.kernel.route_writes
    assert rig.apply().converged and rig.kernel.route_writes == writes  # no-op


def test_a_failed_route_is_a_failed_item_and_is_written_on_the_next_apply(rig: Rig) -> None:
    rig.cluster.pool(ipip="Never")
    block = rig.remote_block()
    rig.kernel.fail_once[block] = errno.EINVAL
    result = rig.apply()
    item = result.items[f"route {block}"]
    assert item.state is State.FAILED and item.retryable
    assert item.message.startswith(f"route {block}: add {block}: Invalid argument")
    assert rig.manager.metrics().counters["route_failures_total"] == 1
    assert rig.apply().converged and block in rig.routes()


def test_a_refusal_no_retry_cures_is_marked_so(rig: Rig) -> None:
    rig.cluster.pool(ipip="Never")
    block = rig.remote_block()
    rig.kernel.fail[block] = errno.EPERM
    assert not rig.apply().items[f"route {block}"].retryable


def test_a_route_through_a_missing_device_is_deferred(rig: Rig) -> None:
    rig.cluster.pool(ipip="Always")  # via tunl0, which nobody made here
    block = rig.remote_block()
    item = rig.apply().items[f"route {block}"]
    assert item.state is State.DEFERRED and item.message == WAITS_FOR_DEVICE
    rig.kernel.add_link("tunl0", kind="ipip")
    rig.manager.on_device_changed("tunl0")  # what the tunnel manager says when it made it
    assert rig.manager.apply().converged and block in rig.routes()


def test_a_cni_route_not_desired_waits_for_its_grace_period(rig: Rig) -> None:
    rig.cluster.pool(ipip="Never")
    cali = rig.kernel.add_link("cali0123456789a")
    pod = IPv4Network("10.244.7.9/32")
    rig.kernel.add_foreign_route(KernelRoute(pod, proto=4, oif=cali.index))  # the CNI's
    item = rig.apply().items[f"route {pod}"]
    assert item.state is State.RETRY and item.message == IN_GRACE and item.retry_after == 10.0
    rig.now += 10
    assert rig.apply().converged and pod not in rig.routes()


def test_a_vxlan_route_to_a_node_without_vtep_is_reported(rig: Rig) -> None:
    rig.cluster.pool(vxlan="Always")
    block = rig.remote_block()
    items = rig.apply().items
    (key,) = items
    assert key == f"unroutable {block}" and items[key].state is State.FAILED
    assert "VXLAN needs the VTEP address of 192.168.49.3" in items[key].message


def test_kernel_facts_deleted_route_rewritten_echo_ignored(rig: Rig) -> None:
    rig.cluster.pool(ipip="Never")
    block = rig.remote_block()
    rig.apply()
    ours = rig.routes()[block]
    assert rig.manager.on_kernel(KernelChanges(routes=(RouteChange(ours),))) == []  # an echo
    rig.kernel.delete_route(ours)
    due = rig.manager.on_kernel(KernelChanges(routes=(RouteChange(ours, deleted=True),)))
    assert due == [f"route {block} deleted"]
    assert rig.manager.apply().converged and block in rig.routes()
    rig.kernel.set_link("eth0", up=False)
    assert rig.manager.on_kernel(KernelChanges(links=(rig.kernel.link_change("eth0"),))) == [
        "routes through eth0"
    ]


def test_resync_rereads_the_kernel(rig: Rig) -> None:
    rig.cluster.pool(ipip="Never")
    block = rig.remote_block()
    rig.apply()
    rig.kernel.routes.clear()  # gone without a word
    assert rig.manager.apply().converged and block not in rig.routes()  # the cache trusted
    rig.manager.resync()
    assert rig.manager.apply().converged and block in rig.routes()


def test_with_bgp_learned_routes_replace_the_datastores_after_the_grace() -> None:
    bgp = Learned()
    rig = Rig(bgp=bgp)
    rig.cluster.pool(ipip="Never")
    block = rig.remote_block()
    other = IPv4Network("10.244.200.0/26")
    bgp.routes = {other: IPv4Address("192.168.49.3")}
    rig.apply()
    assert {block, other} <= set(rig.routes())  # the grace: learned added to the datastore's
    bgp.trusted = True
    rig.apply()
    assert other in rig.routes() and block not in rig.routes()  # BGP is the truth now
