"""Which BGP sessions a node has: Calico's peering rules, as a pure function.

Problem: from the cluster's Nodes, its BGPConfiguration and BGPPeers, each node must work out
its own peers exactly as every other node works out theirs, so that both ends of every
session agree. Calico does this in confd (``updatePeersV1`` and the BIRD config processor);
this module reproduces those rules, with no I/O, for :func:`compute_speaker_config`.

Rules (Calico's):
- AS numbers: a node's ``spec.bgp.asNumber``, else the ``default`` BGPConfiguration's
  ``asNumber`` (64512). Listen port: BGPConfiguration ``node.<name>``, else ``default``, else 179.
- Route reflectors are the nodes with ``spec.bgp.routeReflectorClusterID``.
- Node-to-node mesh (``nodeToNodeMeshEnabled``, default true): a node that is not a reflector
  peers with every other node that has an IPv4 address and is not a reflector. A reflector
  never takes part in the mesh.
- BGPPeer without ``node``/``nodeSelector``: a *global* peering for every node. With one:
  a *node specific* peering for the selected nodes. The peer is ``peerIP`` (with ``asNumber``)
  or every node matching ``peerSelector`` (at its own AS and listen port).
- Symmetry: for every BGPPeer, the nodes it points at (``peerSelector``, or the node owning
  ``peerIP`` with that AS) get the reverse peering to the nodes it applies to. So
  ``nodeSelector: all()`` + ``peerSelector: route-reflector == 'true'`` (Calico's documented
  recipe) gives every node a session to each reflector *and* every reflector a session to
  every node.
- First peering wins: global ones are emitted first (BGPPeers in name order), then node
  specific ones, then reverse ones; a node specific peering to an address that already has
  a global peering is dropped. Nobody peers with its own address.
- On a reflector, every iBGP peer that is not in the same cluster (no cluster ID, or another)
  is a route-reflector client.
- Between two tortie nodes the one with the higher address dials and the other is passive
  (Calico does this for mesh and global peerings; tortie for all node peerings, so two
  ExaBGPs never collide).

tortie additions (said in the returned ``notes``): when the mesh and a BGPPeer name the same
address, the mesh session wins (one session per address); IPv6 peers are skipped (tortie's
BGP is IPv4); a password from a ``secretKeyRef`` needs ``resolve_secret``; a peer that is a
tortie reflector *for us* is shown as ``route reflector`` rather than Calico's ``node
specific``.

Invariants: the result depends only on the inputs (order of the iterables included: nodes
and BGPPeers are sorted by name); peers come out sorted by address.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv6Address

from tortie.bgp.types import (
    DEFAULT_GRACEFUL_RESTART,
    DEFAULT_HOLD_TIME,
    BGPConfigError,
    BGPPeerSpec,
    PeerType,
    SpeakerConfig,
)
from tortie.model.resources import BGPConfiguration, BGPPeer, Node, SecretKeyRef
from tortie.model.selector import Selector

__all__ = ["NodeInfo", "PeeringPlan", "compute_speaker_config", "node_info"]

DEFAULT_AS = 64512
SecretResolver = Callable[[SecretKeyRef], str | None]


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What peering needs to know about one node."""

    name: str
    address: IPv4Address | None
    asn: int
    labels: Mapping[str, str]
    rr_cluster_id: IPv4Address | None
    listen_port: int

    @property
    def is_reflector(self) -> bool:
        return self.rr_cluster_id is not None


@dataclass(frozen=True, slots=True)
class PeeringPlan:
    """The speaker configuration for one node, and what was skipped or chosen, and why."""

    config: SpeakerConfig
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Candidate:
    """A peer before the per-BGPPeer settings are applied."""

    address: IPv4Address
    asn: int
    port: int
    node: NodeInfo | None  # set when the peer is a tortie node


@dataclass(frozen=True, slots=True)
class _Peering:
    candidate: _Candidate
    peer_type: PeerType
    source: BGPPeer | None  # None for the mesh


def node_info(node: Node, global_as: int, listen_port: int) -> NodeInfo:
    bgp = node.spec.bgp
    address = None
    if bgp is not None and bgp.ipv4_address:
        address = IPv4Interface(bgp.ipv4_address).ip
    cluster = None
    if bgp is not None and bgp.route_reflector_cluster_id:
        cluster = IPv4Address(bgp.route_reflector_cluster_id)
    asn = bgp.as_number if bgp is not None and bgp.as_number is not None else global_as
    return NodeInfo(
        name=node.name,
        address=address,
        asn=asn,
        labels=dict(node.metadata.labels),
        rr_cluster_id=cluster,
        listen_port=listen_port,
    )


