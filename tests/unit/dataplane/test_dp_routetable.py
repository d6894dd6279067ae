"""RouteTable against the in-memory kernel: mark-and-sweep, ownership, deltas, retries, deferral."""

from __future__ import annotations

import errno
from ipaddress import IPv4Address, IPv4Network

import pytest

from tortie.dataplane.fake_netlink import FakeNetlink
from tortie.dataplane.routes import KernelRoute, RouteSpec, RouteType, Scope
from tortie.dataplane.routetable import RouteTable

NODE2 = "192.168.49.3"
BOOT = 3  # RTPROT_BOOT: what `ip route add` and most CNI plugins use


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def nl() -> FakeNetlink:
    fake = FakeNetlink()
    fake.add_link("eth0")
    fake.add_link("tunl0")
    return fake


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_table(nl: FakeNetlink, clock: Clock, **kw: object) -> RouteTable:
    return RouteTable(nl, clock=clock, cni_grace_period=10.0, **kw)  # type: ignore[arg-type]


def remote(block: str, node: str = NODE2) -> RouteSpec:
    return RouteSpec.via(block, node, "tunl0", onlink=True)


def kernel_view(nl: FakeNetlink) -> dict[str, tuple[int, int]]:
    return {str(r.dst): (r.proto, r.type) for r in nl.table()}


def test_first_apply_programs_routes_then_noop(nl: FakeNetlink, clock: Clock) -> None:
    rt = make_table(nl, clock)
    rt.set_routes(
        [
            remote("10.65.2.0/26"),
            RouteSpec.blackhole("10.65.1.0/26"),
            RouteSpec.link("10.65.1.5/32", "eth0"),
        ]
    )
    result = rt.apply()
    assert result.resynced and result.writes == 3 and result.added == 3 and result.converged
    routes = {str(r.dst): r for r in nl.table()}
    tun = routes["10.65.2.0/26"]
    assert (tun.proto, tun.gateway, tun.onlink, tun.oif) == (
        80,
        IPv4Address(NODE2),
        True,
        nl.links["tunl0"].index,
    )
    assert routes["10.65.1.0/26"].type == RouteType.BLACKHOLE
    assert routes["10.65.1.5/32"].scope == Scope.LINK
    assert rt.apply().writes == 0
    rt.queue_resync()
    again = rt.apply()
    assert again.resynced and again.writes == 0


def test_sweeps_stale_owned_routes_and_never_touches_foreign(nl: FakeNetlink, clock: Clock) -> None:
    # What a previous agent (no memory of it now) and others left behind.
    eth0 = nl.links["eth0"].index
    nl.add_foreign_route(KernelRoute(IPv4Network("10.65.9.0/26"), type=RouteType.BLACKHOLE))
    nl.add_foreign_route(KernelRoute(IPv4Network("10.65.2.0/26"), type=RouteType.BLACKHOLE))
    nl.add_foreign_route(KernelRoute(IPv4Network("172.16.0.0/16"), proto=BOOT, oif=eth0))
    nl.add_foreign_route(KernelRoute(IPv4Network("0.0.0.0/0"), proto=BOOT, oif=eth0))
    # Ours, but at a metric we never write: swept as well.
    nl.add_foreign_route(KernelRoute(IPv4Network("10.65.8.0/26"), metric=100, oif=eth0))
    rt = make_table(nl, clock)
    rt.set_routes([remote("10.65.2.0/26")])
    result = rt.apply()
    assert (result.replaced, result.deleted, result.writes) == (1, 2, 3) and result.converged
    assert kernel_view(nl) == {
        "0.0.0.0/0": (BOOT, 1),
        "10.65.2.0/26": (80, 1),
        "172.16.0.0/16": (BOOT, 1),
    }
    written = {str(op.route.dst) for op in nl.ops}
    assert "172.16.0.0/16" not in written and "0.0.0.0/0" not in written


def test_desired_destination_held_by_foreign_route_is_a_conflict(
    nl: FakeNetlink, clock: Clock
) -> None:
    foreign = KernelRoute(IPv4Network("10.65.2.0/26"), proto=BOOT, oif=nl.links["eth0"].index)
    nl.add_foreign_route(foreign)
    rt = make_table(nl, clock)
    rt.set_routes([remote("10.65.2.0/26"), remote("10.65.3.0/26")])
    result = rt.apply()
    assert result.added == 1
    assert set(result.failed) == {IPv4Network("10.65.2.0/26")}
    assert "foreign" in result.failed[IPv4Network("10.65.2.0/26")].message
    assert nl.table()[0] == foreign  # untouched
    # The operator removes their route; the next resync sees the space free.
    nl.routes.clear()
    rt.queue_resync()
    result = rt.apply()
    assert result.added == 2 and result.converged and not rt.failures


