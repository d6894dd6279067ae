"""The agent with BGP on: what it announces, and routes from what the speaker learned."""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest
from test_loop import FakeBackend, Harness

from tortie.agent.bgp_driver import BgpDriver
from tortie.agent.config import AgentConfig, NodeAddress
from tortie.agent.node import NodeAgent
from tortie.bgp.liveness import Liveness
from tortie.bgp.types import LearnedRoute, PeerStatus, SpeakerConfig, SpeakerEvent
from tortie.datastore.syncer import Update


class FakeSpeaker:
    def __init__(self, config: SpeakerConfig) -> None:
        self.config = config
        self._announced: frozenset[IPv4Network] = frozenset()
        self.learned: set[LearnedRoute] = set()
        self.started = False
        self.detached = False

    def start(self) -> None:
        self.started = True

    def stop(self, *, withdraw: bool = True, timeout: float = 10.0) -> None:
        self.started = False

    def detach(self) -> None:
        self.detached = True

    def update_config(self, config: SpeakerConfig) -> None:
        self.config = config

    def set_announced(self, prefixes: Iterable[IPv4Network]) -> None:
        self._announced = frozenset(prefixes)

    def announce(self, prefix: IPv4Network) -> None:
        self._announced |= {prefix}

    def withdraw(self, prefix: IPv4Network) -> None:
        self._announced -= {prefix}

    def announced(self) -> frozenset[IPv4Network]:
        return self._announced

    def learned_routes(self) -> frozenset[LearnedRoute]:
        return frozenset(self.learned)

    def peer_status(self) -> list[PeerStatus]:
        return []

    @property
    def running(self) -> bool:
        return self.started


class BgpHarness(Harness):
    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.speakers: list[FakeSpeaker] = []

        def factory(config: SpeakerConfig, _dir: Path, _cb: object) -> FakeSpeaker:
            sp = FakeSpeaker(config)
            self.speakers.append(sp)
            return sp

        self.driver = BgpDriver(
            "node1",
            tmp_path / "bgp",
            lambda: None,
            factory,  # type: ignore[arg-type]
            startup_grace=5.0,
            clock=lambda: self.now,
        )
        cfg = AgentConfig(node_name="node1", datastore_url="memory://", state_dir=tmp_path)
        addr = NodeAddress(IPv4Interface("192.168.49.2/24"), "eth0", "test")
        self.agent = NodeAgent(
            cfg,
            self.store,
            self.kernel,
            addr,
            lambda: (self.backend, "t"),
            ipam=self.ipam,
            bgp=self.driver,
            clock=lambda: self.now,
        )
        self.agent.register()

    @property
    def speaker(self) -> FakeSpeaker:
        return self.speakers[-1]


@pytest.fixture
def b(tmp_path: Path) -> BgpHarness:
    return BgpHarness(tmp_path)


def learned(prefix: IPv4Network, hop: str) -> LearnedRoute:
    return LearnedRoute(prefix, IPv4Address(hop), IPv4Address(hop))


def test_announces_own_blocks_and_borrowed_addresses(b: BgpHarness) -> None:
    b.set_mode("Always")
    b.add_node("node2", "192.168.49.3/24")
    mine = b.ipam.assign(node="node1", handle="x.a")[0]
    other_block = IPv4Network(f"{b.ipam.assign(node='node2', handle='x.b')[0]}/26", strict=False)
    borrowed = str(other_block.network_address + 7)
    b.ipam.assign(node="node1", handle="x.c", ip=borrowed)
    b.sync()
    sp = b.speaker
    assert sp.started
    assert [str(p.address) for p in sp.config.peers] == ["192.168.49.3"]
    assert sp.announced() == {
        IPv4Network(f"{mine}/26", strict=False),
        IPv4Network(f"{borrowed}/32"),
    }


def test_routes_follow_learned_routes_after_the_startup_grace(b: BgpHarness) -> None:
    b.set_mode("Always")
    b.add_node("node2", "192.168.49.3/24")
    block = IPv4Network(f"{b.ipam.assign(node='node2', handle='x.b')[0]}/26", strict=False)
    b.sync()
    # Within the grace: the datastore's route stands in for the not-yet-learned one.
    assert b.routes()[str(block)] == "via 192.168.49.3 dev tunl0 onlink"
    b.now += 6
    b.agent.run_once()
    assert str(block) not in b.routes()  # nothing learned: BGP is the truth now
    b.speaker.learned.add(learned(block, "192.168.49.3"))
    b.agent.nudge()
    b.agent.run_once()
    assert b.routes()[str(block)] == "via 192.168.49.3 dev tunl0 onlink"
    # The peer dies: its routes are withdrawn, and so is ours to it.
    b.speaker.learned.clear()
    b.agent.nudge()
    b.agent.run_once()
    assert str(block) not in b.routes()


