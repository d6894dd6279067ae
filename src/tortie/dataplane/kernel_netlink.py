"""The real :class:`~tortie.dataplane.netlink.Netlink`: one network namespace of this kernel.

Problem: routes are hot (10,000 per resync), links and addresses are cold but on the CNI
server's per-pod path, in namespaces that are not the caller's. So routes, reads, links,
addresses and netns ids use the stdlib :class:`~tortie.dataplane.rtnl.RtnlSocket` (a socket
opened inside the namespace works there from any thread, :mod:`tortie.dataplane.rtnl_link`);
vxlan devices, FDB and neighbour entries (per node joining or leaving) use pyroute2, imported
on first use only (its import alone costs about 0.2 s). :class:`KernelNamespaces` is the
:class:`~tortie.dataplane.netlink.Namespaces` of this machine.

Invariants: both sockets live in the namespace given at construction and nowhere else.
pyroute2 is always told ``flags=0`` so a mistyped namespace is an error, not a new empty
namespace (its default is to create missing ones).

Hazards: pyroute2 0.9 opens one socket per calling thread (forking a helper to enter the
namespace); the agent uses it from its single reconciler loop only. The raw socket has no such
limit, but one instance serves one thread at a time (replies are matched by sequence number
on one receive buffer).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from ipaddress import IPv4Address, IPv4Interface
from typing import Any, TypeVar

from tortie.dataplane import rtnl_link
from tortie.dataplane.netlink import (
    FdbEntry,
    Link,
    Neighbour,
    NetlinkError,
    SingleRouteOps,
    VXLANAttrs,
)
from tortie.dataplane.netns import (
    OWN_NETNS,
    NetnsId,
    NetnsRef,
    ensure_sysctls,
    netns_identity,
    netns_path,
    open_netns,
    read_sysctls,
)
from tortie.dataplane.routes import KernelRoute, RouteOp
from tortie.dataplane.rtnl import RtnlSocket

T = TypeVar("T")

# linux/neighbour.h: entry states and flags.
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NUD_UNRESOLVED = 0x01 | 0x20  # INCOMPLETE | FAILED: no usable lladdr
NTF_SELF = 0x02
AF_BRIDGE = 7


@contextlib.contextmanager
def _socket_errors(what: str) -> Iterator[None]:
    """A socket-level failure (ENOBUFS on a dump, a closed socket) is a NetlinkError too: the
    seam's callers see one error type (:mod:`tortie.dataplane.errors`)."""
    try:
        yield
    except NetlinkError:
        raise
    except OSError as exc:
        raise NetlinkError(exc.errno or errno.EIO, f"{what}: {exc.strerror or exc}") from exc


