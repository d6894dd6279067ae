"""An in-memory kernel behind the :class:`~tortie.dataplane.netlink.Netlink` protocol (tests).

Problem: the reconciler's hard cases (foreign routes, routes to devices that do not exist yet,
a write that fails once, a resync after someone else changed the table) need a kernel that
behaves like Linux on the points the reconciler depends on, without root.

What it models, as Linux does: route identity (table, dst, tos, metric); ``add`` refuses a
taken key (EEXIST); ``delete`` matches proto/oif/gateway when given (ESRCH otherwise); a route
through a missing device fails ENODEV, an onlink route through a down device ENETDOWN;
deleting a link or setting it down removes the routes through it. What it does not model:
gateway reachability checks, multipath, address-derived routes.

Test hooks: :attr:`fail` (dst -> errno, until removed), :attr:`fail_once`, :attr:`ops` (every
write, in order), :attr:`route_writes`, :meth:`add_foreign_route`.

Kernel monitor: :class:`FakeMonitor` stands for :class:`~tortie.dataplane.monitor.NetlinkMonitor`;
a test changes the fake kernel, then hands the matching facts to the agent with
:meth:`FakeMonitor.emit` (:meth:`FakeNetlink.link_change` builds a link's). Like Linux, the
fake kernel itself announces nothing: setting a link down flushes its routes silently.

Pods (:mod:`tortie.dataplane.fake_netns` ties several fake namespaces together): a veth's ends
know each other (:attr:`Link.peer_index`, and :attr:`Link.peer_netnsid` when the peer is in
another namespace, whose id is assigned both ways when such a veth is made, as Linux does);
deleting either end deletes both, and the routes through them. Each interface has the sysctls
a workload interface needs (:attr:`sysctls`, path form), from its creation to its deletion.
``route_get`` is a longest-prefix match on the main table. Hook: :attr:`fail_calls` (method
name -> errno: every such call fails, e.g. ``{"add_addr": errno.EACCES}``).

VXLAN: devices keep their settings (:attr:`vxlan`); FDB and neighbour entries are kept per
ifindex, so deleting a device takes its entries with it, as in Linux. ``replace_fdb`` replaces
the first remote of a MAC, as the kernel does. Hooks: :attr:`fdb`, :attr:`neighbours` (edit
them to stand for entries someone else made), :attr:`fail_fdb` (MAC -> errno).
"""

from __future__ import annotations

import errno
import itertools
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from tortie.dataplane.monitor import KernelChanges, LinkChange, Sink
from tortie.dataplane.netlink import (
    FdbEntry,
    Link,
    Neighbour,
    NetlinkError,
    SingleRouteOps,
    VXLANAttrs,
)
from tortie.dataplane.netns import NetnsId, NetnsRef
from tortie.dataplane.routes import KernelRoute, RouteOp

RouteKey = tuple[int, IPv4Network, int, int]
_NSID_LOCK = threading.Lock()
_MACS = itertools.count(1)  # veth MACs, unique across every fake namespace (as random ones are)


def _fake_mac() -> str:
    n = next(_MACS)
    return f"02:00:{n >> 24 & 255:02x}:{n >> 16 & 255:02x}:{n >> 8 & 255:02x}:{n & 255:02x}"


def _key(route: KernelRoute) -> RouteKey:
    return (route.table, route.dst, route.tos, route.metric)


