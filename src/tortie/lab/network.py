"""The lab's underlay as steps: bridges, the router, the nodes' uplinks and default routes.

Problem: a lab needs what a rack gives real nodes: an L2 segment per subnet, a router between
subnets, and on each node an address, an uplink and a default route. The default route is not
optional: proxy ARP (which answers a pod's ARP for 169.254.1.1) only answers when the node has
a route to the asked address through another interface (field notes, section 1).

Invariants: every interface is created inside a lab namespace (veths are made in the wire
namespace with the peer placed straight into the node or router namespace), so the host's root
namespace never holds a lab interface; the steps depend only on the topology.
"""

from __future__ import annotations

from tortie.lab.state import LinkRecord
from tortie.lab.steps import IpStep, Step, SysctlStep
from tortie.lab.topology import NodeSpec, Topology

FORWARDING = (("net/ipv4/ip_forward", "1"),)
# The seed is IPv4; IPv6 link-local chatter (DAD, router solicitations) would only clutter
# every capture a newcomer reads. "default" covers interfaces made later, "all" existing ones.
NO_IPV6 = (("net/ipv6/conf/all/disable_ipv6", "1"), ("net/ipv6/conf/default/disable_ipv6", "1"))


def namespace_steps(netns: str) -> list[Step]:
    """What every fresh lab namespace gets first: loopback up, IPv6 off."""
    return [IpStep(netns, ("link set lo up",)), SysctlStep(netns, NO_IPV6)]


def wire_steps(topology: Topology) -> list[Step]:
    """The wire namespace: one bridge per subnet (STP off: ports forward at once)."""
    commands = []
    for s in topology.subnets:
        commands += [
            f"link add {s.bridge} type bridge stp_state 0 forward_delay 0",
            f"link set {s.bridge} up",
        ]
    return [IpStep(topology.wire_netns, tuple(commands))]


def wire_links(topology: Topology) -> list[LinkRecord]:
    return [LinkRecord(topology.wire_netns, s.bridge) for s in topology.subnets]


def router_steps(topology: Topology) -> list[Step]:
    """The router: a leg in every subnet at .1, forwarding on, no ICMP redirects."""
    router = topology.router.netns
    wire: list[str] = []
    inside = []
    for s in topology.subnets:
        wire += [
            f"link add {s.router_port} type veth peer name {s.router_ifname} netns {router}",
            f"link set {s.router_port} master {s.bridge} up",
        ]
        inside += [
            f"addr add {s.gateway}/{s.network.prefixlen} dev {s.router_ifname}",
            f"link set {s.router_ifname} up",
        ]
    # Redirects would make a trace show the router telling nodes to go direct: keep the path
    # the routes say.
    sysctls = (*FORWARDING, ("net/ipv4/conf/all/send_redirects", "0"))
    return [
        IpStep(topology.wire_netns, tuple(wire)),
        IpStep(router, tuple(inside)),
        SysctlStep(router, sysctls),
    ]


def router_links(topology: Topology) -> list[LinkRecord]:
    return [
        LinkRecord(topology.wire_netns, s.router_port, topology.router.netns, s.router_ifname)
        for s in topology.subnets
    ]


def node_steps(topology: Topology, nodes: list[NodeSpec] | None = None) -> list[Step]:
    """Uplinks (one wire-side batch for all nodes), then each node's inside."""
    chosen = list(topology.nodes) if nodes is None else nodes
    wire: list[str] = []
    steps: list[Step] = []
    for n in chosen:
        bridge = topology.subnet(n.subnet).bridge
        wire += [
            f"link add {n.wire_port} type veth peer name {n.uplink} netns {n.netns}",
            f"link set {n.wire_port} master {bridge} up",
        ]
        steps += [
            IpStep(
                n.netns,
                (
                    f"addr add {n.address} dev {n.uplink}",
                    f"link set {n.uplink} up",
                    f"route add default via {n.gateway} dev {n.uplink}",
                ),
            ),
            SysctlStep(n.netns, FORWARDING),
        ]
    return [IpStep(topology.wire_netns, tuple(wire)), *steps]


def node_links(topology: Topology, nodes: list[NodeSpec] | None = None) -> list[LinkRecord]:
    chosen = list(topology.nodes) if nodes is None else nodes
    return [LinkRecord(topology.wire_netns, n.wire_port, n.netns, n.uplink) for n in chosen]