def test_deltas_touch_only_what_changed(nl: FakeNetlink, clock: Clock) -> None:
    rt = make_table(nl, clock)
    blocks = [f"10.65.{i}.0/26" for i in range(10)]
    rt.set_routes(remote(b) for b in blocks)
    rt.apply()
    nl.ops.clear()
    rt.set_routes([remote(b) for b in blocks[:9]] + [remote(blocks[9], "192.168.49.4")])
    assert rt.dirty == {IPv4Network(blocks[9])}
    assert rt.apply().replaced == 1 and len(nl.ops) == 1
    rt.set_route(remote(blocks[0]))  # unchanged: no work at all
    assert not rt.dirty
    rt.del_route(blocks[1])
    rt.set_route(RouteSpec.blackhole("10.66.0.0/26"))
    result = rt.apply()
    assert (result.added, result.deleted, result.writes) == (1, 1, 2)
    assert len(nl.table()) == 10


def test_failed_write_is_retried_without_blocking_the_rest(nl: FakeNetlink, clock: Clock) -> None:
    rt = make_table(nl, clock)
    bad = IPv4Network("10.65.5.0/26")
    nl.fail[bad] = errno.EINVAL
    rt.set_routes(remote(f"10.65.{i}.0/26") for i in range(8))
    result = rt.apply()
    assert result.added == 7 and set(result.failed) == {bad}
    assert rt.failures[bad].code == errno.EINVAL and rt.failures[bad].attempts == 1
    assert rt.apply().failed[bad].attempts == 2  # retried, only it
    assert [str(op.route.dst) for op in nl.ops[-1:]] == [str(bad)]
    del nl.fail[bad]
    result = rt.apply()
    assert result.added == 1 and result.converged and not rt.failures
    assert rt.apply().writes == 0


def test_route_to_missing_device_is_deferred_until_it_appears(
    nl: FakeNetlink, clock: Clock
) -> None:
    rt = make_table(nl, clock)
    rt.set_routes([RouteSpec.link("10.65.1.7/32", "cali0123456789a"), remote("10.65.2.0/26")])
    result = rt.apply()
    assert result.added == 1 and result.deferred == {IPv4Network("10.65.1.7/32")}
    assert not result.failed  # waiting is not failing
    assert rt.apply().writes == 0  # still missing: nothing to write
    nl.add_link("cali0123456789a")
    result = rt.apply()  # picks the new link up by itself
    assert result.added == 1 and result.converged


def test_device_down_is_deferred_and_interface_events_requeue(
    nl: FakeNetlink, clock: Clock
) -> None:
    nl.set_link("tunl0", up=False)
    rt = make_table(nl, clock)
    rt.set_routes([remote("10.65.2.0/26")])
    result = rt.apply()
    assert result.deferred == {IPv4Network("10.65.2.0/26")} and not result.failed
    nl.set_link("tunl0", up=True)
    rt.on_interface_update("tunl0")
    assert rt.apply().added == 1
    # The device is recreated: the kernel dropped its routes; the event puts them back.
    nl.delete_link("tunl0")
    nl.add_link("tunl0")
    rt.on_interface_update("tunl0")
    result = rt.apply()
    assert result.added == 1 and nl.table()[0].oif == nl.links["tunl0"].index


def test_cni_routes_get_a_grace_period(nl: FakeNetlink, clock: Clock) -> None:
    cali = nl.add_link("cali1111111111a")
    other = nl.add_link("cali2222222222b")
    nl.add_foreign_route(
        KernelRoute(IPv4Network("10.65.1.2/32"), proto=BOOT, oif=cali.index, scope=Scope.LINK)
    )
    nl.add_foreign_route(
        KernelRoute(IPv4Network("10.65.1.3/32"), proto=BOOT, oif=other.index, scope=Scope.LINK)
    )
    rt = make_table(nl, clock)
    # The agent knows about the first pod only; the second was just created by the CNI.
    rt.set_routes([RouteSpec.link("10.65.1.2/32", "cali1111111111a")])
    result = rt.apply()
    assert result.replaced == 1  # taken over: now carries our protocol
    assert result.in_grace == {IPv4Network("10.65.1.3/32")}
    assert result.retry_after == pytest.approx(10.0)
    assert kernel_view(nl)["10.65.1.3/32"] == (BOOT, 1)
    clock.now += 4
    assert rt.apply().retry_after == pytest.approx(6.0)
    clock.now += 6.5
    result = rt.apply()
    assert result.deleted == 1 and result.converged
    assert set(kernel_view(nl)) == {"10.65.1.2/32"}