class FakeNetlink(SingleRouteOps):
    def __init__(self, *, supports_ipip: bool = False) -> None:
        self.supports_ipip = supports_ipip
        self.links: dict[str, Link] = {}
        self.addrs: dict[str, list[IPv4Interface]] = {}
        self.routes: dict[RouteKey, KernelRoute] = {}
        self.fail: dict[IPv4Network, int] = {}
        self.fail_once: dict[IPv4Network, int] = {}
        self.ops: list[RouteOp] = []
        self.link_ops: list[tuple[str, ...]] = []
        self.route_writes = 0
        self._index = itertools.count(2)  # 1 is lo
        self.closed = False
        self.vxlan: dict[str, VXLANAttrs] = {}
        self.fdb: dict[int, dict[str, list[IPv4Address]]] = {}  # ifindex -> mac -> dsts
        self.neighbours: dict[int, dict[IPv4Address, Neighbour]] = {}  # ifindex -> ip -> entry
        self.fail_fdb: dict[str, int] = {}
        self.fail_calls: dict[str, int] = {}
        self.sysctls: dict[str, str] = {}
        # Set by FakeNamespaces: who this namespace is, how to find another by reference, and
        # the ids this namespace has for others (RTM_GETNSID).
        self.identity: NetnsId | None = None
        self.resolve: Callable[[NetnsRef], FakeNetlink] | None = None
        self.nsids: dict[NetnsId, int] = {}
        self.veth_peers: dict[str, tuple[FakeNetlink, str]] = {}  # our end -> (its netns, name)
        self._add_link(Link(index=1, name="lo", kind=None, mtu=65536, up=True, noarp=True))

    # -- test helpers ---------------------------------------------------------------------

    def _add_link(self, link: Link) -> Link:
        self.links[link.name] = link
        self.addrs.setdefault(link.name, [])
        for key in ("proxy_arp", "forwarding", "route_localnet", "rp_filter"):
            self.sysctls.setdefault(f"net/ipv4/conf/{link.name}/{key}", "0")
        self.sysctls.setdefault(f"net/ipv4/neigh/{link.name}/proxy_delay", "80")
        return link

    def _fail(self, call: str) -> None:
        code = self.fail_calls.get(call)
        if code:
            raise NetlinkError(code)

    def _remove_link(self, name: str) -> None:
        """The interface goes, with its routes, addresses and sysctls, and its veth peer."""
        link = self.links.pop(name)
        self._flush_routes_via(link.index)
        self.addrs.pop(name, None)
        for key in [k for k in self.sysctls if f"/{name}/" in k]:
            del self.sysctls[key]
        peer = self.veth_peers.pop(name, None)
        if peer is not None:
            other, other_name = peer
            other.veth_peers.pop(other_name, None)
            if other_name in other.links:
                other._remove_link(other_name)

    def nsid_for(self, identity: NetnsId) -> int:
        """The id this namespace has for ``identity``, assigned on first use (as Linux assigns
        one when a veth pairs the two)."""
        with _NSID_LOCK:  # the CNI server's request threads share the fake host
            return self.nsids.setdefault(identity, len(self.nsids))

    def add_link(
        self, name: str, *, kind: str | None = "veth", up: bool = True, mtu: int = 1500
    ) -> Link:
        """Create a link directly (as the CNI plugin or an operator would)."""
        return self._add_link(
            Link(index=next(self._index), name=name, kind=kind, mtu=mtu, up=up, noarp=False)
        )

    def link_change(self, name: str, index: int | None = None) -> LinkChange:
        """The monitor's fact for link ``name`` as it is now (absent: deleted; give its
        ``index`` then, or 0 if it does not matter)."""
        link = self.links.get(name)
        if link is None:
            return LinkChange(index or 0, name, present=False)
        return LinkChange(link.index, name, present=True, up=link.up, carrier=link.up, mtu=link.mtu)

    def add_foreign_route(self, route: KernelRoute) -> None:
        """Put a route in place without counting it as one of the code-under-test's writes."""
        self.routes[_key(route)] = route

    def table(self, table: int = 254) -> list[KernelRoute]:
        return sorted((r for r in self.routes.values() if r.table == table), key=lambda r: r.dst)

    def _by_index(self, index: int) -> Link | None:
        return next((link for link in self.links.values() if link.index == index), None)

    def _flush_routes_via(self, index: int) -> None:
        for key in [k for k, r in self.routes.items() if r.oif == index]:
            del self.routes[key]

    # -- routes ---------------------------------------------------------------------------

    def dump_routes(self, table: int | None = None, proto: int | None = None) -> list[KernelRoute]:
        return [
            r
            for r in self.routes.values()
            if (table is None or r.table == table) and (proto is None or r.proto == proto)
        ]

    def route_batch(self, ops: Sequence[RouteOp]) -> list[NetlinkError | None]:
        return [self._apply(op) for op in ops]

    def _apply(self, op: RouteOp) -> NetlinkError | None:
        self.ops.append(op)
        self.route_writes += 1
        route = op.route
        code = self.fail.get(route.dst) or self.fail_once.pop(route.dst, 0)
        if code:
            return NetlinkError(code)
        key = _key(route)
        if op.action == "delete":
            have = self.routes.get(key)
            if (
                have is None
                or (route.proto and have.proto != route.proto)
                or (route.oif is not None and have.oif != route.oif)
                or (route.gateway is not None and have.gateway != route.gateway)
            ):
                return NetlinkError(errno.ESRCH)
            del self.routes[key]
            return None
        if route.oif is not None:
            link = self._by_index(route.oif)
            if link is None:
                return NetlinkError(errno.ENODEV)
            if route.onlink and not link.up:
                return NetlinkError(errno.ENETDOWN, "Nexthop device is not up")
        if op.action == "add" and key in self.routes:
            return NetlinkError(errno.EEXIST)
        self.routes[key] = route
        return None

    # -- links ----------------------------------------------------------------------------

    def list_links(self) -> list[Link]:
        return list(self.links.values())

    def get_link(self, name: str) -> Link | None:
        return self.links.get(name)

    def _need(self, name: str) -> Link:
        link = self.links.get(name)
        if link is None:
            raise NetlinkError(errno.ENODEV)
        return link

    def create_veth(
        self,
        name: str,
        peer: str,
        *,
        peer_netns: NetnsRef = None,
        mtu: int | None = None,
        mac: str | None = None,
    ) -> None:
        self.link_ops.append(("create_veth", name, peer))
        self._fail("create_veth")
        other = self
        if peer_netns is not None:
            if self.resolve is None:
                raise NetlinkError(errno.EINVAL, "no other namespaces in this fake")
            other = self.resolve(peer_netns)
        if name in self.links or peer in other.links or (other is self and name == peer):
            raise NetlinkError(errno.EEXIST)
        ours = self.add_link(name, up=False, mtu=mtu or 1500)
        theirs = other.add_link(peer, up=False, mtu=mtu or 1500)
        ours_nsid = theirs_nsid = None
        if other is not self:
            assert self.identity is not None and other.identity is not None
            ours_nsid, theirs_nsid = self.nsid_for(other.identity), other.nsid_for(self.identity)
        self.links[name] = replace(
            ours,
            mac=mac or _fake_mac(),
            peer_index=theirs.index,
            peer_netnsid=ours_nsid,
        )
        other.links[peer] = replace(
            theirs,
            mac=_fake_mac(),
            peer_index=ours.index,
            peer_netnsid=theirs_nsid,
        )
        self.veth_peers[name] = (other, peer)
        other.veth_peers[peer] = (self, name)

    def create_ipip(self, name: str) -> None:
        self.link_ops.append(("create_ipip", name))
        if not self.supports_ipip:
            raise NetlinkError(errno.EOPNOTSUPP)
        if name in self.links:
            raise NetlinkError(errno.EEXIST)
        self.add_link(name, kind="ipip", up=False, mtu=1480)

    def delete_link(self, name: str) -> None:
        self.link_ops.append(("delete_link", name))
        self._need(name)
        self._remove_link(name)

    def delete_link_index(self, index: int) -> None:
        link = self._by_index(index)
        self.link_ops.append(("delete_link_index", str(index)))
        self._fail("delete_link_index")
        if link is None:
            raise NetlinkError(errno.ENODEV)
        self._remove_link(link.name)

    def get_link_by_index(self, index: int) -> Link | None:
        return self._by_index(index)

    def route_get(self, dst: IPv4Address) -> KernelRoute | None:
        matches = [r for r in self.routes.values() if r.table == 254 and dst in r.dst]
        if not matches:
            return None
        return max(matches, key=lambda r: (r.dst.prefixlen, -r.metric))

    def netnsid(self, netns_fd: int) -> int | None:
        st = os.fstat(netns_fd)
        return self.nsids.get((st.st_dev, st.st_ino))

    def set_link(
        self,
        name: str,
        *,
        up: bool | None = None,
        mtu: int | None = None,
        arp: bool | None = None,
    ) -> None:
        link = self._need(name)
        self.link_ops.append(("set_link", name, f"up={up} mtu={mtu} arp={arp}"))
        self._fail("set_link")
        new = replace(
            link,
            up=link.up if up is None else up,
            mtu=link.mtu if mtu is None else mtu,
            noarp=link.noarp if arp is None else not arp,
        )
        self.links[name] = new
        if link.up and not new.up:
            self._flush_routes_via(link.index)

    # -- addresses ------------------------------------------------------------------------

    def list_addrs(self, name: str) -> list[IPv4Interface]:
        self._need(name)
        return list(self.addrs[name])

    def add_addr(self, name: str, addr: IPv4Interface) -> None:
        self._need(name)
        self.link_ops.append(("add_addr", name, str(addr)))
        self._fail("add_addr")
        if any(a.ip == addr.ip for a in self.addrs[name]):
            raise NetlinkError(errno.EEXIST)
        self.addrs[name].append(addr)

    def del_addr(self, name: str, addr: IPv4Interface) -> None:
        self._need(name)
        self.link_ops.append(("del_addr", name, str(addr)))
        if addr not in self.addrs[name]:
            raise NetlinkError(errno.EADDRNOTAVAIL)
        self.addrs[name].remove(addr)

    # -- vxlan, fdb, neighbours -----------------------------------------------------------

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
        self.link_ops.append(("create_vxlan", name))
        lower = self._need(uplink)
        if name in self.links:
            raise NetlinkError(errno.EEXIST)
        link = self.add_link(name, kind="vxlan", up=False, mtu=mtu or lower.mtu - 50)
        self.links[name] = replace(link, mac=mac or f"02:fa:4e:00:00:{link.index % 256:02x}")
        self.vxlan[name] = VXLANAttrs(
            vni=vni, port=port, local=local, link=lower.index, learning=learning
        )

    def get_vxlan(self, name: str) -> VXLANAttrs | None:
        link = self.links.get(name)
        if link is None or link.kind != "vxlan":
            return None
        return self.vxlan.get(name)

    def set_link_mac(self, name: str, mac: str) -> None:
        link = self._need(name)
        self.link_ops.append(("set_link_mac", name, mac))
        self.links[name] = replace(link, mac=mac)

    def list_fdb(self, name: str) -> list[FdbEntry]:
        link = self._need(name)
        return [
            FdbEntry(mac, dst) for mac, dsts in self.fdb.get(link.index, {}).items() for dst in dsts
        ]

    def replace_fdb(self, name: str, mac: str, dst: IPv4Address) -> None:
        link = self._need(name)
        self.link_ops.append(("replace_fdb", name, mac, str(dst)))
        if mac in self.fail_fdb:
            raise NetlinkError(self.fail_fdb[mac])
        dsts = self.fdb.setdefault(link.index, {}).setdefault(mac, [])
        if dsts:
            dsts[0] = dst
        else:
            dsts.append(dst)

    def del_fdb(self, name: str, mac: str, dst: IPv4Address) -> None:
        link = self._need(name)
        self.link_ops.append(("del_fdb", name, mac, str(dst)))
        table = self.fdb.get(link.index, {})
        if dst not in table.get(mac, []):
            raise NetlinkError(errno.ENOENT)
        table[mac].remove(dst)
        if not table[mac]:
            del table[mac]

    def list_neighbours(self, name: str) -> list[Neighbour]:
        link = self._need(name)
        return list(self.neighbours.get(link.index, {}).values())

    def replace_neighbour(self, name: str, ip: IPv4Address, mac: str) -> None:
        link = self._need(name)
        self.link_ops.append(("replace_neighbour", name, str(ip), mac))
        self.neighbours.setdefault(link.index, {})[ip] = Neighbour(ip, mac, permanent=True)

    def del_neighbour(self, name: str, ip: IPv4Address) -> None:
        link = self._need(name)
        self.link_ops.append(("del_neighbour", name, str(ip)))
        if self.neighbours.get(link.index, {}).pop(ip, None) is None:
            raise NetlinkError(errno.ENOENT)

    # -- sysctls ---------------------------------------------------------------------------

    def read_sysctls(self, keys: Sequence[str]) -> dict[str, str]:
        missing = [k for k in keys if k not in self.sysctls]
        if missing:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", missing[0])
        return {k: self.sysctls[k] for k in keys}

    def ensure_sysctls(self, values: Mapping[str, str], *, missing_ok: bool = False) -> list[str]:
        code = self.fail_calls.get("ensure_sysctls")
        if code:
            raise OSError(code, os.strerror(code))
        written = []
        for key, value in values.items():
            if key not in self.sysctls:
                if missing_ok:
                    continue
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", key)
            if self.sysctls[key] != value:
                self.sysctls[key] = value
                written.append(key)
        return written

    def close(self) -> None:
        self.closed = True


class FakeMonitor:
    """A :class:`~tortie.dataplane.monitor.KernelMonitor` driven by the test: :meth:`emit`
    hands a batch to the sink at once, on the caller's thread."""

    def __init__(self) -> None:
        self.sink: Sink | None = None
        self.stopped = False

    def start(self, sink: Sink) -> None:
        self.sink = sink

    def stop(self) -> None:
        self.stopped = True

    def emit(self, changes: KernelChanges) -> None:
        if self.sink is None:
            raise RuntimeError("the monitor was not started")
        self.sink(changes)
