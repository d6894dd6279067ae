"""The values the agent and the BGP speakers exchange: desired config, learned routes, status.

Problem: the agent decides *what* this node's BGP speaker should do (its peers, the prefixes
it announces) from the datastore; the speaker (ExaBGP on ordinary nodes, BIRD 2 on route
reflectors) does it and reports back what it learned and how its sessions are. This module
is the whole vocabulary between the two, so that neither side knows the other's internals
and ``tortie.bgp`` never needs the datastore.

Invariants:
- Every value is a frozen dataclass of plain Python/ipaddress values, comparable and hashable,
  so the agent can diff them (``old != new``) and keep them in sets.
- IPv4 only: tortie's BGP carries IPv4 unicast (as Calico's "IPv4 BGP status" table does).
- :class:`SpeakerConfig` validates itself on construction (one peer per address, no peer
  at our own address, sane timers) and raises :class:`BGPConfigError` otherwise.
- Event callbacks run on the speaker's own thread; see :class:`Speaker`.

Hazards:
- ``BGPPeerSpec.password`` is a plain-text secret: it is kept out of ``repr``; speakers write
  it into their config files (mode 0600).
- ``hold_time`` 0 means "no keepalives, sessions never time out" (RFC 4271); a dead peer is
  then only noticed when TCP notices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Literal, Protocol

from tortie.errors import TortieError

__all__ = [
    "DEFAULT_GRACEFUL_RESTART",
    "DEFAULT_HOLD_TIME",
    "PEER_TYPES",
    "BGPConfigError",
    "BGPError",
    "BGPPeerSpec",
    "EventCallback",
    "LearnedRoute",
    "PeerChanged",
    "PeerStatus",
    "PeerType",
    "RouteAdded",
    "RouteRemoved",
    "Speaker",
    "SpeakerConfig",
    "SpeakerEvent",
    "SpeakerHealth",
]

# RFC 4271's suggested hold time. Calico inherits BIRD's 240 s; 90 s notices a dead node sooner
# and is what most routers use. Keepalive defaults to a third of the hold time.
DEFAULT_HOLD_TIME = 90
# Calico's default maximum restart time for graceful restart (nodeMeshMaxRestartTime).
DEFAULT_GRACEFUL_RESTART = 120

PeerType = Literal["node-to-node mesh", "global", "node specific", "route reflector"]
PEER_TYPES: tuple[PeerType, ...] = (
    "node-to-node mesh",
    "global",
    "node specific",
    "route reflector",
)


class BGPError(TortieError):
    """Base of the errors ``tortie.bgp`` raises on purpose."""


class BGPConfigError(BGPError):
    """A speaker configuration that cannot work (duplicate peer, bad timers...)."""


@dataclass(frozen=True, slots=True)
class BGPPeerSpec:
    """One BGP session this node should have.

    ``peer_type`` is what ``tortie node status`` shows: Calico's three kinds, plus
    ``route reflector`` when the peer is a tortie node acting as our reflector.
    ``node_name`` is set when the peer is a tortie node. ``passive`` peers are never dialled:
    between two tortie nodes exactly one side dials (the one with the higher address), as
    Calico does, so the two never collide. ``route_reflector_client`` is only meaningful on a
    reflector (BIRD): the peer is one of its clients.
    """

    address: IPv4Address
    asn: int
    peer_type: PeerType
    password: str | None = field(default=None, repr=False)
    hold_time: int = DEFAULT_HOLD_TIME
    keepalive: int | None = None
    port: int = 179
    route_reflector_client: bool = False
    passive: bool = False
    node_name: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.asn <= 0xFFFFFFFF:
            raise BGPConfigError(f"peer {self.address}: AS number {self.asn} is out of range")
        if self.peer_type not in PEER_TYPES:
            raise BGPConfigError(f"peer {self.address}: unknown peer type {self.peer_type!r}")
        if not (self.hold_time == 0 or 3 <= self.hold_time <= 65535):
            raise BGPConfigError(
                f"peer {self.address}: hold time {self.hold_time}s must be 0 or 3..65535"
            )
        if self.keepalive is not None and not (
            self.keepalive >= 1 and (self.hold_time == 0 or self.keepalive < self.hold_time)
        ):
            raise BGPConfigError(
                f"peer {self.address}: keepalive {self.keepalive}s must be at least 1s and "
                f"shorter than the hold time ({self.hold_time}s)"
            )
        if not 1 <= self.port <= 65535:
            raise BGPConfigError(f"peer {self.address}: port {self.port} is out of range")
        if self.password is not None and not 0 < len(self.password) <= 80:
            raise BGPConfigError(f"peer {self.address}: a TCP MD5 password is 1..80 characters")

    @property
    def effective_keepalive(self) -> int:
        """The keepalive interval actually used (a third of the hold time by default)."""
        if self.keepalive is not None:
            return self.keepalive
        return max(1, self.hold_time // 3) if self.hold_time else 0


@dataclass(frozen=True, slots=True)
class SpeakerConfig:
    """Everything a node's speaker needs: who we are and whom we talk to.

    ``rr_cluster_id`` set means this node is a route reflector (run BIRD). ``graceful_restart``
    is the restart time we advertise and the longest we keep a restarting peer's routes
    (seconds, 0 disables graceful restart).
    """

    node_name: str
    router_id: IPv4Address
    local_address: IPv4Address
    asn: int
    listen_port: int = 179
    peers: tuple[BGPPeerSpec, ...] = ()
    rr_cluster_id: IPv4Address | None = None
    graceful_restart: int = DEFAULT_GRACEFUL_RESTART

    def __post_init__(self) -> None:
        if not 1 <= self.asn <= 0xFFFFFFFF:
            raise BGPConfigError(f"AS number {self.asn} is out of range")
        if not 1 <= self.listen_port <= 65535:
            raise BGPConfigError(f"listen port {self.listen_port} is out of range")
        if not 0 <= self.graceful_restart <= 4095:
            raise BGPConfigError(
                f"graceful restart time {self.graceful_restart}s must be 0..4095 (RFC 4724)"
            )
        seen: set[IPv4Address] = set()
        for peer in self.peers:
            if peer.address == self.local_address:
                raise BGPConfigError(f"peer {peer.address} is this node's own address")
            if peer.address in seen:
                # Both speakers key a session by the peer's address alone.
                raise BGPConfigError(f"peer {peer.address} is listed twice")
            seen.add(peer.address)

    def peer(self, address: IPv4Address) -> BGPPeerSpec | None:
        for peer in self.peers:
            if peer.address == address:
                return peer
        return None

    @property
    def is_route_reflector(self) -> bool:
        return self.rr_cluster_id is not None


@dataclass(frozen=True, slots=True, order=True)
class LearnedRoute:
    """A route a peer sent us: ``prefix`` via ``next_hop``, learned from ``peer``.

    A route reflected by a reflector keeps the originating node's next hop, so ``next_hop``
    is the node to route through and ``peer`` is merely who told us.
    """

    prefix: IPv4Network
    next_hop: IPv4Address
    peer: IPv4Address


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """One row of ``tortie node status``.

    ``state`` is BIRD's protocol state as Calico shows it (``up``, ``start``, ``down``...),
    ``info`` the session detail (``Established``, ``Connect``, ``Active``, ``Passive``, or the
    last error), ``since`` the Unix time of the last state change (``None`` when unknown).
    """

    address: str
    peer_type: str
    state: str
    since: float | None
    info: str


@dataclass(frozen=True, slots=True)
class RouteAdded:
    route: LearnedRoute


@dataclass(frozen=True, slots=True)
class RouteRemoved:
    route: LearnedRoute


@dataclass(frozen=True, slots=True)
class PeerChanged:
    status: PeerStatus


@dataclass(frozen=True, slots=True)
class SpeakerHealth:
    """The speaker process: ``running`` or not, and why (crash, restart, backoff)."""

    running: bool
    detail: str


SpeakerEvent = RouteAdded | RouteRemoved | PeerChanged | SpeakerHealth
EventCallback = Callable[[SpeakerEvent], None]


class Speaker(Protocol):
    """What the agent drives: ExaBGP (:class:`tortie.bgp.exabgp.ExaBGPSpeaker`) or BIRD
    (:class:`tortie.bgp.bird.BirdSpeaker`).

    Events (``RouteAdded``/``RouteRemoved`` for learned routes, ``PeerChanged``,
    ``SpeakerHealth``) go to the ``on_event`` callback given at construction, on the
    speaker's thread, one at a time: it must be quick and must not raise (exceptions are
    logged and dropped). ``learned_routes()`` is the same view, for a full resync.
    """

    def start(self) -> None: ...

    def stop(self, *, withdraw: bool = True, timeout: float = 10.0) -> None: ...

    def update_config(self, config: SpeakerConfig) -> None: ...

    def set_announced(self, prefixes: Iterable[IPv4Network]) -> None: ...

    def announce(self, prefix: IPv4Network) -> None: ...

    def withdraw(self, prefix: IPv4Network) -> None: ...

    def announced(self) -> frozenset[IPv4Network]: ...

    def learned_routes(self) -> frozenset[LearnedRoute]: ...

    def peer_status(self) -> list[PeerStatus]: ...

    @property
    def running(self) -> bool: ...
