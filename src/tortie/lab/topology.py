"""A lab's topology as plain data: what exists and how it is named and addressed.

Problem: the builder, ``lab status``/``exec``/``ping``, the trace and the benchmarks all need
the same answers (which namespace is node2, what is pod3's node, which router address is node
4's gateway) and none of them should have to touch the kernel to get them. As in Mininet, the
topology is pure: :func:`build_topology` turns :class:`LabOptions` plus the lab's id into frozen
dataclasses, deterministically, so ``status`` can rebuild the very topology ``up`` built from
the options recorded in the state file.

The shape (defaults mirror the seed, /work/shared/seed/README.md):

- a *wire* namespace ``tl<id>-w`` holding one Linux bridge per subnet (the L2 segments), so
  nothing of the lab lands in the host's root namespace;
- a *router* namespace ``tl<id>-r`` with one leg per subnet, at ``.1`` of each subnet; it
  exists with one subnet too, because every node needs a default gateway (proxy ARP answers
  for 169.254.1.1 only when the node has a route to it through another interface);
- nodes ``node1..N`` in ``tl<id>-n<i>``, uplink ``eth0`` at ``192.168.49.2, .3, ...``; with K
  subnets the nodes are split in contiguous runs, the larger runs first (2 subnets: the first
  half of the nodes, rounded up, in 192.168.49.0/24, the rest in 192.168.50.0/24);
- pods ``pod1..`` in node order in ``tl<id>-p<k>``, interface ``eth0``;
- the pool 10.244.0.0/16 with /26 blocks, its ipipMode/vxlanMode from the lab mode;
- BGP roles: ``--route-reflectors R`` makes nodes 1..R reflectors (cluster ID
  :data:`RR_CLUSTER_ID`, Calico's documented 244.0.0.1); every node sits in rack
  ``rack-<subnet>`` (a node label), and ``--tor`` runs BIRD in the router as the ToR of every
  rack, in AS :data:`TOR_AS` (see :mod:`tortie.lab.tor`).

Invariants: every name fits the kernel (:mod:`.naming`); namespaces and wire-side interfaces
carry the lab prefix, so two labs never collide on the host; the addresses (192.168.x, 10.244)
exist only inside the lab's namespaces, so two labs may both use them.

Hazard: ``manual_block``/``manual_ip`` are only the hand-wired reference's addresses
(``--wire-pods manual``); with the CNI plugin, IPAM chooses blocks and the state file records
the address each pod really got.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any, Literal, get_args

from tortie.lab.errors import LabOptionError, UnknownTargetError
from tortie.lab.naming import check_ifname, check_lab_name, lab_prefix
from tortie.model.naming import host_ifname

Mode = Literal["ipip", "bgp", "crosssubnet", "vxlan"]
PodWiringMode = Literal["cni", "manual"]
EncapMode = Literal["Never", "CrossSubnet", "Always"]
MODES: tuple[str, ...] = get_args(Mode)
WIRE_PODS: tuple[str, ...] = get_args(PodWiringMode)

MAX_NODES = 100
MAX_SUBNETS = 8
MAX_PODS_PER_NODE = 60  # a /26 block holds 64 addresses; the reference skips the first
FIRST_SUBNET = IPv4Network("192.168.49.0/24")
POOL_CIDR = IPv4Network("10.244.0.0/16")
BLOCK_SIZE = 26
DEFAULT_AS = 64512
RR_CLUSTER_ID = "244.0.0.1"
TOR_AS = 64513  # the ToR's own AS: eBGP to the nodes (AS 64512), as Calico's ToR guides do
RACK_LABEL = "rack"
K8S_NAMESPACE = "default"
UPLINK = "eth0"
POD_IFNAME = "eth0"
POOL_NAME = "default-ipv4-ippool"

# Lab mode -> (ipipMode, vxlanMode) of the pool, as Calico's install options set them.
POOL_MODES: dict[str, tuple[EncapMode, EncapMode]] = {
    "ipip": ("Always", "Never"),
    "bgp": ("Never", "Never"),
    "crosssubnet": ("CrossSubnet", "Never"),
    "vxlan": ("Never", "Always"),
}


@dataclass(frozen=True)
class LabOptions:
    """What the user asked for (``tortie lab up`` options); recorded in the state file."""

    name: str = "default"
    nodes: int = 2
    subnets: int = 1
    mode: Mode = "ipip"
    pods_per_node: int = 1
    route_reflectors: int = 0
    tor: bool = False
    datastore: str | None = None  # None: an SQLite file in the lab's directory
    wire_pods: PodWiringMode = "cni"
    agents: bool = False  # start ``tortie node run`` per node (the CLI: on with cni wiring)
    nat_outgoing: bool = True  # the pool's natOutgoing (on: the agents' NAT chain, conntrack)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabOptions:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class SubnetSpec:
    index: int  # 1-based
    network: IPv4Network
    gateway: IPv4Address  # the router's leg, .1
    bridge: str  # bridge in the wire namespace
    router_port: str  # wire-side end of the router's veth (a bridge port)
    router_ifname: str  # router-side end, inside the router namespace

    @property
    def rack(self) -> str:
        """The rack of the nodes in this subnet (node label ``rack``; the ToR's BGPPeer)."""
        return f"rack-{self.index}"


@dataclass(frozen=True)
class RouterSpec:
    netns: str
    tor: bool  # BIRD runs here as the ToR (``--tor``, :mod:`tortie.lab.tor`)
    tor_as: int = TOR_AS


@dataclass(frozen=True)
class NodeSpec:
    name: str  # node1, node2, ...
    index: int  # 1-based
    netns: str
    uplink: str  # inside the node namespace
    wire_port: str  # the uplink's peer, a port of the subnet's bridge in the wire namespace
    address: IPv4Interface  # with the subnet's prefix
    gateway: IPv4Address
    subnet: int
    as_number: int
    route_reflector: bool
    manual_block: IPv4Network  # the hand-wired reference's block (see the module hazard)

    @property
    def ip(self) -> IPv4Address:
        return self.address.ip

    @property
    def rack(self) -> str:
        return f"rack-{self.subnet}"


@dataclass(frozen=True)
class PodSpec:
    name: str  # pod1, pod2, ... in node order
    index: int
    netns: str
    node: str
    k8s_namespace: str
    ifname: str  # inside the pod namespace
    host_ifname: str  # Calico's cali<11 hex>, inside the node namespace
    manual_ip: IPv4Address  # the hand-wired reference's address


@dataclass(frozen=True)
class PoolSpec:
    name: str
    cidr: IPv4Network
    block_size: int
    ipip_mode: EncapMode
    vxlan_mode: EncapMode
    nat_outgoing: bool


@dataclass(frozen=True)
class Topology:
    options: LabOptions
    lab_id: int
    prefix: str
    wire_netns: str
    router: RouterSpec
    subnets: tuple[SubnetSpec, ...]
    nodes: tuple[NodeSpec, ...]
    pods: tuple[PodSpec, ...]
    pool: PoolSpec
    warnings: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.options.name

    @property
    def mode(self) -> Mode:
        return self.options.mode

    def node(self, name: str) -> NodeSpec:
        for node in self.nodes:
            if node.name == name:
                return node
        raise UnknownTargetError(self._unknown(name))

    def pod(self, name: str) -> PodSpec:
        for pod in self.pods:
            if pod.name == name:
                return pod
        raise UnknownTargetError(self._unknown(name))

    def target(self, name: str) -> NodeSpec | PodSpec:
        """A node or pod by name (what ``exec``, ``ping`` and ``capture`` accept)."""
        for node in self.nodes:
            if node.name == name:
                return node
        for pod in self.pods:
            if pod.name == name:
                return pod
        raise UnknownTargetError(self._unknown(name))

    def pods_on(self, node: str) -> tuple[PodSpec, ...]:
        return tuple(p for p in self.pods if p.node == node)

    def subnet(self, index: int) -> SubnetSpec:
        return self.subnets[index - 1]

    def namespaces(self) -> tuple[str, ...]:
        """Every namespace of the lab, in creation order."""
        return (
            self.wire_netns,
            self.router.netns,
            *(n.netns for n in self.nodes),
            *(p.netns for p in self.pods),
        )

    def interfaces(self) -> tuple[tuple[str, str], ...]:
        """Every interface the lab creates, as (namespace, name)."""
        out: list[tuple[str, str]] = []
        for s in self.subnets:
            out += [(self.wire_netns, s.bridge), (self.wire_netns, s.router_port)]
            out.append((self.router.netns, s.router_ifname))
        for n in self.nodes:
            out += [(self.wire_netns, n.wire_port), (n.netns, n.uplink)]
        for p in self.pods:
            out += [(self.node(p.node).netns, p.host_ifname), (p.netns, p.ifname)]
        return tuple(out)

    def _unknown(self, name: str) -> str:
        names = ", ".join([n.name for n in self.nodes] + [p.name for p in self.pods])
        return f"lab {self.name!r} has no node or pod {name!r} (it has: {names})"


def _check_range(what: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise LabOptionError(f"--{what} {value} is out of range {lo}..{hi}")


def check_options(options: LabOptions) -> None:
    """Raise :class:`LabOptionError` for options that describe no buildable lab."""
    check_lab_name(options.name)
    _check_range("nodes", options.nodes, 1, MAX_NODES)
    _check_range("subnets", options.subnets, 1, MAX_SUBNETS)
    if options.subnets > options.nodes:
        raise LabOptionError(
            f"--subnets {options.subnets} needs at least as many nodes (--nodes {options.nodes})"
        )
    _check_range("pods-per-node", options.pods_per_node, 0, MAX_PODS_PER_NODE)
    _check_range("route-reflectors", options.route_reflectors, 0, options.nodes)
    if options.mode not in MODES:
        raise LabOptionError(f"--mode {options.mode!r} is not one of {', '.join(MODES)}")
    if options.wire_pods not in WIRE_PODS:
        raise LabOptionError(f"--wire-pods {options.wire_pods!r} is not one of cni, manual")
    if options.datastore is not None:
        _check_datastore(options.datastore)
    if options.tor:
        _check_tor(options)


def _check_tor(options: LabOptions) -> None:
    if options.route_reflectors:
        raise LabOptionError(
            "--tor and --route-reflectors together are not supported: with --tor the ToR "
            "already carries every route between the nodes (eBGP, the mesh is off); adding "
            "reflectors gives each node two paths to a block with different next hops, and "
            "tortie's ExaBGP nodes do no best-path selection"
        )
    if options.wire_pods != "cni" or not options.agents:
        raise LabOptionError(
            "--tor needs the node agents and CNI wiring (the default): the ToR learns the "
            "pod blocks from the agents' BGP speakers; --wire-pods manual routes by hand"
        )


def _check_datastore(url: str) -> None:
    from tortie.datastore.api import InvalidURLError
    from tortie.datastore.factory import parse_url

    try:
        parsed = parse_url(url)
    except InvalidURLError as err:
        raise LabOptionError(f"--datastore: {err}") from err
    if parsed.backend == "memory":
        raise LabOptionError(
            "--datastore memory:// lives inside one process, but a lab's agents and CNI "
            "calls are separate processes; use sqlite:///path.db or etcd://host:port "
            "(or leave it out: an SQLite file in the lab's directory)"
        )


def _split(nodes: int, subnets: int) -> list[int]:
    """Subnet number of each node: contiguous runs, the larger runs first."""
    base, extra = divmod(nodes, subnets)
    out: list[int] = []
    for s in range(1, subnets + 1):
        out += [s] * (base + (1 if s <= extra else 0))
    return out


def _warnings(options: LabOptions) -> tuple[str, ...]:
    out = []
    bgp_across = options.mode == "bgp" and options.subnets > 1 and not options.tor
    if bgp_across and options.wire_pods == "cni":
        out.append(
            "BGP mode across subnets without --tor: the router does not learn pod routes, "
            "so pods in different subnets cannot reach each other (the seed's drawback 4; "
            "use --mode crosssubnet or ipip, or --tor)"
        )
    if options.route_reflectors and not options.agents:
        out.append("--route-reflectors only shapes the BGP manifests until agents run (--agents)")
    return tuple(out)


def build_topology(options: LabOptions, lab_id: int) -> Topology:
    """The topology of a lab with ``options`` and host-wide id ``lab_id`` (deterministic)."""
    check_options(options)
    prefix = lab_prefix(lab_id)
    subnets = tuple(
        SubnetSpec(
            index=s,
            network=(net := IPv4Network((int(FIRST_SUBNET.network_address) + (s - 1) * 256, 24))),
            gateway=net.network_address + 1,
            bridge=check_ifname(f"{prefix}br{s}"),
            router_port=check_ifname(f"{prefix}r{s}"),
            router_ifname=f"eth{s - 1}",
        )
        for s in range(1, options.subnets + 1)
    )
    placement = _split(options.nodes, options.subnets)
    block_span = 2 ** (32 - BLOCK_SIZE)
    nodes: list[NodeSpec] = []
    used: dict[int, int] = {}
    for i, s in enumerate(placement, start=1):
        subnet = subnets[s - 1]
        used[s] = used.get(s, 0) + 1
        nodes.append(
            NodeSpec(
                name=f"node{i}",
                index=i,
                netns=f"{prefix}n{i}",
                uplink=UPLINK,
                wire_port=check_ifname(f"{prefix}n{i}"),
                address=IPv4Interface((subnet.network.network_address + 1 + used[s], 24)),
                gateway=subnet.gateway,
                subnet=s,
                as_number=DEFAULT_AS,
                route_reflector=i <= options.route_reflectors,
                manual_block=IPv4Network(
                    (int(POOL_CIDR.network_address) + (i - 1) * block_span, BLOCK_SIZE)
                ),
            )
        )
    pods: list[PodSpec] = []
    for node in nodes:
        for j in range(1, options.pods_per_node + 1):
            k = len(pods) + 1
            pods.append(
                PodSpec(
                    name=f"pod{k}",
                    index=k,
                    netns=f"{prefix}p{k}",
                    node=node.name,
                    k8s_namespace=K8S_NAMESPACE,
                    ifname=POD_IFNAME,
                    # The CNI server's name for it (a named pod's needs no container ID).
                    host_ifname=host_ifname("", POD_IFNAME, K8S_NAMESPACE, f"pod{k}"),
                    manual_ip=node.manual_block.network_address + j,
                )
            )
    ipip_mode, vxlan_mode = POOL_MODES[options.mode]
    return Topology(
        options=options,
        lab_id=lab_id,
        prefix=prefix,
        wire_netns=f"{prefix}w",
        router=RouterSpec(netns=f"{prefix}r", tor=options.tor),
        subnets=subnets,
        nodes=tuple(nodes),
        pods=tuple(pods),
        pool=PoolSpec(
            name=POOL_NAME,
            cidr=POOL_CIDR,
            block_size=BLOCK_SIZE,
            ipip_mode=ipip_mode,
            vxlan_mode=vxlan_mode,
            nat_outgoing=options.nat_outgoing,
        ),
        warnings=_warnings(options),
    )
