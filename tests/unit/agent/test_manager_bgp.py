"""The BGP manager against a fake speaker: what it announces, the start-up grace as a wake-up,
a speaker that cannot start or does not answer as a failed item, retried."""

from __future__ import annotations

from ipaddress import IPv4Network
from pathlib import Path

import pytest
from agent_views import Cluster
from test_bgp_agent import FakeSpeaker, FrozenSpeaker

from tortie.agent.bgp_driver import BgpDriver
from tortie.agent.manager import Result, State
from tortie.agent.managers.bgp import BgpManager
from tortie.bgp.types import SpeakerConfig

pytestmark = pytest.mark.unit


class Rig:
    def __init__(self, tmp_path: Path) -> None:
        self.cluster = Cluster()
        self.cluster.pool(ipip="Always")
        self.cluster.node("node2", "192.168.49.3/24")
        self.now = 0.0
        self.speakers: list[FakeSpeaker] = []
        self.refuse: list[Exception] = []
        self.driver = BgpDriver(
            "node1",
            tmp_path / "bgp",
            lambda: None,
            self.factory,  # type: ignore[arg-type]
            startup_grace=5.0,
            clock=lambda: self.now,
        )
        self.manager = BgpManager(self.driver, clock=lambda: self.now)

    def factory(self, config: SpeakerConfig, _dir: Path, _cb: object) -> FakeSpeaker:
        if self.refuse:
            raise self.refuse.pop(0)
        self.speakers.append(FrozenSpeaker(config))
        return self.speakers[-1]

    def apply(self) -> Result:
        self.manager.update(self.cluster.view())
        return self.manager.apply()


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def test_announces_own_blocks_and_held_addresses_and_wakes_when_the_grace_ends(rig: Rig) -> None:
    mine = rig.cluster.ipam.assign(node="node1", handle="x.a")[0]
    other = rig.cluster.ipam.assign(node="node2", handle="x.b")[0]
    borrowed = str(IPv4Network(f"{other}/26", strict=False).network_address + 7)
    rig.cluster.ipam.assign(node="node1", handle="x.c", ip=borrowed)
    result = rig.apply()
    assert result.converged and result.wake_after == 5.0
    assert rig.speakers[0].announced() == {
        IPv4Network(f"{mine}/26", strict=False),
        IPv4Network(f"{borrowed}/32"),
    }
    assert not rig.manager.authoritative()
    rig.now += 5
    assert rig.apply().wake_after is None and rig.manager.authoritative()
    status = rig.manager.status()["bgp"]
    assert status == {
        "state_dir": str(rig.driver.state_dir),
        "speaker": "FrozenSpeaker",
        "problem": "",
    }


def test_a_speaker_that_cannot_start_is_a_failed_item_retried(rig: Rig) -> None:
    rig.refuse = [OSError(2, "No such file or directory: 'exabgp'")]
    result = rig.apply()
    item = result.items["speaker"]
    assert item.state is State.FAILED and item.message.startswith("BGP speaker: [Errno 2]")
    assert result.wake_after is None  # no speaker, no grace: the backoff brings the retry
    assert rig.apply().converged and rig.speakers


def test_a_speaker_that_does_not_answer_makes_the_pass_fail_until_it_does(rig: Rig) -> None:
    rig.now += 6
    rig.apply()
    frozen = rig.speakers[-1]
    assert isinstance(frozen, FrozenSpeaker)
    frozen.answering = False
    item = rig.apply().items["speaker"]
    assert "BGP speaker not responding: ExaBGP (PID 7) is stopped" in item.message
    frozen.answering = True
    assert rig.apply().converged
