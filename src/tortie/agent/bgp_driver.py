"""The agent's side of BGP: which speaker runs, what it announces, what it learned.

Problem: the datastore says who this node peers with (Nodes, BGPConfiguration, BGPPeers)
and which blocks it holds; the speaker (ExaBGP, or BIRD 2 on a route reflector) carries
routes between nodes. This driver turns the agent's cluster view into the speaker's desired
state and hands learned routes back to the route calculation. The agent still programs every
kernel route itself; the speakers never do.

Invariants:
- Called only from the agent loop. Speaker events (on the speaker's thread) only nudge the
  loop (``notify``); the learned routes are read from the speaker on the loop's pass, so the
  loop never sees a half-applied change.
- The speaker kind follows the node's role: a route reflector cluster ID means BIRD,
  otherwise ExaBGP. A role change stops one and starts the other.
- Announced = this node's confirmed blocks plus addresses it holds in other nodes' blocks
  (borrowed /32s, which must win over the block owner's route by longest prefix).
- ``detach`` leaves the speaker running for the next agent (restart without route churn);
  ``stop`` withdraws and stops it (the node leaves).
- A speaker that runs but does not answer (issue 17, 9b: ExaBGP stopped with SIGSTOP) is a
  problem of the pass (``problem``: the node is not ready, the status file says why); the
  speaker itself kills and restarts it after a third of the hold time
  (:mod:`tortie.bgp.liveness`), as kubelet restarts calico-node when BIRD stops answering.

- Start-up grace: a speaker just started (or adopted after an agent restart) knows nothing
  yet; for ``startup_grace`` seconds its learned routes are *added to* the datastore's view
  (the same routes in a healthy cluster) instead of replacing it, so a restart never removes
  a route that is about to be learned again.

Hazards: a node without an IPv4 address cannot peer; that is reported, not raised into the
loop. Learned routes from several peers for one prefix (two reflectors) pick the lowest next
hop, deterministically.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from tortie.agent.state import ClusterState
from tortie.bgp.peering import PeeringPlan, compute_speaker_config
from tortie.bgp.types import (
    DEFAULT_HOLD_TIME,
    BGPError,
    LearnedRoute,
    Speaker,
    SpeakerConfig,
    SpeakerEvent,
)

log = logging.getLogger(__name__)

STARTUP_GRACE = 5.0

SpeakerFactory = Callable[[SpeakerConfig, Path, Callable[[SpeakerEvent], None]], Speaker]


def default_speaker_factory(
    config: SpeakerConfig, state_dir: Path, on_event: Callable[[SpeakerEvent], None]
) -> Speaker:
    if config.rr_cluster_id is not None:
        from tortie.bgp.bird import BirdSpeaker

        return BirdSpeaker(config, state_dir, on_event)
    from tortie.bgp.exabgp import ExaBGPSpeaker

    return ExaBGPSpeaker(config, state_dir, on_event)


class BgpDriver:
    def __init__(
        self,
        node_name: str,
        state_dir: Path,
        notify: Callable[[], None],
        factory: SpeakerFactory = default_speaker_factory,
        *,
        hold_time: int = DEFAULT_HOLD_TIME,
        startup_grace: float = STARTUP_GRACE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node_name = node_name
        self.state_dir = state_dir
        self._notify = notify
        self._factory = factory
        self.hold_time = hold_time
        self.startup_grace = startup_grace
        self._clock = clock
        self.trusted_at = 0.0  # learned routes are the whole truth from then on
        self.speaker: Speaker | None = None
        self.config: SpeakerConfig | None = None
        self.problem = ""
        # The peering plan depends only on nodes, BGP configurations and peers: it is
        # recomputed when one of them changed (every pass reaches sync, most for new blocks).
        self._plan_key: tuple[object, ...] | None = None
        self._plan: PeeringPlan | BGPError | None = None
        self._plan_state: ClusterState | None = None

    def _on_event(self, event: SpeakerEvent) -> None:
        # Speaker thread: nudge the loop, nothing else.
        self._notify()

    def sync(self, state: ClusterState, announce: Iterable[IPv4Network]) -> list[str]:
        """Bring the speaker in line with the cluster; returns what changed."""
        key = (self.hold_time, *state.version_of("nodes", "bgp_configs", "bgp_peers"))
        if key != self._plan_key or self._plan_state is not state or self._plan is None:
            try:
                self._plan = compute_speaker_config(
                    self.node_name,
                    state.nodes.values(),
                    state.bgp_configs.values(),
                    state.bgp_peers.values(),
                    hold_time=self.hold_time,
                )
            except BGPError as err:
                self._plan = err
            self._plan_key, self._plan_state = key, state
        plan = self._plan
        if isinstance(plan, BGPError):
            self.problem = str(plan)
            return []
        self.problem = ""
        changes: list[str] = []
        config = plan.config
        if (
            self.speaker is not None
            and self.config is not None
            and ((self.config.rr_cluster_id is None) != (config.rr_cluster_id is None))
        ):
            log.info(
                "BGP role changed (route reflector: %s): replacing the speaker",
                config.rr_cluster_id is not None,
            )
            self.speaker.stop(withdraw=True)
            self.speaker = None
            changes.append("speaker replaced")
        if self.speaker is None:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.speaker = self._factory(config, self.state_dir, self._on_event)
            self.speaker.start()
            self.trusted_at = self._clock() + self.startup_grace
            self.config = config
            changes.append(
                f"speaker started ({'BIRD route reflector' if config.rr_cluster_id else 'ExaBGP'}"
                f", {len(config.peers)} peer(s))"
            )
        elif config != self.config:
            self.speaker.update_config(config)
            self.config = config
            changes.append(f"speaker reconfigured ({len(config.peers)} peer(s))")
        wanted = frozenset(announce)
        if wanted != self.speaker.announced():
            self.speaker.set_announced(wanted)
            changes.append(f"announcing {len(wanted)} prefix(es)")
        unresponsive = self.unresponsive()
        if unresponsive:
            self.problem = f"BGP speaker not responding: {unresponsive}"
        return changes

    def unresponsive(self) -> str:
        """Why the speaker does not answer (it runs but is stopped or wedged), or "".

        The speaker judges this on its own thread (:mod:`tortie.bgp.liveness`), reports a
        flip as a :class:`SpeakerHealth` event (which nudges the loop, so this pass sees it)
        and kills a speaker that stays unresponsive past the restart threshold."""
        describe = getattr(self.speaker, "describe_liveness", None)
        liveness = getattr(self.speaker, "liveness", None)
        if not callable(liveness) or not callable(describe):
            return ""  # a speaker without liveness checks (test fakes)
        return "" if liveness().responding else str(describe())

    def authoritative(self) -> bool:
        """Whether learned routes are complete (past the start-up grace)."""
        return self.speaker is not None and self._clock() >= self.trusted_at

    def learned(self) -> dict[IPv4Network, IPv4Address]:
        """Prefix -> next hop of every route the speaker learned (lowest next hop on ties)."""
        if self.speaker is None:
            return {}
        best: dict[IPv4Network, IPv4Address] = {}
        routes: frozenset[LearnedRoute] = self.speaker.learned_routes()
        for route in routes:
            have = best.get(route.prefix)
            if have is None or route.next_hop < have:
                best[route.prefix] = route.next_hop
        return best

    def detach(self) -> None:
        """Agent restart: leave the speaker (and our routes at the peers) in place."""
        if self.speaker is not None:
            detach = getattr(self.speaker, "detach", None)
            if callable(detach):
                detach()
            self.speaker = None

    def stop(self) -> None:
        if self.speaker is not None:
            self.speaker.stop(withdraw=True)
            self.speaker = None
