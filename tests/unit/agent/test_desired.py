"""The route calculation per pool mode (Calico's rules), without a kernel."""

from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from tortie.agent.desired import (
    LocalNode,
    PoolInfo,
    RemotePrefix,
    Workload,
    compute_routes,
    tunnel_wanted,
)
from tortie.dataplane.routes import RouteSpec, RouteType
from tortie.model.naming import is_workload_interface

LOCAL = LocalNode("node1", IPv4Interface("192.168.49.2/24"), uplink="eth0")
SAME_SUBNET = IPv4Address("192.168.49.3")
OTHER_SUBNET = IPv4Address("192.168.50.2")
POOL = IPv4Network("10.244.0.0/16")
LOCAL_BLOCK = IPv4Network("10.244.120.64/26")
BLOCK_SAME = IPv4Network("10.244.205.192/26")
BLOCK_OTHER = IPv4Network("10.244.7.0/26")


def routes(mode: str) -> dict[IPv4Network, RouteSpec]:
    pools = [PoolInfo(POOL, ipip_mode=mode)]  # type: ignore[arg-type]
    remote = [RemotePrefix(BLOCK_SAME, SAME_SUBNET), RemotePrefix(BLOCK_OTHER, OTHER_SUBNET)]
    return compute_routes(LOCAL, pools, [LOCAL_BLOCK], remote).routes


def test_ipip_always_goes_through_tunl0_onlink() -> None:
    r = routes("Always")
    assert str(r[BLOCK_SAME]) == "10.244.205.192/26 via 192.168.49.3 dev tunl0 onlink"
    assert str(r[BLOCK_OTHER]) == "10.244.7.0/26 via 192.168.50.2 dev tunl0 onlink"
    assert r[LOCAL_BLOCK].type is RouteType.BLACKHOLE


def test_never_is_native_routing_via_the_uplink() -> None:
    r = routes("Never")
    assert str(r[BLOCK_SAME]) == "10.244.205.192/26 via 192.168.49.3 dev eth0"
    assert not r[BLOCK_SAME].onlink
    assert str(r[BLOCK_OTHER]) == "10.244.7.0/26 via 192.168.50.2 dev eth0"


def test_crosssubnet_encapsulates_only_across_subnets() -> None:
    r = routes("CrossSubnet")
    assert str(r[BLOCK_SAME]) == "10.244.205.192/26 via 192.168.49.3 dev eth0"
    assert str(r[BLOCK_OTHER]) == "10.244.7.0/26 via 192.168.50.2 dev tunl0 onlink"


def test_prefixes_outside_pools_and_own_ip_are_ignored() -> None:
    pools = [PoolInfo(POOL, ipip_mode="Always")]
    remote = [
        RemotePrefix(IPv4Network("172.30.0.0/26"), SAME_SUBNET),
        RemotePrefix(BLOCK_SAME, LOCAL.address.ip),
    ]
    out = compute_routes(LOCAL, pools, [IPv4Network("172.31.0.0/26")], remote)
    assert out.routes == {}


def test_borrowed_slash32_beats_block_and_workloads_are_link_routes() -> None:
    pools = [PoolInfo(POOL, ipip_mode="Always")]
    borrowed = IPv4Network("10.244.205.200/32")
    remote = [RemotePrefix(BLOCK_SAME, SAME_SUBNET), RemotePrefix(borrowed, OTHER_SUBNET)]
    pod = IPv4Network("10.244.120.69/32")
    out = compute_routes(LOCAL, pools, [LOCAL_BLOCK], remote, [Workload(pod, "cali0123456789a")])
    assert str(out.routes[borrowed]) == "10.244.205.200/32 via 192.168.50.2 dev tunl0 onlink"
    assert str(out.routes[pod]) == "10.244.120.69/32 dev cali0123456789a scope link"


@pytest.mark.parametrize(
    ("modes", "wanted"),
    [(["Never"], False), (["Never", "CrossSubnet"], True), (["Always"], True), ([], False)],
)
def test_tunnel_wanted(modes: list[str], wanted: bool) -> None:
    pools = [PoolInfo(IPv4Network(f"10.{i}.0.0/16"), ipip_mode=m) for i, m in enumerate(modes)]  # type: ignore[arg-type]
    assert tunnel_wanted(pools) is wanted


def test_vxlan_routes_go_to_the_remote_vtep_and_crosssubnet_applies() -> None:
    vtep2, vtep3 = IPv4Address("10.244.205.192"), IPv4Address("10.244.7.0")
    remote = [
        RemotePrefix(BLOCK_SAME, SAME_SUBNET, vtep2),
        RemotePrefix(BLOCK_OTHER, OTHER_SUBNET, vtep3),
    ]
    always = compute_routes(LOCAL, [PoolInfo(POOL, vxlan_mode="Always")], [], remote).routes
    assert str(always[BLOCK_SAME]) == (
        "10.244.205.192/26 via 10.244.205.192 dev vxlan.calico onlink"
    )
    cross = compute_routes(LOCAL, [PoolInfo(POOL, vxlan_mode="CrossSubnet")], [], remote).routes
    assert str(cross[BLOCK_SAME]) == "10.244.205.192/26 via 192.168.49.3 dev eth0"
    assert str(cross[BLOCK_OTHER]) == "10.244.7.0/26 via 10.244.7.0 dev vxlan.calico onlink"


def test_vxlan_without_a_known_vtep_is_reported_not_guessed() -> None:
    remote = [RemotePrefix(BLOCK_SAME, SAME_SUBNET)]
    out = compute_routes(LOCAL, [PoolInfo(POOL, vxlan_mode="Always")], [], remote)
    assert out.routes == {}
    assert "VTEP" in out.unroutable[0]


@pytest.mark.parametrize("interface", ["eth0", "tunl0", "lo", "cali", "vxlan.calico", "Cali123"])
def test_workloads_on_interfaces_without_the_prefix_are_ignored(interface: str) -> None:
    """Issue 17 item 7: an endpoint applied by hand with interfaceName eth0 got a /32 on the
    node's uplink. Only ``cali...`` interfaces are managed (Felix's InterfacePrefix)."""
    pools = [PoolInfo(POOL, ipip_mode="Always")]
    ours = Workload(IPv4Network("10.244.120.69/32"), "cali0123456789a")
    theirs = Workload(IPv4Network("10.244.120.70/32"), interface)
    out = compute_routes(LOCAL, pools, [LOCAL_BLOCK], [], [ours, theirs])
    assert theirs.address not in out.routes
    assert str(out.routes[ours.address]) == "10.244.120.69/32 dev cali0123456789a scope link"
    (reason,) = out.ignored
    assert reason.startswith("10.244.120.70/32: interface") and repr(interface) in reason
    assert not is_workload_interface(interface) and is_workload_interface("cali0123456789a")
