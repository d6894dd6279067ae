"""The kernel monitor's decoding, without a kernel: messages as the kernel sends them go in,
compact facts come out (deduplicated links, echoes dropped, bursts coalesced, overruns and
foreign nft transactions reported)."""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from tortie.dataplane import monitor, rtnl
from tortie.dataplane.monitor import (
    AddrChange,
    KernelChanges,
    LinkChange,
    NetlinkMonitor,
    RouteChange,
    _Batch,
)
from tortie.dataplane.routes import KernelRoute, RouteOp

OUR_PORT = 4242


def msg(kind: int, body: bytes, pid: int = 0) -> bytes:
    return rtnl._HDR.pack(rtnl._HDR.size + len(body), kind, 0, 0, pid) + body


def link_msg(kind: int, index: int, name: str, flags: int, mtu: int = 1500) -> bytes:
    body = rtnl._IFINFO.pack(socket.AF_UNSPEC, 1, index, flags, 0xFFFFFFFF)
    body += rtnl._nla(rtnl.IFLA_IFNAME, name.encode() + b"\0")
    body += rtnl._nla(rtnl.IFLA_MTU, struct.pack("=I", mtu))
    return msg(kind, body)


def route_msg(route: KernelRoute, pid: int = 0, delete: bool = False) -> bytes:
    raw = bytearray(rtnl._route_msg(RouteOp("replace", route), seq=1))
    if delete:
        struct.pack_into("=H", raw, 4, rtnl.RTM_DELROUTE)
    struct.pack_into("=I", raw, 12, pid)
    return bytes(raw)


def addr_msg(kind: int, index: int, addr: IPv4Interface) -> bytes:
    body = rtnl._IFADDR.pack(socket.AF_INET, addr.network.prefixlen, 0, 0, index)
    body += rtnl._nla(rtnl.IFA_LOCAL, addr.ip.packed)
    return msg(kind, body)


UP = rtnl.IFF_UP | rtnl.IFF_LOWER_UP
ROUTE = KernelRoute(
    IPv4Network("10.65.2.0/26"), proto=80, gateway=IPv4Address("192.168.49.3"), oif=2
)


def feed(mon: NetlinkMonitor, *messages: bytes, nft: bool = False) -> KernelChanges:
    batch = _Batch()
    data = b"".join(messages)
    view = memoryview(data)
    if nft:
        mon._nft_messages(view, len(data), batch)
    else:
        mon._route_messages(view, len(data), batch)
    return batch.freeze()


@pytest.fixture
def mon() -> NetlinkMonitor:
    m = NetlinkMonitor(echo_portids=[OUR_PORT], nft_table=("inet", "tortie"))
    m._links = {2: ("eth0", True, True, 1500)}
    return m


def test_links_are_reported_only_when_something_that_matters_changed(
    mon: NetlinkMonitor,
) -> None:
    same = link_msg(rtnl.RTM_NEWLINK, 2, "eth0", UP)
    assert not feed(mon, same)  # e.g. a peer's flags: nothing the agent acts on
    down = feed(mon, link_msg(rtnl.RTM_NEWLINK, 2, "eth0", 0))
    assert down.links == (LinkChange(2, "eth0", present=True, up=False, mtu=1500),)
    mtu = feed(mon, link_msg(rtnl.RTM_NEWLINK, 2, "eth0", 0, mtu=9000))
    assert mtu.links[0].mtu == 9000
    gone = feed(mon, link_msg(rtnl.RTM_DELLINK, 2, "eth0", 0))
    assert gone.links == (LinkChange(2, "eth0", present=False),)
    assert 2 not in mon._links
    new = feed(mon, link_msg(rtnl.RTM_NEWLINK, 7, "tunl0", UP))
    assert new.links == (LinkChange(7, "tunl0", True, True, True, 1500),)


def test_a_rename_carries_the_old_name(mon: NetlinkMonitor) -> None:
    out = feed(
        mon,
        link_msg(rtnl.RTM_NEWLINK, 2, "eth9", UP),
        link_msg(rtnl.RTM_NEWLINK, 2, "eth9", rtnl.IFF_UP),
    )
    assert out.links == (LinkChange(2, "eth9", True, True, False, 1500, old_name="eth0"),)


def test_route_changes_drop_our_echoes_and_other_tables(mon: NetlinkMonitor) -> None:
    other_table = KernelRoute(ROUTE.dst, table=255, proto=2, oif=2)
    out = feed(
        mon,
        route_msg(ROUTE, pid=OUR_PORT),  # our own write, echoed
        route_msg(other_table),
        route_msg(ROUTE, pid=99, delete=True),  # someone else's delete
    )
    assert out.routes == (RouteChange(ROUTE, deleted=True),)


