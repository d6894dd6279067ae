"""Learned routes per peer, with graceful-restart staleness: a pure state machine.

Problem: a speaker learns routes from several peers and must tell the agent exactly what
changed. Sessions end in two ways that need different treatment (RFC 4724): a peer that
*restarts* (TCP closes without a NOTIFICATION, and it advertised graceful restart) keeps its
routes, marked stale, until it comes back and sends End-of-RIB (stale ones it did not resend
are then dropped) or its restart time runs out; any other end (hold timer expired, a
NOTIFICATION, no graceful restart) drops the peer's routes at once. The same staleness covers
our *own* restart: after the local speaker restarts, what we knew stays until each peer has
resent its routes.

Invariants:
- The table holds at most one route per (peer, prefix). Every method returns the events that
  make an observer's set of :class:`LearnedRoute` equal to :meth:`routes`: ``RouteAdded`` for a
  new route, ``RouteRemoved`` for a gone one; a changed next hop is ``RouteAdded(new)`` then
  ``RouteRemoved(old)``, so a prefix is never briefly without a route.
- Marking routes stale is invisible to observers; only removal is an event.
- No clocks inside: callers pass ``now``/deadlines (tests drive time).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from tortie.bgp.types import LearnedRoute, RouteAdded, RouteRemoved

__all__ = ["LearnedTable", "RouteEvent"]

RouteEvent = RouteAdded | RouteRemoved


@dataclass(slots=True)
class _Entry:
    next_hop: IPv4Address
    stale_until: float | None = None


class LearnedTable:
    """Routes learned from peers (see the module docstring)."""

    def __init__(self) -> None:
        self._by_peer: dict[IPv4Address, dict[IPv4Network, _Entry]] = {}

    # -- queries ------------------------------------------------------------------------

    def routes(self) -> frozenset[LearnedRoute]:
        return frozenset(
            LearnedRoute(prefix, entry.next_hop, peer)
            for peer, table in self._by_peer.items()
            for prefix, entry in table.items()
        )

    def peers(self) -> frozenset[IPv4Address]:
        return frozenset(self._by_peer)

    def stale_count(self, peer: IPv4Address | None = None) -> int:
        tables = [self._by_peer.get(peer, {})] if peer is not None else self._by_peer.values()
        return sum(1 for t in tables for e in t.values() if e.stale_until is not None)

    def next_deadline(self) -> float | None:
        deadlines = [
            e.stale_until
            for t in self._by_peer.values()
            for e in t.values()
            if e.stale_until is not None
        ]
        return min(deadlines) if deadlines else None

    def __len__(self) -> int:
        return sum(len(t) for t in self._by_peer.values())

    # -- updates --------------------------------------------------------------------------

    def set(
        self, peer: IPv4Address, prefix: IPv4Network, next_hop: IPv4Address
    ) -> list[RouteEvent]:
        """``peer`` announces ``prefix`` via ``next_hop`` (refreshes a stale route)."""
        table = self._by_peer.setdefault(peer, {})
        old = table.get(prefix)
        table[prefix] = _Entry(next_hop)
        if old is None:
            return [RouteAdded(LearnedRoute(prefix, next_hop, peer))]
        if old.next_hop == next_hop:
            return []
        return [
            RouteAdded(LearnedRoute(prefix, next_hop, peer)),
            RouteRemoved(LearnedRoute(prefix, old.next_hop, peer)),
        ]

    def remove(self, peer: IPv4Address, prefix: IPv4Network) -> list[RouteEvent]:
        """``peer`` withdraws ``prefix`` (a withdrawal of an unknown route is no event)."""
        table = self._by_peer.get(peer)
        if table is None or prefix not in table:
            return []
        entry = table.pop(prefix)
        if not table:
            del self._by_peer[peer]
        return [RouteRemoved(LearnedRoute(prefix, entry.next_hop, peer))]

    def drop_peer(self, peer: IPv4Address) -> list[RouteEvent]:
        """Everything from ``peer`` is gone (session ended for good, or peer removed)."""
        table = self._by_peer.pop(peer, {})
        return [RouteRemoved(LearnedRoute(p, e.next_hop, peer)) for p, e in sorted(table.items())]

    def keep_only_peers(self, peers: Iterable[IPv4Address]) -> list[RouteEvent]:
        """Drop the routes of every peer not in ``peers`` (it left the configuration)."""
        keep = set(peers)
        events: list[RouteEvent] = []
        for peer in sorted(self._by_peer):
            if peer not in keep:
                events.extend(self.drop_peer(peer))
        return events

    def mark_stale(self, until: float, peer: IPv4Address | None = None) -> None:
        """Routes of ``peer`` (all peers when ``None``) are stale until ``until``.

        An already stale route keeps its earlier deadline: a peer that flaps during its
        restart does not extend how long its old routes live.
        """
        tables = [self._by_peer.get(peer, {})] if peer is not None else self._by_peer.values()
        for table in tables:
            for entry in table.values():
                if entry.stale_until is None or entry.stale_until > until:
                    entry.stale_until = until

    def sweep_stale(self, peer: IPv4Address) -> list[RouteEvent]:
        """``peer`` has resent everything (End-of-RIB): its still-stale routes are gone."""
        table = self._by_peer.get(peer)
        if not table:
            return []
        gone = sorted(p for p, e in table.items() if e.stale_until is not None)
        events: list[RouteEvent] = []
        for prefix in gone:
            events.extend(self.remove(peer, prefix))
        return events

    def expire(self, now: float) -> list[RouteEvent]:
        """Drop stale routes whose deadline has passed."""
        events: list[RouteEvent] = []
        for peer in sorted(self._by_peer):
            table = self._by_peer[peer]
            gone = sorted(
                p for p, e in table.items() if e.stale_until is not None and e.stale_until <= now
            )
            for prefix in gone:
                events.extend(self.remove(peer, prefix))
        return events

    def replace_peer(
        self, peer: IPv4Address, routes: Iterable[tuple[IPv4Network, IPv4Address]]
    ) -> list[RouteEvent]:
        """Make ``peer``'s routes ``routes`` (a full table read from a speaker).

        Routes in ``routes`` are set (and so no longer stale); missing ones are removed,
        except stale ones: those wait for :meth:`sweep_stale` or :meth:`expire`.
        """
        wanted = dict(routes)
        events: list[RouteEvent] = []
        for prefix, next_hop in sorted(wanted.items()):
            events.extend(self.set(peer, prefix, next_hop))
        table = self._by_peer.get(peer, {})
        gone = sorted(p for p, e in table.items() if p not in wanted and e.stale_until is None)
        for prefix in gone:
            events.extend(self.remove(peer, prefix))
        return events