def compute_speaker_config(
    local_node: str,
    nodes: Iterable[Node],
    bgp_configs: Iterable[BGPConfiguration] = (),
    bgp_peers: Iterable[BGPPeer] = (),
    *,
    hold_time: int = DEFAULT_HOLD_TIME,
    keepalive: int | None = None,
    graceful_restart: int = DEFAULT_GRACEFUL_RESTART,
    resolve_secret: SecretResolver | None = None,
) -> PeeringPlan:
    """This node's :class:`SpeakerConfig` by Calico's rules (see the module docstring).

    Raises :class:`BGPConfigError` when ``local_node`` is not among ``nodes`` or has no
    IPv4 address (it cannot speak BGP then; the agent reports that).
    """
    configs = {c.name: c for c in bgp_configs}
    default = configs.get("default")
    global_as = default.spec.as_number if default is not None else DEFAULT_AS
    mesh_enabled = default.spec.node_to_node_mesh_enabled if default is not None else True
    global_port = default.spec.listen_port if default is not None else 179

    def port_of(name: str) -> int:
        per_node = configs.get(f"node.{name}")
        return per_node.spec.listen_port if per_node is not None else global_port

    infos = {n.name: node_info(n, global_as, port_of(n.name)) for n in sorted(nodes, key=_by_name)}
    me = infos.get(local_node)
    if me is None:
        raise BGPConfigError(f"node {local_node!r} has no Node resource; it cannot peer")
    if me.address is None:
        raise BGPConfigError(
            f"node {local_node!r} has no spec.bgp.ipv4Address; it cannot speak BGP"
        )
    my_address = me.address
    notes: list[str] = []
    peers_sorted = sorted(bgp_peers, key=_by_name)

    # -- mesh ---------------------------------------------------------------------------
    chosen: dict[IPv4Address, _Peering] = {}
    if mesh_enabled and not me.is_reflector:
        for other in infos.values():
            if other.address is None or other.is_reflector or other.address == my_address:
                continue
            cand = _Candidate(other.address, other.asn, other.listen_port, other)
            chosen[other.address] = _Peering(cand, "node-to-node mesh", None)

    # -- BGPPeers: global pass, node specific pass, reverse pass -------------------------
    # Calico keys peerings by (address, port) in separate global/node namespaces; tortie's
    # speakers key sessions by address alone, so the first peering of an address wins and
    # later ones are noted.
    explicit: dict[IPv4Address, _Peering] = {}

    def emit(cand: _Candidate, peer_type: PeerType, source: BGPPeer) -> None:
        if cand.address == my_address:
            return
        if cand.address in chosen:
            if chosen[cand.address].peer_type == "node-to-node mesh":
                notes.append(
                    f"BGPPeer {source.name}: {cand.address} is already a node-to-node mesh "
                    "peer; the mesh session is kept"
                )
            return
        if cand.address in explicit:
            return
        explicit[cand.address] = _Peering(cand, peer_type, source)

    for bp in peers_sorted:
        if bp.spec.node is None and bp.spec.node_selector is None:
            for cand in _expand(bp, infos, notes):
                emit(cand, "global", bp)
    for bp in peers_sorted:
        selects_nodes = bp.spec.node is not None or bp.spec.node_selector is not None
        if selects_nodes and local_node in _applies_to(bp, infos):
            for cand in _expand(bp, infos, notes):
                emit(cand, "node specific", bp)
    for bp in peers_sorted:
        if local_node not in _pointed_at(bp, infos):
            continue
        for name in _applies_to(bp, infos):
            other = infos[name]
            if other.address is None:
                continue
            cand = _Candidate(other.address, other.asn, other.listen_port, other)
            emit(cand, "node specific", bp)
    chosen.update(explicit)

    specs = [
        _spec(
            me,
            p,
            default_hold=hold_time,
            default_keepalive=keepalive,
            resolve_secret=resolve_secret,
            notes=notes,
        )
        for p in (chosen[a] for a in sorted(chosen))
    ]
    config = SpeakerConfig(
        node_name=me.name,
        router_id=my_address,
        local_address=my_address,
        asn=me.asn,
        listen_port=me.listen_port,
        peers=tuple(specs),
        rr_cluster_id=me.rr_cluster_id,
        graceful_restart=graceful_restart,
    )
    return PeeringPlan(config=config, notes=tuple(dict.fromkeys(notes)))