def test_a_burst_keeps_the_last_state_per_route(mon: NetlinkMonitor) -> None:
    out = feed(mon, route_msg(ROUTE, delete=True), route_msg(ROUTE), route_msg(ROUTE, delete=True))
    assert out.routes == (RouteChange(ROUTE, deleted=True),)


def test_address_changes_name_their_link(mon: NetlinkMonitor) -> None:
    addr = IPv4Interface("10.65.0.1/32")
    out = feed(mon, addr_msg(rtnl.RTM_DELADDR, 2, addr))
    assert out.addrs == (AddrChange(2, "eth0", addr, deleted=True),)


def nft_msg(msg_type: int, family: int, attrs: dict[int, bytes]) -> bytes:
    body = monitor._NFGENMSG.pack(family, 0, 0)
    body += b"".join(rtnl._nla(k, v) for k, v in attrs.items())
    return msg((monitor.NFNL_SUBSYS_NFTABLES << 8) | msg_type, body)


def newgen(tid: int) -> bytes:
    return nft_msg(monitor.NFT_MSG_NEWGEN, 0, {monitor.NFTA_GEN_PROC_PID: tid.to_bytes(4, "big")})


DELSETELEM = 14
INET = monitor.NFPROTO["inet"]


def test_nft_reports_other_processes_changes_to_our_table_only(mon: NetlinkMonitor) -> None:
    ours = {1: b"tortie\0", 2: b"workload_src\0"}
    someone = os.getpid() + 1_000_000  # no such thread here
    assert feed(mon, nft_msg(DELSETELEM, INET, ours), newgen(someone), nft=True).firewall
    # Our own transaction (this thread committed it): an echo.
    assert not feed(mon, nft_msg(DELSETELEM, INET, ours), newgen(os.getpid()), nft=True)
    # Another table, or our table's name in another family: not ours.
    other = {1: b"kube-proxy\0"}
    assert not feed(mon, nft_msg(DELSETELEM, INET, other), newgen(someone), nft=True)
    ip = monitor.NFPROTO["ip"]
    assert not feed(mon, nft_msg(DELSETELEM, ip, ours), newgen(someone), nft=True)


class Overrun:
    """A socket whose receive queue overflowed once, then holds one message."""

    def __init__(self, data: bytes) -> None:
        self.results: list[BaseException | bytes] = [OSError(errno.ENOBUFS, "overrun"), data]

    def recv_into(self, buf: bytearray, _n: int, _flags: int) -> int:
        if not self.results:
            raise BlockingIOError
        item = self.results.pop(0)
        if isinstance(item, BaseException):
            raise item
        buf[: len(item)] = item
        return len(item)


def test_an_overrun_is_reported_as_lost_events(mon: NetlinkMonitor) -> None:
    batch = _Batch()
    mon._drain(Overrun(route_msg(ROUTE, pid=99)), True, batch)  # type: ignore[arg-type]
    out = batch.freeze()
    assert out.lost and "overran" in out.lost
    assert out.routes == (RouteChange(ROUTE),)  # what came after the overrun still counts
    assert mon.overruns == 1


def test_truncated_messages_are_ignored(mon: NetlinkMonitor) -> None:
    whole = route_msg(ROUTE)
    assert not feed(mon, whole[:-4])


def test_unknown_nft_family_is_refused() -> None:
    with pytest.raises(ValueError, match="nftables family"):
        NetlinkMonitor(nft_table=("inet6", "tortie"))


class FlakySockets:
    """Stands in for the kernel: opening fails once, the first watch dies with a socket error,
    the second runs until stopped."""

    def __init__(self, mon: NetlinkMonitor) -> None:
        self.mon = mon
        self.opens = 0
        self.watches = 0

    def open(self) -> list[socket.socket]:
        self.opens += 1
        if self.opens == 1:
            raise OSError(errno.EMFILE, "too many open files")
        a, b = socket.socketpair()
        b.close()
        return [a]

    def watch(self, socks: list[socket.socket], sink: object) -> None:
        self.watches += 1
        if self.watches == 1:
            raise OSError(errno.EBADF, "the socket broke")
        self.mon._stopping.wait()


def test_open_failures_and_socket_errors_retry_with_backoff_and_report_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(monitor, "BACKOFF_MIN", 0.01)
    mon = NetlinkMonitor()
    flaky = FlakySockets(mon)
    monkeypatch.setattr(mon, "_open", flaky.open)
    monkeypatch.setattr(mon, "_watch", flaky.watch)
    got: list[KernelChanges] = []
    mon.start(got.append)
    deadline = time.monotonic() + 5
    while flaky.watches < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    mon.stop()
    assert (flaky.opens, flaky.watches) == (3, 2)
    # The first socket's events are not lost (nothing came before it); the reopened one's are.
    assert [c.lost for c in got] == ["the kernel monitor's socket was reopened"]
    assert mon.reopens == 1
