"""RouteTable fed kernel events: which notifications make a destination dirty (someone else's
change to ours) and which do not (our echo, foreign routes), and routes through a down device
waiting instead of failing."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Network

from tortie.dataplane.fake_netlink import FakeNetlink
from tortie.dataplane.routes import KernelRoute, RouteSpec
from tortie.dataplane.routetable import RouteTable

BLOCK = "10.65.2.0/26"


def converged() -> tuple[FakeNetlink, RouteTable, KernelRoute]:
    nl = FakeNetlink()
    nl.add_link("eth0")
    rt = RouteTable(nl, clock=lambda: 0.0)
    rt.set_routes(
        [RouteSpec.via(BLOCK, "192.168.49.3", "eth0"), RouteSpec.blackhole("10.65.1.0/26")]
    )
    assert rt.apply().converged
    (route,) = [r for r in nl.table() if str(r.dst) == BLOCK]
    return nl, rt, route


def test_echo_of_our_write_is_not_work() -> None:
    _nl, rt, route = converged()
    assert not rt.on_kernel_route(route)
    assert not rt.dirty


def test_deleted_desired_route_is_work_and_rewritten() -> None:
    nl, rt, route = converged()
    nl.routes.pop((254, route.dst, 0, 0))
    assert rt.on_kernel_route(route, deleted=True)
    result = rt.apply()
    assert result.added == 1 and result.converged


def test_changed_desired_route_is_work() -> None:
    nl, rt, route = converged()
    moved = replace(route, gateway=None, scope=253)
    nl.replace_route(moved)
    assert rt.on_kernel_route(moved)
    assert rt.apply().replaced == 1
    assert [r for r in nl.table() if str(r.dst) == BLOCK] == [route]


def test_foreign_routes_are_not_work_either_way() -> None:
    _nl, rt, route = converged()
    foreign = KernelRoute(IPv4Network("10.99.0.0/24"), proto=4, oif=route.oif)
    assert not rt.on_kernel_route(foreign)
    assert not rt.on_kernel_route(foreign, deleted=True)
    other_table = replace(route, table=100)
    assert not rt.on_kernel_route(other_table, deleted=True)


def test_an_undesired_route_with_our_protocol_is_swept() -> None:
    nl, rt, _route = converged()
    stale = KernelRoute(IPv4Network("10.65.9.0/26"), proto=80, type=6)
    nl.add_foreign_route(stale)
    assert rt.on_kernel_route(stale)
    assert rt.apply().deleted == 1
    assert stale not in nl.table()


def test_a_stray_metric_route_of_ours_queues_a_resync() -> None:
    nl, rt, route = converged()
    stray = replace(route, metric=20)
    nl.add_foreign_route(stray)
    assert rt.on_kernel_route(stray)
    assert rt.apply().resynced
    assert stray not in nl.table()


def test_routes_through_a_down_device_wait_then_come_back() -> None:
    nl, rt, route = converged()
    nl.set_link("eth0", up=False)  # flushes, silently
    assert rt.on_interface_update("eth0")
    writes = nl.route_writes
    result = rt.apply()
    assert result.deferred == {route.dst} and not result.failed
    assert nl.route_writes == writes  # no write that could only fail
    nl.set_link("eth0", up=True)
    assert rt.on_interface_update("eth0")
    assert rt.apply().added == 1


def test_an_interface_with_no_route_of_ours_is_not_work() -> None:
    nl, rt, _route = converged()
    nl.add_link("docker0", kind="bridge")
    assert not rt.on_interface_update("docker0")


def test_an_intact_device_changing_is_looked_at_not_guessed() -> None:
    """A device that is up (again, or with a new MTU): its routes may or may not have been
    flushed; the table is re-read rather than assumed empty (which made "add" meet EEXIST)."""
    nl, rt, route = converged()
    nl.set_link("eth0", mtu=9000)  # routes intact
    assert rt.on_interface_update("eth0", gone=False)
    result = rt.apply()
    assert result.resynced and result.writes == 0 and result.converged
    nl.set_link("eth0", up=False)  # a flap seen only at its end: down and up in one batch
    nl.set_link("eth0", up=True)
    assert rt.on_interface_update("eth0", gone=False)
    result = rt.apply()
    assert result.resynced and result.added == 1 and result.converged
    assert route in nl.table()