def test_owned_prefixes_are_configurable(nl: FakeNetlink, clock: Clock) -> None:
    cali = nl.add_link("cali1111111111a")
    route = KernelRoute(IPv4Network("10.65.1.2/32"), proto=BOOT, oif=cali.index, scope=Scope.LINK)
    nl.add_foreign_route(route)
    rt = make_table(nl, clock, owned_iface_prefixes=())
    rt.apply()
    clock.now += 100
    rt.apply()
    assert nl.table() == [route]


def test_add_race_with_someone_else_triggers_resync(nl: FakeNetlink, clock: Clock) -> None:
    rt = make_table(nl, clock)
    rt.apply()  # cache: empty table
    nl.add_foreign_route(
        KernelRoute(IPv4Network("10.65.2.0/26"), proto=BOOT, oif=nl.links["eth0"].index)
    )
    rt.set_route(remote("10.65.2.0/26"))
    result = rt.apply()
    assert result.failed[IPv4Network("10.65.2.0/26")].code == errno.EEXIST
    result = rt.apply()  # re-read: it is foreign, so it is a conflict, not a write
    assert result.resynced and result.writes == 0
    assert "foreign" in result.failed[IPv4Network("10.65.2.0/26")].message


def test_delete_of_vanished_route_counts_as_done(nl: FakeNetlink, clock: Clock) -> None:
    rt = make_table(nl, clock)
    rt.set_routes([remote("10.65.2.0/26")])
    rt.apply()
    nl.routes.clear()  # someone removed it behind our back
    rt.del_route("10.65.2.0/26")
    result = rt.apply()
    assert result.writes == 1 and result.converged and not rt.failures


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="device is required"):
        RouteSpec(IPv4Network("10.0.0.0/26"), gateway=IPv4Address("192.168.49.3"))
    with pytest.raises(ValueError, match="blackhole"):
        RouteSpec(IPv4Network("10.0.0.0/26"), type=RouteType.BLACKHOLE, device="eth0")
    with pytest.raises(ValueError, match="onlink"):
        RouteSpec(IPv4Network("10.0.0.0/26"), device="tunl0", onlink=True)
    assert RouteSpec.link("10.0.0.1/32", "cali1").scope is Scope.LINK
    assert RouteSpec.via("10.0.0.0/26", "192.168.49.3", "eth0").scope is Scope.UNIVERSE
    assert str(remote("10.0.0.0/26")) == "10.0.0.0/26 via 192.168.49.3 dev tunl0 onlink"


def test_table_rejects_foreign_protocol_and_duplicates(nl: FakeNetlink, clock: Clock) -> None:
    rt = make_table(nl, clock, proto=99)
    with pytest.raises(ValueError, match="protocol"):
        rt.set_route(RouteSpec.blackhole("10.0.0.0/26", proto=80))
    rt.set_route(RouteSpec.blackhole("10.0.0.0/26", proto=99))
    with pytest.raises(ValueError, match="two routes"):
        rt.set_routes([remote("10.0.1.0/26"), RouteSpec.blackhole("10.0.1.0/26")])
    with pytest.raises(ValueError):
        RouteTable(nl, proto=0)
    rt.apply()
    assert nl.table()[0].proto == 99


def test_noop_resync_of_10k_routes_writes_nothing(nl: FakeNetlink, clock: Clock) -> None:
    blocks = list(IPv4Network("10.0.0.0/10").subnets(new_prefix=26))[:10_000]
    rt = make_table(nl, clock)
    rt.set_routes(remote(b) for b in blocks)
    assert rt.apply().added == 10_000
    rt.set_routes(remote(b) for b in blocks)  # same again: no deltas
    assert not rt.dirty
    rt.queue_resync()
    result = rt.apply()  # its duration is measured by bench/routes.py, not here
    assert result.writes == 0 and result.converged


def test_pod_route_added_by_cni_after_the_dump_is_replaced_without_eexist() -> None:
    """The CNI plugin writes <pod>/32 dev caliX (proto boot) between our dump and the pod's
    endpoint reaching us; taking it over must not fail with EEXIST."""
    kernel = FakeNetlink()
    table = RouteTable(kernel)
    table.apply()  # first dump: no pod yet
    link = kernel.add_link("cali0123456789a")
    pod = IPv4Network("10.244.0.5/32")
    kernel.add_foreign_route(KernelRoute(pod, proto=3, scope=253, oif=link.index))
    table.set_route(RouteSpec.link(pod, "cali0123456789a"))
    first = table.apply()  # device unknown in the link cache: deferred
    result = table.apply() if first.deferred else first
    assert not result.failed, result.failed
    assert result.converged
    (route,) = [r for r in kernel.table() if r.dst == pod]
    assert route.proto == 80
