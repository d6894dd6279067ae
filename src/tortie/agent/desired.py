"""From cluster state to the routes one node wants: the agent's calculation, pure.

Problem: every node must turn the same cluster state (pools and their modes, nodes and their
addresses, block affinities, borrowed addresses, local workloads, routes learned over BGP)
into its own route table, the way Calico's Felix does. This module is that function, with
no I/O, so every mode and corner case is a fast unit test.

Rules (Calico's, see the field notes section 7):
- a block affine to this node: ``blackhole <block>`` (a packet to a free address in our own
  block must not leak to the default route);
- a block affine to another node, by the mode of the pool that contains it:
  IPIP ``Always``: ``<block> via <nodeIP> dev tunl0 onlink``;
  VXLAN ``Always``: ``<block> via <remote VTEP> dev vxlan.calico onlink`` (the VTEP's MAC and
  node IP are in the FDB, programmed by the VXLAN manager);
  ``CrossSubnet``: direct ``via <nodeIP> dev <uplink>`` when the remote node's IP is inside this
  node's uplink prefix, else through tunl0; ``Never`` (BGP mode): ``via <nodeIP> dev <uplink>``;
- an address borrowed from a block (allocated to a node other than the block's): a /32 to the
  node that holds it, so it wins over the block route by longest prefix;
- a local workload: ``<ip>/32 dev <cali...> scope link``, only if its interface has the workload
  prefix (Felix's InterfacePrefix: it programs routes only for interfaces matching it). An
  endpoint applied by hand with ``interfaceName: eth0`` would otherwise route a pod address
  over the node's uplink; :func:`tortie.model.naming.is_workload_interface` is the rule, and
  the agent applies it to its nftables entries and interface sysctls too. Such endpoints are
  reported in ``ignored``.

Invariants: the result maps each destination to exactly one route (more specific entries are
separate destinations); prefixes outside every pool are ignored (tortie only routes pod space);
a remote node without a known IPv4 address gets no routes (it cannot be reached anyway); a
VXLAN route to a node that has not published its VTEP yet is reported in ``unroutable``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Literal

from tortie.dataplane.routes import RouteSpec
from tortie.model.naming import (
    TUNNEL_DEVICE,
    VXLAN_DEVICE,
    WORKLOAD_PREFIX,
    is_workload_interface,
)

Mode = Literal["Never", "CrossSubnet", "Always"]


@dataclass(frozen=True, slots=True)
class PoolInfo:
    cidr: IPv4Network
    ipip_mode: Mode = "Never"
    vxlan_mode: Mode = "Never"


@dataclass(frozen=True, slots=True)
class LocalNode:
    name: str
    address: IPv4Interface  # the uplink address with its prefix, e.g. 192.168.49.2/24
    uplink: str
    tunnel_device: str = TUNNEL_DEVICE
    vxlan_device: str = VXLAN_DEVICE


@dataclass(frozen=True, slots=True)
class RemotePrefix:
    """A pod prefix held by another node: from a block affinity, a borrowed address, or BGP.

    ``vtep``: that node's VXLAN tunnel address, when it has one (VXLAN routes go to it).
    """

    prefix: IPv4Network
    node_ip: IPv4Address
    vtep: IPv4Address | None = None


@dataclass(frozen=True, slots=True)
class Workload:
    address: IPv4Network  # a /32
    interface: str


@dataclass
class DesiredRoutes:
    routes: dict[IPv4Network, RouteSpec] = field(default_factory=dict)
    unroutable: list[str] = field(default_factory=list)  # human-readable reasons
    ignored: list[str] = field(default_factory=list)  # workloads on interfaces not ours

    @property
    def specs(self) -> list[RouteSpec]:
        return list(self.routes.values())


def ignored_reason(interface: str, prefix: str = WORKLOAD_PREFIX) -> str:
    return (
        f"interface {interface!r} does not start with the workload prefix {prefix!r}: "
        "not managed (no route, anti-spoofing entry or sysctl); fix the endpoint's interfaceName"
    )


def pool_for(prefix: IPv4Network, pools: Sequence[PoolInfo]) -> PoolInfo | None:
    """The pool containing ``prefix`` (pools never overlap, so there is at most one)."""
    for pool in pools:
        if prefix.subnet_of(pool.cidr):
            return pool
    return None


def _encapsulates(mode: Mode, local: LocalNode, node_ip: IPv4Address) -> bool:
    if mode == "Always":
        return True
    if mode == "CrossSubnet":
        return node_ip not in local.address.network
    return False


def needs_tunnel(pool: PoolInfo, local: LocalNode, node_ip: IPv4Address) -> bool:
    """IPIP for traffic to ``node_ip`` under ``pool``'s mode."""
    return _encapsulates(pool.ipip_mode, local, node_ip)


def needs_vxlan(pool: PoolInfo, local: LocalNode, node_ip: IPv4Address) -> bool:
    return _encapsulates(pool.vxlan_mode, local, node_ip)


def remote_route(pool: PoolInfo, local: LocalNode, r: RemotePrefix) -> RouteSpec | None:
    """The route to ``r`` under ``pool``'s mode; None when VXLAN needs a VTEP we don't know."""
    if needs_vxlan(pool, local, r.node_ip):
        if r.vtep is None:
            return None
        return RouteSpec.via(r.prefix, r.vtep, local.vxlan_device, onlink=True)
    if needs_tunnel(pool, local, r.node_ip):
        return RouteSpec.via(r.prefix, r.node_ip, local.tunnel_device, onlink=True)
    return RouteSpec.via(r.prefix, r.node_ip, local.uplink)


def tunnel_wanted(pools: Iterable[PoolInfo]) -> bool:
    """Whether tunl0 is needed at all: some pool uses IPIP (Always or CrossSubnet)."""
    return any(p.ipip_mode != "Never" for p in pools)


def vxlan_wanted(pools: Iterable[PoolInfo]) -> bool:
    """Whether vxlan.calico is needed: some pool uses VXLAN (Always or CrossSubnet)."""
    return any(p.vxlan_mode != "Never" for p in pools)


def compute_routes(
    local: LocalNode,
    pools: Sequence[PoolInfo],
    local_blocks: Iterable[IPv4Network],
    remote: Iterable[RemotePrefix],
    workloads: Iterable[Workload] = (),
) -> DesiredRoutes:
    out = DesiredRoutes()
    for block in local_blocks:
        if pool_for(block, pools) is not None:
            out.routes[block] = RouteSpec.blackhole(block)
    for r in remote:
        pool = pool_for(r.prefix, pools)
        if pool is None or r.node_ip == local.address.ip:
            continue
        route = remote_route(pool, local, r)
        if route is None:
            out.unroutable.append(f"{r.prefix}: VXLAN needs the VTEP address of {r.node_ip}")
            continue
        out.routes[r.prefix] = route
    for w in workloads:
        if not is_workload_interface(w.interface):
            out.ignored.append(f"{w.address}: {ignored_reason(w.interface)}")
            continue
        out.routes[w.address] = RouteSpec.link(w.address, w.interface)
    return out