class Pyroute2Netlink(SingleRouteOps):
    """Netlink for namespace ``netns`` (a name under /run/netns, a path, or None for ours)."""

    def __init__(self, netns: NetnsRef = None) -> None:
        self.netns = netns
        self._rtnl = RtnlSocket(netns)
        self._ipr: Any = None

    @property
    def route_writes(self) -> int:
        """Route write messages sent so far (benchmarks and tests count them)."""
        return self._rtnl.writes

    @property
    def route_portid(self) -> int:
        """The netlink port id our route writes come from (the kernel monitor drops their
        echoes by it)."""
        return self._rtnl.portid

    def close(self) -> None:
        self._rtnl.close()
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def __enter__(self) -> Pyroute2Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- routes and reads: raw rtnetlink ------------------------------------------------------

    def dump_routes(self, table: int | None = None, proto: int | None = None) -> list[KernelRoute]:
        with _socket_errors("dump routes"):
            return self._rtnl.dump_routes(table, proto)

    def route_batch(self, ops: Sequence[RouteOp]) -> list[NetlinkError | None]:
        with _socket_errors("write routes"):
            return self._rtnl.route_batch(ops)

    def list_links(self) -> list[Link]:
        with _socket_errors("dump links"):
            return self._rtnl.dump_links()

    def get_link(self, name: str) -> Link | None:
        with _socket_errors(f"read link {name}"):
            return self._rtnl.get_link(name)

    def list_addrs(self, name: str) -> list[IPv4Interface]:
        index = self._index(name)
        with _socket_errors(f"dump addresses of {name}"):
            return [addr for _index, addr in self._rtnl.dump_addrs(index)]

    def get_link_by_index(self, index: int) -> Link | None:
        return rtnl_link.get_link(self._rtnl, index)

    def route_get(self, dst: IPv4Address) -> KernelRoute | None:
        return rtnl_link.route_get(self._rtnl, dst)

    def netnsid(self, netns_fd: int) -> int | None:
        return rtnl_link.netnsid(self._rtnl, netns_fd)

    # -- link and address changes: raw rtnetlink ----------------------------------------------

    def create_veth(
        self,
        name: str,
        peer: str,
        *,
        peer_netns: NetnsRef = None,
        mtu: int | None = None,
        mac: str | None = None,
    ) -> None:
        peer_path = netns_path(peer_netns)
        fd = None if peer_path is None else os.open(peer_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            rtnl_link.create_veth(self._rtnl, name, peer, peer_netns_fd=fd, mtu=mtu, mac=mac)
        finally:
            if fd is not None:
                os.close(fd)

    def delete_link(self, name: str) -> None:
        rtnl_link.delete_link(self._rtnl, self._index(name))

    def delete_link_index(self, index: int) -> None:
        rtnl_link.delete_link(self._rtnl, index)

    def set_link(
        self,
        name: str,
        *,
        up: bool | None = None,
        mtu: int | None = None,
        arp: bool | None = None,
    ) -> None:
        rtnl_link.set_link(self._rtnl, self._index(name), up=up, mtu=mtu, arp=arp)

    def add_addr(self, name: str, addr: IPv4Interface) -> None:
        rtnl_link.change_addr(self._rtnl, self._index(name), addr, add=True)

    def del_addr(self, name: str, addr: IPv4Interface) -> None:
        rtnl_link.change_addr(self._rtnl, self._index(name), addr, add=False)

    # -- sysctls: /proc/sys inside the namespace ------------------------------------------------

    def read_sysctls(self, keys: Sequence[str]) -> dict[str, str]:
        return read_sysctls(list(keys), self.netns)

    def ensure_sysctls(self, values: Mapping[str, str], *, missing_ok: bool = False) -> list[str]:
        return ensure_sysctls(values, self.netns, missing_ok=missing_ok)

    # -- ipip devices: pyroute2 -----------------------------------------------------------------

    def _pyroute2(self) -> Any:  # pyroute2.IPRoute (untyped)
        if self._ipr is None:
            # Lazy: importing pyroute2 alone costs about 0.2 s.
            from pyroute2 import IPRoute  # type: ignore[import-untyped]

            path = netns_path(self.netns)
            self._ipr = IPRoute(netns=path, flags=0) if path is not None else IPRoute()
        return self._ipr

    def _call(self, fn: Callable[[Any], T]) -> T:
        from pyroute2.netlink.exceptions import (  # type: ignore[import-untyped]
            NetlinkError as Pyroute2Error,
        )

        with _socket_errors("pyroute2"):
            try:
                return fn(self._pyroute2())
            except Pyroute2Error as exc:
                raise NetlinkError(exc.code, str(exc)) from exc

    def _index(self, name: str) -> int:
        link = self.get_link(name)
        if link is None:
            raise NetlinkError(errno.ENODEV, f"no such device: {name}")
        return link.index

    def create_ipip(self, name: str) -> None:
        self._call(lambda ipr: ipr.link("add", ifname=name, kind="ipip"))

    # -- vxlan, fdb, neighbours: pyroute2 (cold path: per node joining or leaving) ------------

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
        spec: dict[str, Any] = {
            "ifname": name,
            "kind": "vxlan",
            "vxlan_id": vni,
            "vxlan_port": port,
            "vxlan_local": str(local),
            "vxlan_link": self._index(uplink),
            "vxlan_learning": int(learning),
        }
        if mtu is not None:
            spec["mtu"] = mtu
        if mac is not None:
            spec["address"] = mac
        self._call(lambda ipr: ipr.link("add", **spec))

    def get_vxlan(self, name: str) -> VXLANAttrs | None:
        link = self.get_link(name)
        if link is None or link.kind != "vxlan":
            return None
        index = link.index
        (msg,) = self._call(lambda ipr: ipr.get_links(index))
        info = msg.get_attr("IFLA_LINKINFO")
        data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
        if data is None:
            return None
        local = data.get_attr("IFLA_VXLAN_LOCAL")
        return VXLANAttrs(
            vni=int(data.get_attr("IFLA_VXLAN_ID") or 0),
            port=int(data.get_attr("IFLA_VXLAN_PORT") or 0),
            local=IPv4Address(local) if local else None,
            link=data.get_attr("IFLA_VXLAN_LINK"),
            learning=bool(data.get_attr("IFLA_VXLAN_LEARNING")),
        )

    def set_link_mac(self, name: str, mac: str) -> None:
        index = self._index(name)
        self._call(lambda ipr: ipr.link("set", index=index, address=mac))

    def list_fdb(self, name: str) -> list[FdbEntry]:
        index = self._index(name)
        # The dump covers every bridge port of the namespace: filter on our device here.
        msgs = self._call(lambda ipr: list(ipr.fdb("dump")))
        out = []
        for msg in msgs:
            dst = msg.get_attr("NDA_DST")
            mac = msg.get_attr("NDA_LLADDR")
            if msg["ifindex"] == index and dst and mac and ":" not in dst:
                out.append(FdbEntry(mac=mac.lower(), dst=IPv4Address(dst)))
        return out

    def _fdb(self, command: str, name: str, mac: str, dst: IPv4Address) -> None:
        index = self._index(name)
        # state and flags spelled out: pyroute2 only defaults them (permanent, self) for
        # add/append/del, and a "replace" without NTF_SELF goes to a bridge master we do not
        # have (EOPNOTSUPP).
        self._call(
            lambda ipr: ipr.fdb(
                command,
                ifindex=index,
                lladdr=mac,
                dst=str(dst),
                state=NUD_PERMANENT | NUD_NOARP,
                flags=NTF_SELF,
            )
        )

    def replace_fdb(self, name: str, mac: str, dst: IPv4Address) -> None:
        self._fdb("replace", name, mac, dst)

    def del_fdb(self, name: str, mac: str, dst: IPv4Address) -> None:
        self._fdb("del", name, mac, dst)

    def list_neighbours(self, name: str) -> list[Neighbour]:
        index = self._index(name)
        msgs = self._call(lambda ipr: list(ipr.neigh("dump", family=socket.AF_INET)))
        out = []
        for msg in msgs:
            dst = msg.get_attr("NDA_DST")
            if msg["ifindex"] != index or msg["family"] != socket.AF_INET or not dst:
                continue
            mac = msg.get_attr("NDA_LLADDR")
            state = msg["state"]
            out.append(
                Neighbour(
                    ip=IPv4Address(dst),
                    mac=mac.lower() if mac and not state & NUD_UNRESOLVED else None,
                    permanent=bool(state & NUD_PERMANENT),
                )
            )
        return out

    def replace_neighbour(self, name: str, ip: IPv4Address, mac: str) -> None:
        index = self._index(name)
        self._call(
            lambda ipr: ipr.neigh(
                "replace", ifindex=index, dst=str(ip), lladdr=mac, state=NUD_PERMANENT
            )
        )

    def del_neighbour(self, name: str, ip: IPv4Address) -> None:
        index = self._index(name)
        self._call(lambda ipr: ipr.neigh("del", ifindex=index, dst=str(ip)))


class KernelNamespaces:
    """This machine's network namespaces (:class:`~tortie.dataplane.netlink.Namespaces`)."""

    def open(self, ns: NetnsRef) -> tuple[int, NetnsId]:
        return open_netns(netns_path(ns) or OWN_NETNS)

    def identity(self, ns: NetnsRef) -> NetnsId:
        return netns_identity(ns)

    def netlink(self, ns: NetnsRef) -> Pyroute2Netlink:
        return Pyroute2Netlink(ns)
