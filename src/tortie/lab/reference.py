"""The ideal pod path: Calico's pod wiring and native routes, done by hand with ``ip``.

Problem: two things need pods wired exactly as Calico wires them but without tortie's code in
the path: the lab before the CNI plugin exists (``--wire-pods manual``), and the benchmark's
reference ("the same veth/proxy-ARP/route wiring done by hand with ``ip``, no tortie running",
issue 9), against which tortie's own dataplane is measured. This module is that wiring.

Per pod (Calico's, field notes section 7):
- a veth, host end ``cali<11 hex>`` (MAC ee:ee:ee:ee:ee:ee) in the node, pod end ``eth0``;
- host: proxy_arp=1, neigh proxy_delay=0 (else the first packet waits up to 0.8 s),
  forwarding=1, and ``<ip>/32 dev caliX scope link``;
- pod: ``<ip>/32``, ``169.254.1.1 dev eth0 scope link``, ``default via 169.254.1.1``.
Between nodes, native routing (what BGP mode would install, without BGP): each node has a
``blackhole`` for its own block and ``<block> via <node>`` for every other node's block in its
subnet; blocks of nodes in other subnets go through the node's gateway, and the router has a
route to every block via its node (the "gateway must learn pod routes" of the seed's
drawback 4, done statically).

Invariant: steps only; :func:`tortie.lab.steps.run_steps` runs them, ``shell_lines`` prints
them. Addresses come from the topology's ``manual_block``/``manual_ip``.
"""

from __future__ import annotations

from ipaddress import IPv4Address

from tortie.lab.kernel import HostKernel, Kernel
from tortie.lab.state import LinkRecord
from tortie.lab.steps import IpStep, Step, SysctlStep, run_steps, shell_lines
from tortie.lab.topology import NodeSpec, PodSpec, Topology
from tortie.model.naming import GATEWAY, HOST_MAC


def pod_steps(
    node_netns: str,
    pod_netns: str,
    host_ifname: str,
    ip: IPv4Address,
    *,
    pod_ifname: str = "eth0",
    mtu: int | None = None,
) -> list[Step]:
    """Wire one pod Calico-style (both namespaces must exist)."""
    mtu_arg = f" mtu {mtu}" if mtu else ""
    return [
        IpStep(
            node_netns,
            (
                f"link add {host_ifname}{mtu_arg} type veth peer name {pod_ifname}{mtu_arg} "
                f"netns {pod_netns}",
                f"link set {host_ifname} address {HOST_MAC} up",
            ),
        ),
        SysctlStep(
            node_netns,
            (
                (f"net/ipv4/conf/{host_ifname}/proxy_arp", "1"),
                (f"net/ipv4/neigh/{host_ifname}/proxy_delay", "0"),
                (f"net/ipv4/conf/{host_ifname}/forwarding", "1"),
            ),
        ),
        IpStep(node_netns, (f"route add {ip}/32 dev {host_ifname} scope link",)),
        IpStep(
            pod_netns,
            (
                f"addr add {ip}/32 dev {pod_ifname}",
                f"link set {pod_ifname} up",
                f"route add {GATEWAY} dev {pod_ifname} scope link",
                f"route add default via {GATEWAY} dev {pod_ifname}",
            ),
        ),
    ]


def wire_pod_by_hand(
    node_netns: str,
    pod_netns: str,
    host_ifname: str,
    ip: IPv4Address,
    *,
    mtu: int | None = None,
    kernel: Kernel | None = None,
) -> list[str]:
    """Wire one pod now (both namespaces must exist); return the commands, as run.

    The benchmark's reference path: e.g. a pod pair next to tortie's pods in a running lab,
    with addresses outside the pool and ``host_route_steps`` between the two nodes.
    """
    steps = pod_steps(node_netns, pod_netns, host_ifname, ip, mtu=mtu)
    run_steps(kernel or HostKernel(), steps)
    return shell_lines(steps)


def host_route_steps(node_netns: str, destination: str, via: str, dev: str = "eth0") -> Step:
    """A static route on a node (``<pod ip>/32`` or a block via the other node)."""
    return IpStep(node_netns, (f"route add {destination} via {via} dev {dev}",))


def topology_pod_steps(topology: Topology, pod: PodSpec, mtu: int | None = None) -> list[Step]:
    node = topology.node(pod.node)
    return pod_steps(
        node.netns, pod.netns, pod.host_ifname, pod.manual_ip, pod_ifname=pod.ifname, mtu=mtu
    )


def pod_links(topology: Topology, pod: PodSpec) -> list[LinkRecord]:
    node = topology.node(pod.node)
    return [LinkRecord(node.netns, pod.host_ifname, pod.netns, pod.ifname)]


def _node_routes(topology: Topology, node: NodeSpec) -> tuple[str, ...]:
    commands = [f"route add blackhole {node.manual_block}"]
    for other in topology.nodes:
        if other is node:
            continue
        hop = other.ip if other.subnet == node.subnet else node.gateway
        commands.append(f"route add {other.manual_block} via {hop} dev {node.uplink}")
    return tuple(commands)


def route_steps(topology: Topology) -> list[Step]:
    """Native routes between nodes (and on the router, when there are several subnets)."""
    steps: list[Step] = [IpStep(n.netns, _node_routes(topology, n)) for n in topology.nodes]
    if len(topology.subnets) > 1:
        steps.append(
            IpStep(
                topology.router.netns,
                tuple(
                    f"route add {n.manual_block} via {n.ip} "
                    f"dev {topology.subnet(n.subnet).router_ifname}"
                    for n in topology.nodes
                ),
            )
        )
    return steps
