"""One pass's view of the cluster: what the managers' ``update`` read, derived once per pass.

Problem: several managers ask the same questions of the cluster state (the IPv4 pools, every
node's address, this node's workloads whose interface is ours to manage); answering each
question once per manager would decode the same resources several times per pass, and two
managers could disagree about, say, which workloads are ignored.

Invariants: a :class:`View` is built by the loop for one pass and thrown away after it; it
never changes the :class:`~tortie.agent.state.ClusterState` it reads (only the loop folds
events into that), and it does no I/O. Each answer is computed on first use
(``cached_property``), so a pass pays only for the questions its managers ask.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from tortie.agent.desired import (
    LocalNode,
    PoolInfo,
    RemotePrefix,
    Workload,
)
from tortie.agent.state import ClusterState
from tortie.model.naming import is_workload_interface
from tortie.model.resources import IPPool, WorkloadEndpoint


@dataclass(frozen=True, slots=True)
class Prefixes:
    """Pod prefixes by holder, from block affinities and borrowed addresses (datastore)."""

    local_blocks: list[IPv4Network]  # blocks affine to this node
    held_borrowed: list[IPv4Network]  # /32s this node holds in other nodes' blocks
    remote: list[RemotePrefix]  # blocks and /32s other nodes hold


class View:
    def __init__(self, state: ClusterState, local: LocalNode) -> None:
        self.state = state
        self.local = local

    @cached_property
    def ippools(self) -> list[IPPool]:
        return [p for p in self.state.pools.values() if p.ip_version == 4]

    @cached_property
    def pools(self) -> list[PoolInfo]:
        return [
            PoolInfo(IPv4Network(p.spec.cidr), p.spec.ipip_mode, p.spec.vxlan_mode)
            for p in self.ippools
        ]

    @cached_property
    def node_ips(self) -> dict[str, IPv4Address]:
        """Every node's IPv4 address (this node's too), for nodes that published one."""
        out: dict[str, IPv4Address] = {}
        for name in self.state.nodes:
            iface = self.state.node_ipv4(name)
            if iface is not None:
                out[name] = iface.ip
        return out

    @cached_property
    def vteps(self) -> dict[str, tuple[IPv4Address, str | None]]:
        """Every node's VXLAN tunnel address and VTEP MAC, for nodes that published them."""
        out: dict[str, tuple[IPv4Address, str | None]] = {}
        for name in self.state.nodes:
            vtep = self.state.node_vtep(name)
            if vtep is not None:
                out[name] = vtep
        return out

    @cached_property
    def prefixes(self) -> Prefixes:
        me = self.local.name
        node_ips = self.node_ips
        vteps = {name: vtep[0] for name, vtep in self.vteps.items()}
        local_blocks: list[IPv4Network] = []
        remote: list[RemotePrefix] = []
        for node, cidr in self.state.confirmed_affinities():
            if node == me:
                local_blocks.append(cidr)
            elif node in node_ips:
                remote.append(RemotePrefix(cidr, node_ips[node], vteps.get(node)))
        held: list[IPv4Network] = []
        for addr, holder in self.state.borrowed():
            prefix = IPv4Network(f"{addr}/32")
            if holder == me:
                held.append(prefix)
            elif holder in node_ips:
                remote.append(RemotePrefix(prefix, node_ips[holder], vteps.get(holder)))
        return Prefixes(local_blocks, held, remote)

    @cached_property
    def _workloads(self) -> tuple[list[WorkloadEndpoint], dict[str, str]]:
        managed: list[WorkloadEndpoint] = []
        ignored: dict[str, str] = {}
        for wep in self.state.local_workloads():
            name = wep.spec.interface_name
            if not name or is_workload_interface(name):
                managed.append(wep)
            else:
                ignored[f"{wep.metadata.namespace}/{wep.metadata.name}"] = name
        return managed, ignored

    @property
    def workloads(self) -> list[WorkloadEndpoint]:
        """This node's endpoints whose interface is ours to manage (routes, nftables entries,
        sysctls: :func:`tortie.model.naming.is_workload_interface`, Felix's InterfacePrefix)."""
        return self._workloads[0]

    @property
    def ignored_workloads(self) -> dict[str, str]:
        """``namespace/name`` -> interface of this node's endpoints on interfaces not ours."""
        return self._workloads[1]

    @cached_property
    def workload_addresses(self) -> list[Workload]:
        """(IPv4 /32, interface) of every managed workload that has an interface."""
        return [
            Workload(IPv4Network(net, strict=False), wep.spec.interface_name)
            for wep in self.workloads
            if wep.spec.interface_name
            for net in wep.spec.ip_networks
            if ":" not in net
        ]

    @cached_property
    def workload_interfaces(self) -> set[str]:
        return {wep.spec.interface_name for wep in self.workloads if wep.spec.interface_name}

    def firewall_endpoints(self) -> list[tuple[str, IPv4Address]]:
        """(interface, IPv4 address) of every managed workload: the anti-spoofing entries."""
        return [
            (wep.spec.interface_name, IPv4Interface(net).ip)
            for wep in self.workloads
            if wep.spec.interface_name
            for net in wep.spec.ip_networks
            if ":" not in net
        ]
