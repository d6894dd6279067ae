"""RouteTable against a real kernel table in a throwaway namespace."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from ipaddress import IPv4Network

import pytest
from dp_lab import Lab, Monitor, lab

from tortie.dataplane.kernel_netlink import Pyroute2Netlink
from tortie.dataplane.routes import RouteSpec
from tortie.dataplane.routetable import RouteTable

CALI = "cali0123456789a"  # 15 characters: the longest name Linux allows


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def node() -> Iterator[tuple[Lab, str]]:
    with lab() as the_lab:
        ns = the_lab.netns("n")
        ip = the_lab.ip
        ip(ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
        ip(ns, "link", "add", "tunl0", "type", "veth", "peer", "name", "tunl0p")
        ip(ns, "link", "add", CALI, "type", "veth", "peer", "name", "calipeer")
        for dev in ("eth0", "eth0p", "tunl0", "tunl0p", CALI, "calipeer"):
            ip(ns, "link", "set", dev, "up")
        ip(ns, "addr", "add", "192.168.49.2/24", "dev", "eth0")
        # Not ours: an operator's route and a default route.
        ip(ns, "route", "add", "172.16.0.0/16", "via", "192.168.49.1", "proto", "static")
        ip(ns, "route", "add", "default", "via", "192.168.49.1")
        # Ours, left by a previous agent that wanted something else.
        ip(ns, "route", "add", "10.70.0.0/26", "via", "192.168.49.9", "dev", "eth0", "proto", "80")
        # The CNI plugin's route for a pod the agent has not heard of yet.
        ip(ns, "route", "add", "10.65.1.9/32", "dev", CALI, "scope", "link")
        yield the_lab, ns


def kernel_routes(ns: str, the_lab: Lab) -> dict[str, dict[str, object]]:
    routes = json.loads(the_lab.ip(ns, "-j", "route", "show", "table", "main"))
    return {r["dst"]: r for r in routes}


def desired(n: int) -> list[RouteSpec]:
    blocks = IPv4Network("10.128.0.0/10").subnets(new_prefix=26)
    routes = [RouteSpec.via(next(blocks), "192.168.49.3", "tunl0", onlink=True) for _ in range(n)]
    return [*routes, RouteSpec.blackhole("10.65.1.0/26")]


def test_converges_without_touching_foreign_routes(node: tuple[Lab, str]) -> None:
    the_lab, ns = node
    clock = Clock()
    with Pyroute2Netlink(ns) as nl:
        table = RouteTable(nl, clock=clock, cni_grace_period=30)
        table.set_routes(desired(100))
        result = table.apply()
        assert result.added == 101 and result.deleted == 1
        assert result.in_grace == {IPv4Network("10.65.1.9/32")}
        routes = kernel_routes(ns, the_lab)
        assert "10.70.0.0/26" not in routes  # stale and ours: swept
        assert routes["172.16.0.0/16"]["protocol"] == "static"  # foreign: untouched
        assert routes["default"]["gateway"] == "192.168.49.1"
        assert routes["10.65.1.9"]["dev"] == CALI  # CNI's: kept during the grace period
        tun = routes["10.128.0.0/26"]
        assert (tun["gateway"], tun["dev"], tun["protocol"], tun["flags"]) == (
            "192.168.49.3",
            "tunl0",
            "80",
            ["onlink"],
        )
        assert routes["10.65.1.0/26"]["type"] == "blackhole"

        clock.now = 31  # grace over, still not desired: swept
        assert table.apply().deleted == 1
        assert "10.65.1.9" not in kernel_routes(ns, the_lab)


def test_noop_resync_and_restart_write_nothing(node: tuple[Lab, str]) -> None:
    _the_lab, ns = node
    with Pyroute2Netlink(ns) as nl:
        table = RouteTable(nl, cni_grace_period=30)
        table.set_routes([*desired(500), RouteSpec.link("10.65.1.9/32", CALI)])
        table.apply()
        writes = nl.route_writes
        monitor = Monitor(ns)
        try:
            table.queue_resync()
            assert table.apply().writes == 0
            # A restarted agent: no memory, same desired state.
            with Pyroute2Netlink(ns) as nl2:
                fresh = RouteTable(nl2, cni_grace_period=30)
                fresh.set_routes([*desired(500), RouteSpec.link("10.65.1.9/32", CALI)])
                assert fresh.apply().writes == 0
            assert nl.route_writes == writes
            time.sleep(0.2)
            # One real change, to prove the monitor would have seen writes.
            table.set_route(RouteSpec.blackhole("10.66.0.0/26"))
            assert table.apply().writes == 1
        finally:
            events = monitor.stop()
        assert len(events) == 1 and "10.66.0.0/26" in events[0], events


def test_missing_device_is_deferred_then_programmed(node: tuple[Lab, str]) -> None:
    the_lab, ns = node
    with Pyroute2Netlink(ns) as nl:
        table = RouteTable(nl)
        table.set_routes([RouteSpec.link("10.65.1.20/32", "cali00000000020")])
        result = table.apply()
        assert result.deferred == {IPv4Network("10.65.1.20/32")} and not result.failed
        the_lab.ip(ns, "link", "add", "cali00000000020", "type", "veth", "peer", "name", "x20")
        the_lab.ip(ns, "link", "set", "cali00000000020", "up")
        assert table.apply().added == 1
        assert kernel_routes(ns, the_lab)["10.65.1.20"]["scope"] == "link"
        # An onlink route through a device that is down: deferred (ENETDOWN), not failed.
        the_lab.ip(ns, "link", "set", "tunl0", "down")
        table.set_route(RouteSpec.via("10.64.0.0/26", "192.168.49.3", "tunl0", onlink=True))
        result = table.apply()
        assert result.deferred == {IPv4Network("10.64.0.0/26")} and not result.failed
        the_lab.ip(ns, "link", "set", "tunl0", "up")
        table.on_interface_update("tunl0")
        assert table.apply().added == 1


def test_failure_is_recorded_and_others_proceed(node: tuple[Lab, str]) -> None:
    the_lab, ns = node
    with Pyroute2Netlink(ns) as nl:
        table = RouteTable(nl)
        # A gateway that is not on-link without the onlink flag: the kernel refuses it.
        bad = RouteSpec.via("10.64.9.0/26", "10.99.99.99", "eth0")
        table.set_routes([*desired(10), bad])
        result = table.apply()
        assert result.added == 11 and set(result.failed) == {bad.dst}
        assert table.apply().failed[bad.dst].attempts == 2
        the_lab.ip(ns, "addr", "add", "10.99.99.1/24", "dev", "eth0")  # now reachable
        result = table.apply()
        assert result.added == 1 and not result.failed and not table.failures


def test_noop_resync_of_10k_routes_is_fast(node: tuple[Lab, str]) -> None:
    _the_lab, ns = node
    with Pyroute2Netlink(ns) as nl:
        table = RouteTable(nl)
        table.set_routes(desired(10_000))
        started = time.perf_counter()
        assert table.apply().added == 10_001
        cold = time.perf_counter() - started
        table.queue_resync()
        started = time.perf_counter()
        result = table.apply()
        resync = time.perf_counter() - started
        assert result.writes == 0
        assert cold < 3.0 and resync < 1.0, (cold, resync)
