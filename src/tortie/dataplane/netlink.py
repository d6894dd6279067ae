"""The netlink seam: everything the dataplane asks of the kernel's routing and link tables.

Problem: the reconciler's logic (mark-and-sweep, retries, deferral) must be testable without
root and without a kernel, and the kernel side must be swappable (pyroute2 + raw rtnetlink in
:mod:`tortie.dataplane.kernel_netlink`; an in-memory kernel in
:mod:`tortie.dataplane.fake_netlink`).

Invariants: implementations act on exactly one network namespace, chosen when they are built.
Errors are :class:`NetlinkError` carrying the kernel's errno (ENOENT, EEXIST, ENODEV, ...), so
callers branch on errno, not on message text. Route writes go through :meth:`Netlink.route_batch`,
which reports one result per op and never stops at the first failure (one bad route must not
hold back ten thousand good ones).
"""

from __future__ import annotations

import errno as errno_mod
import os
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from typing import Protocol

from tortie.dataplane.netns import NetnsRef
from tortie.dataplane.routes import KernelRoute, RouteOp


class NetlinkError(OSError):
    """A kernel refusal: ``errno`` is the kernel's code, ``strerror`` its (extended) message."""

    def __init__(self, code: int, message: str | None = None) -> None:
        super().__init__(code, message or os.strerror(code))

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

    def create_veth(
        self, name: str, peer: str, *, peer_netns: NetnsRef = None, mtu: int | None = None
    ) -> None:
        """A veth pair; ``peer`` is created straight into ``peer_netns`` when given."""
        ...

    def create_ipip(self, name: str) -> None:
        """An ipip tunnel device (EOPNOTSUPP where the kernel has no ipip module)."""
        ...

    def delete_link(self, name: str) -> None: ...

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

    def close(self) -> None: ...


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
