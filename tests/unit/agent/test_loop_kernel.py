"""The reconciler and the kernel monitor's facts: what someone else changed in the kernel is
repaired on the next pass, our own echoes cause nothing, lost events mean a full resync.

The fake kernel, like Linux, announces nothing by itself (a link set down flushes its routes
silently): each test changes the kernel, then hands the agent the facts the real monitor would
report (FakeMonitor.emit), and checks what one pass does.
"""

from __future__ import annotations

import errno
from ipaddress import IPv4Network
from pathlib import Path

import pytest
from test_loop import Harness

from tortie.dataplane.fake_netlink import FakeMonitor
from tortie.dataplane.monitor import KernelChanges, RouteChange
from tortie.dataplane.routes import KernelRoute


class KernelHarness(Harness):
    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.monitor = FakeMonitor()
        self.monitor.start(self.agent.on_kernel_changes)

    def emit(self, **changes: object) -> None:
        self.monitor.emit(KernelChanges(**changes))  # type: ignore[arg-type]

    def route(self, dst: str) -> KernelRoute:
        return next(r for r in self.kernel.table() if str(r.dst) == dst)


@pytest.fixture
def h(tmp_path: Path) -> KernelHarness:
    return KernelHarness(tmp_path)


def remote_block(h: KernelHarness, mode: str) -> str:
    h.set_mode(mode)
    h.add_node("node2", "192.168.49.3/24")
    ip = h.ipam.assign(node="node2", handle="x.b")[0]
    h.sync()
    block = str(IPv4Network(f"{ip}/26", strict=False))
    assert block in h.routes()
    return block


def test_uplink_flap_brings_the_routes_through_it_back(h: KernelHarness) -> None:
    block = remote_block(h, "Never")  # BGP mode: <block> via <node> dev eth0
    h.kernel.set_link("eth0", up=False)  # flushes the routes through eth0, silently
    assert block not in h.routes()
    h.agent.run_once()
    assert block not in h.routes()  # without the fact nothing happens (until the resync)
    h.emit(links=(h.kernel.link_change("eth0"),))
    writes = h.kernel.route_writes
    h.agent.run_once()
    # While eth0 is down the route waits (a write would only fail): no write, no error.
    assert h.kernel.route_writes == writes
    assert h.agent.board.get().detail.startswith("1 route(s) wait for their device")
    h.kernel.set_link("eth0", up=True)
    h.emit(links=(h.kernel.link_change("eth0"),))
    h.agent.run_once()
    assert h.routes()[block] == "via 192.168.49.3 dev eth0"
    assert h.agent.board.ready() == (True, "ok")


def test_a_deleted_route_of_ours_is_rewritten(h: KernelHarness) -> None:
    block = remote_block(h, "Always")
    gone = h.route(block)
    h.kernel.delete_route(gone)
    h.emit(routes=(RouteChange(gone, deleted=True),))
    writes = h.kernel.route_writes
    h.agent.run_once()
    assert h.routes()[block] == "via 192.168.49.3 dev tunl0 onlink"
    assert h.kernel.route_writes == writes + 1
    assert h.agent.counters.kernel_repairs == 1


def test_a_replaced_route_of_ours_is_put_back(h: KernelHarness) -> None:
    block = remote_block(h, "Never")
    ours = h.route(block)
    other = KernelRoute(ours.dst, proto=80, gateway=ours.gateway, oif=ours.oif, onlink=True)
    h.kernel.replace_route(other)  # someone rewrote it with our protocol: still ours
    h.emit(routes=(RouteChange(other),))
    h.agent.run_once()
    assert h.routes()[block] == "via 192.168.49.3 dev eth0"


def test_our_own_writes_echoing_back_cause_no_pass(h: KernelHarness) -> None:
    block = remote_block(h, "Always")
    calls, writes = len(h.backend.calls), h.kernel.route_writes
    echoes = tuple(RouteChange(r) for r in h.kernel.table())
    h.emit(routes=echoes)
    h.agent.run_once()
    assert h.kernel.route_writes == writes
    assert len(h.backend.calls) == calls  # no reconcile pass at all
    assert h.agent.counters.kernel_repairs == 0
    assert block in h.routes()


