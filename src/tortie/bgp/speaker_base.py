"""What every daemon-backed speaker shares: the announced set, the learned table, peer rows.

Problem: ExaBGP (:mod:`tortie.bgp.exabgp`) and BIRD (:mod:`tortie.bgp.bird`) differ in how
they are configured and how they report, but hold the same state the same way and answer the
same questions about it. This base keeps that state and those answers in one place; each
subclass sets the attributes in its ``__init__`` and implements :meth:`set_announced` (and
the rest of :class:`tortie.bgp.types.Speaker`).

Invariants: ``_lock`` is re-entrant (``announce`` calls ``set_announced`` while holding it);
event callbacks run outside it and a failing callback never stops the speaker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from ipaddress import IPv4Network

from tortie.bgp.liveness import Liveness, LivenessTracker
from tortie.bgp.process import Supervised
from tortie.bgp.routes import LearnedTable
from tortie.bgp.types import (
    EventCallback,
    LearnedRoute,
    PeerStatus,
    SpeakerConfig,
    SpeakerEvent,
    SpeakerHealth,
)

log = logging.getLogger(__name__)


class DaemonSpeaker:
    _config: SpeakerConfig
    _on_event: EventCallback | None
    _lock: threading.RLock
    _announced: frozenset[IPv4Network]
    _table: LearnedTable
    _peers: dict[str, PeerStatus]
    _daemon: Supervised
    _liveness: LivenessTracker

    @property
    def running(self) -> bool:
        return self._daemon.running

    def liveness(self) -> Liveness:
        """Whether the daemon answers, not only exists (:mod:`tortie.bgp.liveness`)."""
        return self._liveness.current

    def describe_liveness(self) -> str:
        return self._liveness.describe()

    def _judge(self, problem: str | None, name: str) -> None:
        """Fold one liveness observation in; report flips; kill the daemon when it has not
        answered for the restart threshold (its supervisor restarts it). Speaker thread."""
        if self._liveness.observe(problem):
            if problem is None:
                log.warning("%s answers again", name)
                self._emit([SpeakerHealth(True, f"{name} answers again")])
            else:
                log.warning("%s is not responding: %s", name, problem)
                self._emit([SpeakerHealth(False, f"not responding: {problem}")])
        if self._liveness.restart_due():
            why = f"not responding for {self._liveness.restart_after:.0f} s ({problem})"
            self._liveness.restarted()
            self._on_wedged()
            if self._daemon.kill(why):
                self._emit([SpeakerHealth(False, f"killed: {why}; restarting")])

    def _on_wedged(self) -> None:
        """Before the daemon is killed for not answering: drop connections to it."""

    @property
    def pid(self) -> int | None:
        return self._daemon.pid

    @property
    def config(self) -> SpeakerConfig:
        return self._config

    def set_announced(self, prefixes: Iterable[IPv4Network]) -> None:
        raise NotImplementedError

    def announce(self, prefix: IPv4Network) -> None:
        with self._lock:
            self.set_announced(self._announced | {IPv4Network(prefix)})

    def withdraw(self, prefix: IPv4Network) -> None:
        with self._lock:
            self.set_announced(self._announced - {IPv4Network(prefix)})

    def announced(self) -> frozenset[IPv4Network]:
        return self._announced

    def learned_routes(self) -> frozenset[LearnedRoute]:
        with self._lock:
            return self._table.routes()

    def peer_status(self) -> list[PeerStatus]:
        """One row per configured peer (``start``/``Idle`` until the daemon reports)."""
        with self._lock:
            rows = []
            for peer in self._config.peers:
                row = self._peers.get(str(peer.address))
                if row is None:
                    row = PeerStatus(str(peer.address), peer.peer_type, "start", None, "Idle")
                rows.append(row)
            return rows

    def _emit(self, events: Iterable[SpeakerEvent]) -> None:
        if self._on_event is None:
            return
        for event in events:
            try:
                self._on_event(event)
            except Exception:  # a consumer bug must not stop the speaker
                log.exception("event callback failed for %r", event)
