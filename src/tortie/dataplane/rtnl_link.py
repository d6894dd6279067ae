"""rtnetlink messages for links, addresses, netns ids and route lookups (stdlib, for RtnlSocket).

Problem: the CNI server wires a pod in two namespaces at once (the node's and the pod's) from
many request threads. pyroute2 enters another namespace by forking a helper process per socket
and binds its sockets to the calling thread, which costs milliseconds per pod and leaks a
socket per thread; a plain netlink socket opened inside a namespace
(:class:`~tortie.dataplane.rtnl.RtnlSocket`) keeps working there from any thread. So the few
messages pod wiring needs are built here, as iproute2 builds them, and sent with
:meth:`RtnlSocket.request`.

Invariants: each function does one acknowledged request; a refusal is a
:class:`~tortie.dataplane.netlink.NetlinkError` carrying the kernel's errno. Nothing here
looks up names: callers pass ifindexes, so a function never acts on an interface other than
the one the caller judged (a name can be taken over between a lookup and a write, an ifindex
is never reused while the interface lives).

Hazards: attribute layouts are the kernel's uapi (linux/if_link.h, linux/veth.h,
linux/net_namespace.h, linux/if_addr.h). A veth peer's attributes follow its own
``ifinfomsg`` inside VETH_INFO_PEER; IFLA_NET_NS_FD there moves only the peer.
"""

from __future__ import annotations

import errno
import socket
import struct
from ipaddress import IPv4Address, IPv4Interface

from tortie.dataplane.netlink import Link, NetlinkError
from tortie.dataplane.routes import KernelRoute
from tortie.dataplane.rtnl import (
    _IFADDR,
    _IFINFO,
    _RTMSG,
    _U32,
    IFF_NOARP,
    IFF_UP,
    IFLA_ADDRESS,
    IFLA_IFNAME,
    IFLA_INFO_KIND,
    IFLA_LINKINFO,
    IFLA_MTU,
    NLM_F_CREATE,
    NLM_F_EXCL,
    RTA_DST,
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_GETLINK,
    RTM_GETROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    RtnlSocket,
    _nla,
    decode_link,
    decode_route,
)

IFLA_INFO_DATA = 2
IFLA_NET_NS_FD = 28
VETH_INFO_PEER = 1
IFA_ADDRESS = 1
IFA_LOCAL = 2
RTM_NEWNSID = 88
RTM_GETNSID = 90
NETNSA_NSID = 1
NETNSA_FD = 3
_RTGENMSG = struct.Struct("=Bxxx")  # rtgenmsg, padded to 4 bytes


def _mac(text: str) -> bytes:
    return bytes(int(part, 16) for part in text.split(":"))


def _name(text: str) -> bytes:
    return text.encode() + b"\0"


def create_veth(
    sock: RtnlSocket,
    name: str,
    peer: str,
    *,
    peer_netns_fd: int | None = None,
    mtu: int | None = None,
    mac: str | None = None,
) -> None:
    """``ip link add NAME [address MAC] [mtu MTU] type veth peer name PEER [netns FD]``:
    both ends at once, the peer straight into the namespace open as ``peer_netns_fd``."""
    peer_attrs = _nla(IFLA_IFNAME, _name(peer))
    attrs = _nla(IFLA_IFNAME, _name(name))
    if mtu is not None:
        peer_attrs += _nla(IFLA_MTU, _U32.pack(mtu))
        attrs += _nla(IFLA_MTU, _U32.pack(mtu))
    if peer_netns_fd is not None:
        peer_attrs += _nla(IFLA_NET_NS_FD, _U32.pack(peer_netns_fd))
    if mac is not None:
        attrs += _nla(IFLA_ADDRESS, _mac(mac))
    peer_info = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + peer_attrs
    info = _nla(IFLA_INFO_KIND, b"veth") + _nla(IFLA_INFO_DATA, _nla(VETH_INFO_PEER, peer_info))
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attrs + _nla(IFLA_LINKINFO, info)
    sock.request(RTM_NEWLINK, body, NLM_F_CREATE | NLM_F_EXCL)


