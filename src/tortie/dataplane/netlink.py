"""The netlink seam: everything the dataplane asks of the kernel's routing and link tables.

Problem: the reconciler's logic (mark-and-sweep, retries, deferral) must be testable without
root and without a kernel, and the kernel side must be swappable (pyroute2 + raw rtnetlink in
:mod:`tortie.dataplane.kernel_netlink`; an in-memory kernel in
:mod:`tortie.dataplane.fake_netlink`).

Invariants: implementations act on exactly one network namespace, chosen when they are built.
Errors are :class:`NetlinkError` (a :class:`~tortie.dataplane.errors.DataplaneError`) carrying
the kernel's errno (ENOENT, EEXIST, ENODEV, ...), so callers branch on errno, not on message
text; a socket-level failure is one too, never a bare OSError. Route writes go through
:meth:`Netlink.route_batch`, which reports one result per op and never stops at the first
failure (one bad route must not hold back ten thousand good ones).

Several namespaces: work that spans namespaces (a pod's wiring: the node's and the pod's) goes
through :class:`Namespaces`, which opens a namespace by path (refusing what is not a network
namespace), tells namespaces apart by identity, and gives a :class:`Netlink` for each. A veth's
two ends are tied by ifindex and netns id (:attr:`Link.peer_index`, :attr:`Link.peer_netnsid`,
:meth:`Netlink.netnsid`), the facts docs/cni-namespaces.md relies on. Sysctls are per namespace
too, so they are here (``/proc/sys`` read inside the namespace, :mod:`tortie.dataplane.netns`).
"""

from __future__ import annotations

import errno as errno_mod
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from typing import Protocol

from tortie.dataplane.errors import DataplaneError, retryable_errno
from tortie.dataplane.netns import NetnsId, NetnsRef
from tortie.dataplane.routes import KernelRoute, RouteOp


class NetlinkError(DataplaneError):
    """A kernel refusal: ``errno`` is the kernel's code, ``strerror`` its (extended) message.

    A :class:`~tortie.dataplane.errors.DataplaneError` (so an ``OSError`` too); ``str()`` reads
    ``[Errno N] message`` as an OSError's does."""

    def __init__(self, code: int, message: str | None = None) -> None:
        OSError.__init__(self, code, message or os.strerror(code))
        self.retryable = retryable_errno(code)

    @property
    def code(self) -> int:
        return self.errno or 0


# Errors meaning "the device is not there (yet) or not up": routes through it wait.
DEVICE_NOT_READY = frozenset({errno_mod.ENODEV, errno_mod.ENETDOWN})


@dataclass(frozen=True, slots=True)
class Link:
    """A network interface as the kernel reports it."""

    index: int
    name: str
    kind: str | None  # IFLA_INFO_KIND: "veth", "ipip", "bridge", ...; None for physical/lo
    mtu: int
    up: bool  # administratively up (IFF_UP)
    noarp: bool  # IFF_NOARP ("arp off")
    mac: str | None = None  # "aa:bb:cc:dd:ee:ff"
    carrier: bool = False  # IFF_LOWER_UP
    rx_packets: int = 0
    tx_packets: int = 0
    rx_dropped: int = 0
    tx_dropped: int = 0
    # IFLA_LINK: a veth's peer's ifindex (in the peer's namespace), or a tunnel's lower device.
    peer_index: int | None = None
    # IFLA_LINK_NETNSID: the id this namespace has for the peer's namespace; None when the peer
    # is in this namespace (or the kernel gave none). Ids are per namespace (Netlink.netnsid).
    peer_netnsid: int | None = None


@dataclass(frozen=True, slots=True)
class VXLANAttrs:
    """The settings of a vxlan device that cannot be changed in place (recreate to change)."""

    vni: int
    port: int  # UDP destination port
    local: IPv4Address | None  # source address of the outer header
    link: int | None  # ifindex of the underlying device (``dev``)
    learning: bool


@dataclass(frozen=True, slots=True)
class FdbEntry:
    """A unicast forwarding entry of a vxlan device: frames to ``mac`` go to remote ``dst``."""

    mac: str  # "aa:bb:cc:dd:ee:ff", lower case
    dst: IPv4Address


@dataclass(frozen=True, slots=True)
class Neighbour:
    """An IPv4 neighbour (ARP) entry of one device."""

    ip: IPv4Address
    mac: str | None  # None while unresolved (INCOMPLETE/FAILED)
    permanent: bool  # NUD_PERMANENT: set by someone, never aged out or probed


