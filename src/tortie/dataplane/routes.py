"""Route values: wanted by the agent (RouteSpec) and held by the kernel (KernelRoute).

Problem: the reconciler compares desired routes with dumped kernel routes thousands of times
per resync; both sides must normalise to the same form or every resync rewrites everything.

Invariants:
- A :class:`RouteSpec` names its device; a :class:`KernelRoute` carries the kernel's ifindex.
  Only the reconciler maps one to the other (it knows the links).
- ``RouteSpec.scope`` is always concrete after construction: ``link`` for a gatewayless unicast
  route (``<pod>/32 dev caliX scope link``), ``universe`` otherwise, as ``ip route`` does.
- A route's kernel identity (IPv4) is (table, dst, tos, metric); tortie writes tos 0, metric 0.

Route protocol: tortie's routes carry :data:`DEFAULT_PROTO` (80, the number Felix uses) unless
configured otherwise; that number is how a restarted agent recognises its own routes. Running
tortie next to a real Felix on one host would need a different number.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Literal

from tortie.model.naming import ROUTE_PROTOCOL

DEFAULT_PROTO = ROUTE_PROTOCOL
MAIN_TABLE = 254


class RouteType(enum.IntEnum):
    """rtm_type values tortie writes (others are kept as plain ints when dumped)."""

    UNICAST = 1
    BLACKHOLE = 6


class Scope(enum.IntEnum):
    UNIVERSE = 0
    LINK = 253
    HOST = 254


def _net(value: IPv4Network | str) -> IPv4Network:
    return value if isinstance(value, IPv4Network) else IPv4Network(value)


def _addr(value: IPv4Address | str | None) -> IPv4Address | None:
    if value is None or isinstance(value, IPv4Address):
        return value
    return IPv4Address(value)


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """One desired IPv4 route. Build with :meth:`via`, :meth:`link` or :meth:`blackhole`."""

    dst: IPv4Network
    type: RouteType = RouteType.UNICAST
    gateway: IPv4Address | None = None
    device: str | None = None
    onlink: bool = False
    scope: Scope | None = None
    # None: the owning RouteTable's protocol. Anything else must equal it (see RouteTable).
    proto: int | None = None

    def __post_init__(self) -> None:
        if self.type is RouteType.BLACKHOLE:
            if self.gateway is not None or self.device is not None or self.onlink:
                raise ValueError(f"blackhole {self.dst}: no gateway, device or onlink")
        elif self.device is None:
            # Gateway-only routes would leave the device choice to the kernel; tortie always
            # knows which device it means, and naming it is what makes comparison exact.
            raise ValueError(f"unicast {self.dst}: a device is required")
        if self.onlink and self.gateway is None:
            raise ValueError(f"{self.dst}: onlink needs a gateway")
        if self.scope is None:
            gatewayless = self.type is RouteType.UNICAST and self.gateway is None
            object.__setattr__(self, "scope", Scope.LINK if gatewayless else Scope.UNIVERSE)

    @classmethod
    def via(
        cls,
        dst: IPv4Network | str,
        gateway: IPv4Address | str,
        device: str,
        *,
        onlink: bool = False,
        proto: int | None = None,
    ) -> RouteSpec:
        """``<dst> via <gateway> dev <device> [onlink]`` (remote blocks)."""
        return cls(_net(dst), gateway=_addr(gateway), device=device, onlink=onlink, proto=proto)

    @classmethod
    def link(cls, dst: IPv4Network | str, device: str, *, proto: int | None = None) -> RouteSpec:
        """``<dst> dev <device> scope link`` (workload /32 routes)."""
        return cls(_net(dst), device=device, proto=proto)

    @classmethod
    def blackhole(cls, dst: IPv4Network | str, *, proto: int | None = None) -> RouteSpec:
        """``blackhole <dst>`` (local affine blocks)."""
        return cls(_net(dst), type=RouteType.BLACKHOLE, proto=proto)

    def __str__(self) -> str:
        parts = ["blackhole" if self.type is RouteType.BLACKHOLE else "", str(self.dst)]
        if self.gateway is not None:
            parts.append(f"via {self.gateway}")
        if self.device is not None:
            parts.append(f"dev {self.device}")
        if self.onlink:
            parts.append("onlink")
        if self.scope is Scope.LINK:
            parts.append("scope link")
        if self.proto is not None:
            parts.append(f"proto {self.proto}")
        return " ".join(p for p in parts if p)


@dataclass(frozen=True, slots=True)
class KernelRoute:
    """An IPv4 route as netlink carries it (dumped, or about to be written)."""

    dst: IPv4Network
    table: int = MAIN_TABLE
    type: int = RouteType.UNICAST
    proto: int = DEFAULT_PROTO
    scope: int = Scope.UNIVERSE
    gateway: IPv4Address | None = None
    oif: int | None = None
    onlink: bool = False
    metric: int = 0
    tos: int = 0
    # Multipath routes are dumped for completeness; tortie never writes them.
    multipath: bool = False

    @property
    def key(self) -> tuple[IPv4Network, int, int]:
        """Identity inside one table: routes with the same key replace each other."""
        return (self.dst, self.tos, self.metric)


RouteAction = Literal["add", "replace", "delete"]


@dataclass(frozen=True, slots=True)
class RouteOp:
    """One route write. ``add`` fails with EEXIST if the key is taken; ``replace`` creates or
    overwrites; ``delete`` matches dst/tos/metric and, when non-zero, proto, so a route that
    someone else replaced in the meantime is not deleted."""

    action: RouteAction
    route: KernelRoute
