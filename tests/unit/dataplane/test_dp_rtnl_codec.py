"""The raw rtnetlink codec: our route messages parse back to the same routes; errors decode."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv4Network

from tortie.dataplane import bpffs, rtnl
from tortie.dataplane.netns import netns_path
from tortie.dataplane.routes import KernelRoute, RouteOp, RouteType, Scope
from tortie.dataplane.workload import workload_sysctls


def roundtrip(route: KernelRoute, table: int | None = None) -> list[KernelRoute]:
    msg = rtnl._route_msg(RouteOp("replace", route), seq=7)
    length, kind, flags, seq, _pid = rtnl._HDR.unpack_from(msg)
    assert (length, kind, seq) == (len(msg), rtnl.RTM_NEWROUTE, 7)
    assert flags & rtnl.NLM_F_REPLACE and flags & rtnl.NLM_F_CREATE and flags & rtnl.NLM_F_ACK
    parser = rtnl._RouteParser(table, None)
    parser.add(kind, memoryview(msg), rtnl._HDR.size, length - rtnl._HDR.size)
    return parser.routes


def test_route_messages_roundtrip() -> None:
    routes = [
        KernelRoute(
            IPv4Network("10.65.2.0/26"), gateway=IPv4Address("192.168.49.3"), oif=5, onlink=True
        ),
        KernelRoute(IPv4Network("10.65.1.0/26"), type=RouteType.BLACKHOLE),
        KernelRoute(IPv4Network("10.65.1.2/32"), oif=9, scope=Scope.LINK, proto=3),
        KernelRoute(IPv4Network("0.0.0.0/0"), gateway=IPv4Address("192.168.49.1"), oif=2),
        KernelRoute(IPv4Network("10.9.0.0/16"), table=1000, metric=20, oif=2),
    ]
    for route in routes:
        assert roundtrip(route) == [route]
    assert roundtrip(routes[0], table=100) == []  # filtered by table


def test_add_is_exclusive_and_delete_matches_any_scope() -> None:
    route = KernelRoute(IPv4Network("10.65.2.0/26"), oif=5, onlink=True)
    add = rtnl._route_msg(RouteOp("add", route), 1)
    assert rtnl._HDR.unpack_from(add)[2] & rtnl.NLM_F_EXCL
    delete = rtnl._route_msg(RouteOp("delete", route), 2)
    _len, kind, flags, _seq, _pid = rtnl._HDR.unpack_from(delete)
    assert kind == rtnl.RTM_DELROUTE and not flags & rtnl.NLM_F_CREATE
    fields = rtnl._RTMSG.unpack_from(delete, rtnl._HDR.size)
    assert fields[5] == 80 and fields[6] == rtnl.RT_SCOPE_NOWHERE  # proto kept, any scope


def test_error_decoding_with_extended_ack() -> None:
    text = b"Nexthop has invalid gateway\0"
    echoed = rtnl._HDR.pack(36, rtnl.RTM_NEWROUTE, 0, 1, 0)
    body = struct.pack("=i", -22) + echoed + rtnl._nla(rtnl.NLMSGERR_ATTR_MSG, text)
    flags = rtnl.NLM_F_CAPPED | rtnl.NLM_F_ACK_TLVS
    error = rtnl._error_of(memoryview(body), 0, len(body), flags)
    assert error is not None and error.code == 22
    assert error.strerror == "Nexthop has invalid gateway"
    ok = struct.pack("=i", 0) + echoed
    assert rtnl._error_of(memoryview(ok), 0, len(ok), rtnl.NLM_F_CAPPED) is None


def test_workload_sysctls_are_calicos() -> None:
    assert workload_sysctls("cali1") == {
        "net/ipv4/conf/cali1/proxy_arp": "1",
        "net/ipv4/neigh/cali1/proxy_delay": "0",
        "net/ipv4/conf/cali1/forwarding": "1",
        "net/ipv4/conf/cali1/route_localnet": "1",
        "net/ipv4/conf/cali1/rp_filter": "1",
    }
    assert workload_sysctls("cali1", allow_spoofing=True)["net/ipv4/conf/cali1/rp_filter"] == "0"


def test_netns_paths() -> None:
    assert netns_path(None) is None
    assert netns_path("node1") == "/run/netns/node1"
    assert netns_path("/proc/1/ns/net") == "/proc/1/ns/net"


def test_filesystem_type_reads_mountinfo() -> None:
    assert bpffs.filesystem_type("/proc/self") == "proc"
    assert not bpffs.is_bpffs("/proc")