def set_link(
    sock: RtnlSocket,
    index: int,
    *,
    up: bool | None = None,
    mtu: int | None = None,
    arp: bool | None = None,
) -> None:
    """``ip link set`` for the interface ``index``: only the given attributes change."""
    flags = change = 0
    if up is not None:
        change |= IFF_UP
        flags |= IFF_UP if up else 0
    if arp is not None:
        change |= IFF_NOARP
        flags |= 0 if arp else IFF_NOARP
    attrs = _nla(IFLA_MTU, _U32.pack(mtu)) if mtu is not None else b""
    if not change and not attrs:
        return
    sock.request(RTM_NEWLINK, _IFINFO.pack(socket.AF_UNSPEC, 0, index, flags, change) + attrs)


def delete_link(sock: RtnlSocket, index: int) -> None:
    """Delete the interface ``index`` (a veth takes its peer, and routes through either, along)."""
    sock.request(RTM_DELLINK, _IFINFO.pack(socket.AF_UNSPEC, 0, index, 0, 0))


def get_link(sock: RtnlSocket, index: int) -> Link | None:
    """The interface ``index`` (None: no such interface in this namespace)."""
    try:
        answers = sock.request(RTM_GETLINK, _IFINFO.pack(socket.AF_UNSPEC, 0, index, 0, 0))
    except NetlinkError as exc:
        if exc.code in (errno.ENODEV, errno.EINVAL):
            return None
        raise
    for mtype, body in answers:
        if mtype == RTM_NEWLINK:
            return decode_link(memoryview(body), 0, len(body))[0]
    return None


def change_addr(sock: RtnlSocket, index: int, addr: IPv4Interface, *, add: bool) -> None:
    """``ip addr add|del ADDR dev INDEX`` (local and peer address the same, as iproute2)."""
    body = _IFADDR.pack(socket.AF_INET, addr.network.prefixlen, 0, 0, index)
    body += _nla(IFA_LOCAL, addr.ip.packed) + _nla(IFA_ADDRESS, addr.ip.packed)
    if add:
        sock.request(RTM_NEWADDR, body, NLM_F_CREATE | NLM_F_EXCL)
    else:
        sock.request(RTM_DELADDR, body)


def netnsid(sock: RtnlSocket, netns_fd: int) -> int | None:
    """The id this namespace has for the namespace open as ``netns_fd`` (``ip netns
    list-id``); None if it has none (then no interface here has a peer there)."""
    body = _RTGENMSG.pack(socket.AF_UNSPEC) + _nla(NETNSA_FD, _U32.pack(netns_fd))
    for mtype, answer in sock.request(RTM_GETNSID, body):
        if mtype != RTM_NEWNSID:
            continue
        off = _RTGENMSG.size
        while off + 4 <= len(answer):
            length, kind = struct.unpack_from("=HH", answer, off)
            if length < 4:
                break
            if kind & 0x3FFF == NETNSA_NSID and length >= 8:
                (nsid,) = struct.unpack_from("=i", answer, off + 4)
                return nsid if nsid >= 0 else None
            off += (length + 3) & ~3
    return None


def route_get(sock: RtnlSocket, dst: IPv4Address) -> KernelRoute | None:
    """The route the kernel would use for ``dst`` (``ip route get``); None if unreachable."""
    body = _RTMSG.pack(socket.AF_INET, 32, 0, 0, 0, 0, 0, 0, 0) + _nla(RTA_DST, dst.packed)
    try:
        answers = sock.request(RTM_GETROUTE, body)
    except NetlinkError as exc:
        if exc.code in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EINVAL, errno.ESRCH):
            return None
        raise
    for mtype, answer in answers:
        if mtype == RTM_NEWROUTE:
            return decode_route(memoryview(answer), 0, len(answer))
    return None
