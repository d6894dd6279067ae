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
from ipaddress import IPv4Interface
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