def _by_name(resource: Node | BGPPeer) -> str:
    return resource.name


def _matching(selector_text: str, infos: Mapping[str, NodeInfo]) -> list[str]:
    selector = Selector.parse(selector_text)
    return [name for name, info in infos.items() if selector.matches(info.labels)]


def _applies_to(bp: BGPPeer, infos: Mapping[str, NodeInfo]) -> list[str]:
    """The nodes a BGPPeer configures (``node``, ``nodeSelector``, or all for a global one)."""
    if bp.spec.node is not None:
        return [bp.spec.node] if bp.spec.node in infos else []
    if bp.spec.node_selector is not None:
        return _matching(bp.spec.node_selector, infos)
    return list(infos)


def _pointed_at(bp: BGPPeer, infos: Mapping[str, NodeInfo]) -> list[str]:
    """The tortie nodes a BGPPeer names as its peers (they get the reverse peering)."""
    if bp.spec.peer_selector is not None:
        return _matching(bp.spec.peer_selector, infos)
    address, port = bp.spec.peer_address, bp.spec.peer_port
    return [
        name
        for name, info in infos.items()
        if info.address is not None
        and info.address == address
        and info.asn == bp.spec.as_number
        and (port is None or port == info.listen_port)
    ]


def _expand(bp: BGPPeer, infos: Mapping[str, NodeInfo], notes: list[str]) -> list[_Candidate]:
    """The peers a BGPPeer names: the selected nodes, or its ``peerIP``."""
    if bp.spec.peer_selector is not None:
        return [
            _Candidate(info.address, info.asn, info.listen_port, info)
            for name in _matching(bp.spec.peer_selector, infos)
            if (info := infos[name]).address is not None
        ]
    address = bp.spec.peer_address
    if isinstance(address, IPv6Address) or address is None:
        notes.append(f"BGPPeer {bp.name}: IPv6 peer {address} skipped (tortie's BGP is IPv4)")
        return []
    asn = bp.spec.as_number
    assert asn is not None  # the model requires asNumber with peerIP
    owner = next(
        (i for i in infos.values() if i.address == address and i.asn == asn),
        None,
    )
    port = bp.spec.peer_port
    if port is None:
        # Calico: a peerIP that is one of our nodes is dialled at that node's listen port.
        port = owner.listen_port if owner is not None else 179
    return [_Candidate(address, asn, port, owner)]


def _spec(
    me: NodeInfo,
    peering: _Peering,
    *,
    default_hold: int,
    default_keepalive: int | None,
    resolve_secret: SecretResolver | None,
    notes: list[str],
) -> BGPPeerSpec:
    cand, source = peering.candidate, peering.source
    hold, keepalive, password = default_hold, default_keepalive, None
    if source is not None:
        spec = source.spec
        if spec.hold is not None:
            hold = int(spec.hold.total_seconds())
        if spec.keepalive is not None:
            keepalive = int(spec.keepalive.total_seconds())
        if spec.password is not None:
            if spec.password.value is not None:
                password = spec.password.value
            elif spec.password.secret_key_ref is not None:
                ref = spec.password.secret_key_ref
                password = resolve_secret(ref) if resolve_secret is not None else None
                if password is None:
                    notes.append(
                        f"BGPPeer {source.name}: password secret {ref.name}/{ref.key} could not "
                        "be read; the session is configured without a password and will fail"
                    )
    if keepalive is not None and hold and keepalive >= hold:
        keepalive = None  # a default keepalive must not break a shorter BGPPeer hold time
    other = cand.node
    peer_type = peering.peer_type
    rr_client = False
    if me.is_reflector and cand.asn == me.asn:
        # Calico: an iBGP peer outside our cluster is our client.
        rr_client = other is None or other.rr_cluster_id != me.rr_cluster_id
    if (
        other is not None
        and other.is_reflector
        and other.rr_cluster_id != me.rr_cluster_id
        and other.asn == me.asn
    ):
        peer_type = "route reflector"
    my_address = me.address
    assert my_address is not None
    return BGPPeerSpec(
        address=cand.address,
        asn=cand.asn,
        peer_type=peer_type,
        password=password,
        hold_time=hold,
        keepalive=keepalive,
        port=cand.port,
        route_reflector_client=rr_client,
        # Between tortie nodes the higher address dials; the lower one waits.
        passive=other is not None and cand.address > my_address,
        node_name=other.name if other is not None else None,
    )