def test_restart_adopts_without_removing_routes(b: BgpHarness, tmp_path: Path) -> None:
    b.set_mode("Always")
    b.add_node("node2", "192.168.49.3/24")
    block = IPv4Network(f"{b.ipam.assign(node='node2', handle='x.b')[0]}/26", strict=False)
    b.sync()
    b.speaker.learned.add(learned(block, "192.168.49.3"))
    b.now += 6
    b.sync()  # also delivers our own tunnel address's block, claimed in the first pass
    writes = b.kernel.route_writes
    b.driver.detach()
    assert b.speaker.detached
    # A new agent and driver: its speaker has learned nothing yet.
    driver = BgpDriver(
        "node1",
        tmp_path / "bgp",
        lambda: None,
        lambda c, d, e: FakeSpeaker(c),  # type: ignore[arg-type,return-value]
        clock=lambda: b.now,
    )
    cfg = b.cfg
    addr = NodeAddress(IPv4Interface("192.168.49.2/24"), "eth0", "test")
    b.agent = NodeAgent(
        cfg,
        b.store,
        b.kernel,
        addr,
        lambda: (FakeBackend(b.kernel), "t"),
        ipam=b.ipam,
        bgp=driver,
        clock=lambda: b.now,
    )
    b.sync()
    assert b.kernel.route_writes == writes, b.kernel.ops
    assert b.routes()[str(block)] == "via 192.168.49.3 dev tunl0 onlink"


def test_events_only_nudge_the_loop(tmp_path: Path) -> None:
    nudges: list[int] = []
    driver = BgpDriver("n", tmp_path, lambda: nudges.append(1))
    event: SpeakerEvent = learned_event()
    driver._on_event(event)
    assert nudges == [1]


def learned_event() -> SpeakerEvent:
    from tortie.bgp.types import RouteAdded

    return RouteAdded(learned(IPv4Network("10.244.1.0/26"), "192.168.49.3"))


def test_peering_plan_is_recomputed_only_when_nodes_or_bgp_resources_change(
    b: BgpHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tortie.agent import bgp_driver

    calls: list[int] = []
    real = bgp_driver.compute_speaker_config

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(bgp_driver, "compute_speaker_config", counting)
    b.set_mode("Always")
    b.add_node("node2", "192.168.49.3/24")
    b.sync()
    assert len(calls) == 1
    # New blocks (the common event) reach sync on every pass, but not the peering.
    for k in range(3):
        cidr = f"10.244.{10 + k}.0/26"
        b.ipam.assign(node="node1", handle=f"x.{k}", ip=cidr.replace(".0/26", ".1"))
        for kv in b.store.list("/tortie/ipam/").items:
            b.agent.on_sync_event(Update(kv.key, kv.value, kv.mod_revision))
        b.agent.run_once()
    assert len(calls) == 1
    assert b.speaker.announced() >= {IPv4Network(f"10.244.{10 + k}.0/26") for k in range(3)}
    # A new node changes the peers: recomputed once, and the speaker follows.
    b.add_node("node3", "192.168.49.4/24")
    kv = next(kv for kv in b.store.list("/tortie/").items if kv.key.endswith("/node3"))
    b.agent.on_sync_event(Update(kv.key, kv.value, kv.mod_revision))
    b.agent.run_once()
    assert len(calls) == 2
    assert sorted(str(p.address) for p in b.speaker.config.peers) == [
        "192.168.49.3",
        "192.168.49.4",
    ]


class FrozenSpeaker(FakeSpeaker):
    """A fake whose process "runs" but does not answer (ExaBGP stopped with SIGSTOP)."""

    def __init__(self, config: SpeakerConfig) -> None:
        super().__init__(config)
        self.answering = True

    def liveness(self) -> Liveness:
        return Liveness() if self.answering else Liveness(False, "ExaBGP (PID 7) is stopped", 0)

    def describe_liveness(self) -> str:
        return "responding" if self.answering else "ExaBGP (PID 7) is stopped (for 6 s)"


def test_an_unresponsive_speaker_makes_the_node_not_ready_until_it_answers(
    tmp_path: Path,
) -> None:
    b = BgpHarness(tmp_path)
    frozen: list[FrozenSpeaker] = []

    def factory(config: SpeakerConfig, _dir: Path, _cb: object) -> FrozenSpeaker:
        frozen.append(FrozenSpeaker(config))
        return frozen[-1]

    b.driver._factory = factory  # type: ignore[assignment]
    b.set_mode("Always")
    b.add_node("node2", "192.168.49.3/24")
    b.now += 6
    b.sync()
    assert b.agent.board.ready() == (True, "ok")
    frozen[-1].answering = False  # the speaker's thread saw it and nudged the loop
    b.agent.nudge()
    b.agent.run_once()
    ready, why = b.agent.board.ready()
    assert not ready and "BGP speaker not responding: ExaBGP (PID 7) is stopped" in why
    bgp = b.agent.status()["bgp"]
    assert isinstance(bgp, dict) and "not responding" in str(bgp["problem"])
    frozen[-1].answering = True
    b.agent.nudge()
    b.agent.run_once()
    assert b.agent.board.ready() == (True, "ok")