class Netlink(Protocol):
    """Kernel routes, links and addresses of one network namespace."""

    # Routes.
    def dump_routes(self, table: int | None = None, proto: int | None = None) -> list[KernelRoute]:
        """IPv4 routes of ``table`` (all tables if None), only ``proto`` if given."""
        ...

    def route_batch(self, ops: Sequence[RouteOp]) -> list[NetlinkError | None]:
        """Apply every op; one result per op, in order (None = done)."""
        ...

    def add_route(self, route: KernelRoute) -> None: ...

    def replace_route(self, route: KernelRoute) -> None: ...

    def delete_route(self, route: KernelRoute) -> None: ...

    # Links.
    def list_links(self) -> list[Link]: ...

    def get_link(self, name: str) -> Link | None: ...

    def get_link_by_index(self, index: int) -> Link | None:
        """The interface ``index`` of this namespace (None: there is none)."""
        ...

    def create_veth(
        self,
        name: str,
        peer: str,
        *,
        peer_netns: NetnsRef = None,
        mtu: int | None = None,
        mac: str | None = None,
    ) -> None:
        """A veth pair; ``peer`` is created straight into ``peer_netns`` when given (a path,
        e.g. of an open namespace: /proc/self/fd/N); ``mac`` is ``name``'s."""
        ...

    def create_ipip(self, name: str) -> None:
        """An ipip tunnel device (EOPNOTSUPP where the kernel has no ipip module)."""
        ...

    def delete_link(self, name: str) -> None: ...

    def delete_link_index(self, index: int) -> None:
        """Delete the interface ``index`` (ENODEV if it is gone): what was judged, not a name."""
        ...

    def route_get(self, dst: IPv4Address) -> KernelRoute | None:
        """The route the kernel picks for ``dst`` (``ip route get``; None: unreachable)."""
        ...

    def netnsid(self, netns_fd: int) -> int | None:
        """The id this namespace has for the namespace open as ``netns_fd`` (None: none yet,
        so no interface here has a peer there). Compare with :attr:`Link.peer_netnsid`."""
        ...

    def set_link(
        self,
        name: str,
        *,
        up: bool | None = None,
        mtu: int | None = None,
        arp: bool | None = None,
    ) -> None:
        """Change only the given attributes."""
        ...

    # VXLAN devices, their forwarding (FDB) and neighbour entries.
    def create_vxlan(
        self,
        name: str,
        *,
        vni: int,
        port: int,
        local: IPv4Address,
        uplink: str,
        learning: bool = False,
        mtu: int | None = None,
        mac: str | None = None,
    ) -> None:
        """A vxlan device sending from ``local`` over ``uplink`` (created down)."""
        ...

    def get_vxlan(self, name: str) -> VXLANAttrs | None:
        """The vxlan settings of ``name``; None if it does not exist or is not vxlan."""
        ...

    def set_link_mac(self, name: str, mac: str) -> None: ...

    def list_fdb(self, name: str) -> list[FdbEntry]:
        """FDB entries of ``name`` that have a remote destination (one per MAC and dst)."""
        ...

    def replace_fdb(self, name: str, mac: str, dst: IPv4Address) -> None:
        """Create, or point at ``dst``, the permanent entry for ``mac`` (``bridge fdb replace``)."""
        ...

    def del_fdb(self, name: str, mac: str, dst: IPv4Address) -> None:
        """Delete ``mac``'s remote ``dst`` (ENOENT if there is none)."""
        ...

    def list_neighbours(self, name: str) -> list[Neighbour]:
        """IPv4 neighbour entries of ``name``."""
        ...

    def replace_neighbour(self, name: str, ip: IPv4Address, mac: str) -> None:
        """A permanent entry ``ip`` -> ``mac`` (``ip neigh replace ... nud permanent``)."""
        ...

    def del_neighbour(self, name: str, ip: IPv4Address) -> None:
        """Delete the entry for ``ip`` (ENOENT if there is none)."""
        ...

    # Addresses (IPv4).
    def list_addrs(self, name: str) -> list[IPv4Interface]: ...

    def add_addr(self, name: str, addr: IPv4Interface) -> None: ...

    def del_addr(self, name: str, addr: IPv4Interface) -> None: ...

    # Sysctls of this namespace, keys in path form ("net/ipv4/conf/cali1/proxy_arp").
    def read_sysctls(self, keys: Sequence[str]) -> dict[str, str]:
        """Current values; FileNotFoundError for a key that does not exist."""
        ...

    def ensure_sysctls(self, values: Mapping[str, str], *, missing_ok: bool = False) -> list[str]:
        """Write each key whose value differs; return the keys written
        (:func:`tortie.dataplane.netns.ensure_sysctls`)."""
        ...

    def close(self) -> None: ...


class Namespaces(Protocol):
    """The machine's network namespaces, for work that spans several (a pod's wiring)."""

    def open(self, ns: NetnsRef) -> tuple[int, NetnsId]:
        """Open ``ns`` (None: the calling thread's own): its fd (the caller closes it) and
        identity. FileNotFoundError if nothing is there,
        :class:`~tortie.dataplane.netns.NotANetnsError` if it is no network namespace."""
        ...

    def identity(self, ns: NetnsRef) -> NetnsId:
        """Which namespace ``ns`` is (None: the calling thread's); OSError if it is gone."""
        ...

    def netlink(self, ns: NetnsRef) -> Netlink:
        """A :class:`Netlink` acting in ``ns`` (None: the caller's); the caller closes it.
        OSError if the namespace cannot be entered."""
        ...


class SingleRouteOps:
    """add/replace/delete in terms of :meth:`Netlink.route_batch` (mixin for implementations)."""

    def route_batch(self, ops: Sequence[RouteOp]) -> list[NetlinkError | None]:
        raise NotImplementedError

    def _one(self, op: RouteOp) -> None:
        (result,) = self.route_batch([op])
        if result is not None:
            raise result

    def add_route(self, route: KernelRoute) -> None:
        self._one(RouteOp("add", route))

    def replace_route(self, route: KernelRoute) -> None:
        self._one(RouteOp("replace", route))

    def delete_route(self, route: KernelRoute) -> None:
        self._one(RouteOp("delete", route))