def test_foreign_routes_are_never_touched(h: KernelHarness) -> None:
    remote_block(h, "Never")
    foreign = KernelRoute(IPv4Network("10.99.0.0/24"), proto=4, oif=h.kernel.links["eth0"].index)
    h.kernel.add_foreign_route(foreign)
    h.emit(routes=(RouteChange(foreign),))
    writes = h.kernel.route_writes
    h.agent.run_once()
    h.kernel.routes.pop((foreign.table, foreign.dst, 0, 0))  # someone deletes it again
    h.emit(routes=(RouteChange(foreign, deleted=True),))
    h.agent.run_once()
    assert h.kernel.route_writes == writes
    assert h.agent.counters.kernel_repairs == 0


def test_a_foreign_route_on_our_destination_is_a_conflict_not_overwritten(
    h: KernelHarness,
) -> None:
    block = remote_block(h, "Never")
    ours = h.route(block)
    foreign = KernelRoute(ours.dst, proto=4, gateway=ours.gateway, oif=ours.oif)
    h.kernel.replace_route(foreign)
    h.emit(routes=(RouteChange(foreign),))
    h.agent.run_once()
    assert h.route(block).proto == 4
    ready, why = h.agent.board.ready()
    assert not ready and "foreign" in why


def test_deleted_tunnel_device_is_recreated_with_its_routes(h: KernelHarness) -> None:
    block = remote_block(h, "Always")
    index = h.kernel.links["tunl0"].index
    h.kernel.delete_link("tunl0")  # takes the routes through it
    assert block not in h.routes()
    h.emit(links=(h.kernel.link_change("tunl0", index),))
    h.agent.run_once()
    assert h.kernel.get_link("tunl0") is not None
    assert h.routes()[block] == "via 192.168.49.3 dev tunl0 onlink"


def test_lost_events_mean_a_full_resync(h: KernelHarness) -> None:
    block = remote_block(h, "Always")
    h.kernel.routes.clear()  # everything gone, and the monitor could not say what
    dumps = 0
    dump = h.kernel.dump_routes

    def counting(table: int | None = None, proto: int | None = None) -> list[KernelRoute]:
        nonlocal dumps
        dumps += 1
        return dump(table, proto)

    h.kernel.dump_routes = counting  # type: ignore[method-assign]
    resyncs = h.firewall.resyncs
    h.emit(lost="overrun")
    h.agent.run_once()
    assert dumps == 1 and h.firewall.resyncs == resyncs + 1
    assert h.routes()[block] == "via 192.168.49.3 dev tunl0 onlink"
    assert h.agent.counters.kernel_lost == 1


def test_firewall_change_rereads_the_table(h: KernelHarness) -> None:
    remote_block(h, "Always")
    resyncs = h.firewall.resyncs
    h.emit(firewall=True)
    h.agent.run_once()
    assert h.firewall.resyncs == resyncs + 1


def test_unrelated_links_cause_no_pass(h: KernelHarness) -> None:
    remote_block(h, "Always")
    h.kernel.add_link("docker0", kind="bridge")
    calls = len(h.backend.calls)
    h.emit(links=(h.kernel.link_change("docker0"),))
    h.agent.run_once()
    assert len(h.backend.calls) == calls


def test_recreated_workload_interface_is_configured_again(
    h: KernelHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_loop import WEP_DOC

    from tortie.agent.managers import workloads
    from tortie.model.loader import load_documents

    configured: list[str] = []
    monkeypatch.setattr(
        workloads, "configure_workload_interface", lambda name: configured.append(name) or []
    )
    h.set_mode("Always")
    h.res.apply(load_documents(WEP_DOC, "wep.yaml"))
    h.kernel.add_link("cali1234567890a")
    h.sync()
    assert configured == ["cali1234567890a"]
    index = h.kernel.links["cali1234567890a"].index
    h.kernel.delete_link("cali1234567890a")
    h.emit(links=(h.kernel.link_change("cali1234567890a", index),))
    h.agent.run_once()
    h.kernel.add_link("cali1234567890a")  # the pod's interface made again
    h.emit(links=(h.kernel.link_change("cali1234567890a"),))
    h.agent.run_once()
    assert configured == ["cali1234567890a", "cali1234567890a"]
    assert h.routes()["10.244.3.7/32"] == "dev cali1234567890a"


def test_a_route_write_failing_while_the_device_goes_down_waits(h: KernelHarness) -> None:
    block = remote_block(h, "Never")
    gone = h.route(block)
    h.kernel.delete_route(gone)
    h.kernel.fail_once[gone.dst] = errno.ENETDOWN
    h.emit(routes=(RouteChange(gone, deleted=True),))
    h.agent.run_once()
    assert block not in h.routes()
    h.now += 1
    h.agent.run_once()  # the quiet retry of a waiting route
    assert h.routes()[block] == "via 192.168.49.3 dev eth0"
