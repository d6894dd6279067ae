"""A speaker's liveness, not only its process (issue 17, 9b): probes, verdicts, the restart
threshold, the helper's probe, ``tortie node status`` on a frozen speaker, and BIRD's poll.

Processes here are the test's own children (a sleeper it stops with SIGSTOP, a stand-in for
BIRD), signalled by their PIDs and reaped at the end.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from tortie.bgp import bird as bird_module
from tortie.bgp.bird import BirdSpeaker
from tortie.bgp.exabgp_helper import Helper, HelperState
from tortie.bgp.liveness import (
    MIN_RESTART_AFTER,
    NO_HOLD_RESTART_AFTER,
    PROBE_COMMAND,
    PROBE_INTERVAL,
    LivenessTracker,
    process_state,
    restart_after,
    stopped_detail,
)
from tortie.bgp.speaker_base import DaemonSpeaker
from tortie.bgp.status import fetch, render_status, status_json
from tortie.bgp.types import BGPError, BGPPeerSpec, PeerStatus, SpeakerConfig, SpeakerHealth

ME = IPv4Address("10.99.0.1")


def config(*holds: int) -> SpeakerConfig:
    peers = tuple(
        BGPPeerSpec(IPv4Address(f"10.99.0.{i + 2}"), 64512, "node-to-node mesh", hold_time=h)
        for i, h in enumerate(holds)
    )
    return SpeakerConfig("n1", ME, ME, 64512, peers=peers)


def wait(pred: Callable[[], Any], timeout: float = 10.0, what: str = "it") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def stopped_child() -> Iterator[subprocess.Popen[bytes]]:
    """A sleeping child of this test, stopped with SIGSTOP (by its PID), killed afterwards."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        os.kill(proc.pid, signal.SIGSTOP)
        wait(lambda: process_state(proc.pid) == "T", what="the child to stop")
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="tt-l-") as tmp:
        yield Path(tmp)


# -- the policy ---------------------------------------------------------------------------------


def test_restart_threshold_is_a_third_of_the_smallest_hold_time_with_a_floor() -> None:
    assert restart_after(config(90)) == 30.0
    assert restart_after(config(240, 90, 0)) == 30.0  # the smallest non-zero one
    assert restart_after(config(9)) == MIN_RESTART_AFTER
    assert restart_after(config(0)) == NO_HOLD_RESTART_AFTER
    assert restart_after(config()) == NO_HOLD_RESTART_AFTER
    # Peers' hold timers expire 2/3 H after a freeze at the earliest: the restart comes first.
    for hold in (30, 90, 240):
        assert restart_after(config(hold)) < 2 * hold / 3


def test_process_state_from_a_fake_proc(tmp_path: Path) -> None:
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "stat").write_text("7 (exa bgp) (x) T 1 7 7 0 -1")
    (tmp_path / "8").mkdir()
    (tmp_path / "8" / "stat").write_text("8 (python) t 1 8 8 0 -1")
    assert process_state(7, tmp_path) == "T"
    assert "SIGSTOP" in (stopped_detail("ExaBGP", 7, tmp_path) or "")
    assert "tracer" in (stopped_detail("ExaBGP", 8, tmp_path) or "")
    assert process_state(9, tmp_path) is None and stopped_detail("x", 9, tmp_path) is None
    assert process_state(None) is None


def test_a_real_stopped_process_is_seen(stopped_child: subprocess.Popen[bytes]) -> None:
    assert "is stopped" in (stopped_detail("ExaBGP", stopped_child.pid) or "")
    os.kill(stopped_child.pid, signal.SIGCONT)
    wait(lambda: process_state(stopped_child.pid) in ("S", "R"), what="the child to continue")
    assert stopped_detail("ExaBGP", stopped_child.pid) is None


def test_tracker_flips_and_says_when_to_restart() -> None:
    now = [100.0]
    t = LivenessTracker(10.0, clock=lambda: now[0])
    assert t.observe(None) is False and t.current.responding
    assert t.observe("no answer") is True  # flipped
    now[0] += 6
    assert t.observe("still no answer") is False and not t.restart_due()
    assert t.current.since == 100.0 and t.describe() == "still no answer (for 6 s)"
    now[0] += 4
    t.observe("still no answer")
    assert t.restart_due()
    t.restarted()
    assert t.current.responding and t.restarts == 1 and not t.restart_due()
    assert t.observe("again") is True
    assert t.observe(None) is True and t.current.responding  # recovered: flips back


class FakeDaemon:
    def __init__(self) -> None:
        self.killed: list[str] = []

    def kill(self, why: str) -> bool:
        self.killed.append(why)
        return True


class JudgedSpeaker(DaemonSpeaker):
    def __init__(self, clock: Callable[[], float]) -> None:
        self.events: list[object] = []
        self._on_event = self.events.append
        self._liveness = LivenessTracker(10.0, clock=clock)
        self._daemon = FakeDaemon()  # type: ignore[assignment]
        self.wedged = 0

    def _on_wedged(self) -> None:
        self.wedged += 1


def test_judge_reports_flips_and_kills_after_the_threshold() -> None:
    now = [0.0]
    sp = JudgedSpeaker(lambda: now[0])
    sp._judge(None, "ExaBGP")
    assert sp.events == []
    sp._judge("ExaBGP (PID 5) is stopped", "ExaBGP")
    assert sp.events == [SpeakerHealth(False, "not responding: ExaBGP (PID 5) is stopped")]
    assert not sp.liveness().responding
    now[0] = 9.9
    sp._judge("ExaBGP (PID 5) is stopped", "ExaBGP")
    assert sp._daemon.killed == []  # type: ignore[attr-defined]
    now[0] = 10.0
    sp._judge("ExaBGP (PID 5) is stopped", "ExaBGP")
    assert len(sp._daemon.killed) == 1 and sp.wedged == 1  # type: ignore[attr-defined]
    assert isinstance(sp.events[-1], SpeakerHealth) and "killed" in sp.events[-1].detail
    assert sp.liveness().responding  # the new process gets its own time
    sp._judge("again", "ExaBGP")
    sp._judge(None, "ExaBGP")
    assert sp.events[-1] == SpeakerHealth(True, "ExaBGP answers again")


# -- the helper probes ExaBGP --------------------------------------------------------------


def test_helper_probes_a_quiet_exabgp_and_counts_unanswered_time() -> None:
    s = HelperState()
    s.heard(100.0)
    s.probe(100.0 + PROBE_INTERVAL / 2)
    assert s.commands == []  # heard recently: no question needed
    s.probe(100.0 + PROBE_INTERVAL)
    assert s.commands == [PROBE_COMMAND]
    s.sent(102.0)
    assert s.silent_for(105.5) == 3.5
    s.commands.clear()
    s.probe(103.0)
    assert s.commands == []  # an answer is owed: wait for it
    s.probe(104.0)
    assert s.commands == [PROBE_COMMAND]  # still owed after PROBE_INTERVAL: ask again
    s.probe(105.0)
    assert s.commands == [PROBE_COMMAND]  # not more than once per PROBE_INTERVAL
    s.sent(104.0)
    assert s.silent_for(110.0) == 8.0  # counted from the first unanswered command
    s.heard(110.0)
    assert s.silent_for(111.0) == 0.0
    s.sent(111.0)
    s.sent(112.0)  # a second command does not restart the clock of the first
    assert s.silent_for(113.0) == 2.0


def test_helper_status_says_whether_exabgp_answers(short_tmp: Path) -> None:
    exa_r, helper_in = os.pipe()  # what "ExaBGP" writes, the helper reads
    os.set_blocking(exa_r, False)
    out = io.StringIO()
    helper = Helper(short_tmp / "h.sock", None, stdin_fd=exa_r, stdout=out)
    thread = threading.Thread(target=helper.run, daemon=True)
    thread.start()
    try:

        def status() -> dict[str, Any]:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect(str(short_tmp / "h.sock"))
                sock.sendall(b'{"op":"status"}\n')
                doc: dict[str, Any] = json.loads(sock.makefile("rb").readline())
                return doc

        assert status()["exabgp"] == {"pid": os.getppid(), "silent_for": 0.0}
        # "ExaBGP" never answers: the helper's probe goes unanswered.
        wait(lambda: PROBE_COMMAND in out.getvalue(), 5, "the probe")
        wait(lambda: status()["exabgp"]["silent_for"] >= 0.5, 5, "silence to count")
        os.write(helper_in, b"done\n")
        wait(lambda: status()["exabgp"]["silent_for"] == 0.0, 5, "the answer to count")
    finally:
        os.close(helper_in)  # EOF: the helper exits, as when ExaBGP dies
        thread.join(5)
        os.close(exa_r)


# -- tortie node status on a frozen speaker ------------------------------------------------

ROW = {
    "address": "10.0.0.2",
    "peer_type": "node-to-node mesh",
    "state": "up",
    "since": 5.0,
    "info": "Established",
}


def _helper_answering(path: Path, reply: dict[str, Any] | None) -> socket.socket:
    """A fake helper: answers each status request with ``reply`` (or never, when None)."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)

    def run() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(1024)
                if reply is None:
                    time.sleep(5)  # a wedged helper
                else:
                    conn.sendall(json.dumps(reply).encode() + b"\n")

    threading.Thread(target=run, daemon=True).start()
    return server


def test_status_of_a_stopped_exabgp_is_not_established(
    short_tmp: Path, stopped_child: subprocess.Popen[bytes]
) -> None:
    reply = {"type": "status", "peers": [ROW], "exabgp": {"pid": stopped_child.pid}}
    server = _helper_answering(short_tmp / "exabgp.sock", reply)
    try:
        rows, check = fetch(short_tmp)
    finally:
        server.close()
    assert not check.responding and check.pid == stopped_child.pid
    assert "stopped" in check.detail
    text = render_status(rows, True, speaker=check)
    assert f"BGP speaker ExaBGP (PID {stopped_child.pid}) is NOT RESPONDING" in text
    assert "Established" not in text
    assert "| 10.0.0.2     | node-to-node mesh | unknown |" in text
    assert "Speaker not responding (last state up)" in text
    doc = status_json(rows, True, check)
    assert doc["speaker"]["responding"] is False and doc["ipv4"][0]["state"] == "unknown"


def test_status_of_an_exabgp_that_owes_answers(short_tmp: Path) -> None:
    reply = {"type": "status", "peers": [ROW], "exabgp": {"pid": os.getpid(), "silent_for": 12.4}}
    server = _helper_answering(short_tmp / "exabgp.sock", reply)
    try:
        rows, check = fetch(short_tmp)
    finally:
        server.close()
    assert not check.responding and "12 s" in check.detail
    healthy = {**reply, "exabgp": {"pid": os.getpid(), "silent_for": 1.0}}
    (short_tmp / "exabgp.sock").unlink()
    server = _helper_answering(short_tmp / "exabgp.sock", healthy)
    try:
        rows, check = fetch(short_tmp)
    finally:
        server.close()
    assert check.responding and "Established" in render_status(rows, True, speaker=check)


def test_a_wedged_helper_and_a_stopped_exabgp_are_named(
    short_tmp: Path, stopped_child: subprocess.Popen[bytes]
) -> None:
    (short_tmp / "exabgp.pid").write_text(f"{stopped_child.pid}\n")
    server = _helper_answering(short_tmp / "exabgp.sock", None)
    try:
        with pytest.raises(BGPError) as err:
            fetch(short_tmp, timeout=0.5)
    finally:
        server.close()
    assert "timed out" in str(err.value) and f"ExaBGP (PID {stopped_child.pid}) is stopped" in str(
        err.value
    )


def test_node_status_command_says_the_speaker_is_frozen(
    short_tmp: Path, stopped_child: subprocess.Popen[bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    from tortie.ctl.main import main

    (short_tmp / "bgp").mkdir()
    (short_tmp / "status.json").write_text(json.dumps({"pid": os.getpid(), "converged": True}))
    reply = {"type": "status", "peers": [ROW], "exabgp": {"pid": stopped_child.pid}}
    server = _helper_answering(short_tmp / "bgp" / "exabgp.sock", reply)
    try:
        assert main(["node", "status", "--name", "n1", "--state-dir", str(short_tmp)]) == 0
        out = capsys.readouterr().out
        assert main(["node", "status", "--state-dir", str(short_tmp), "-o", "json"]) == 0
        doc = json.loads(capsys.readouterr().out)
    finally:
        server.close()
    assert "NOT RESPONDING" in out and "Established" not in out
    assert doc["speaker"]["responding"] is False and "stopped" in doc["speaker"]["detail"]


# -- BIRD: the poll is the probe ----------------------------------------------------------------


def test_bird_that_does_not_answer_is_reported_then_killed_and_restarted(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in BIRD (a sleeper with BIRD's command line) never opens its control socket:
    the speaker says it does not answer, SIGSTOP shows as stopped, and past the threshold
    the speaker kills it and the supervisor starts a new one."""
    monkeypatch.setattr(bird_module, "ANSWER_DEADLINE", 0.3)
    fake = short_tmp / "fake-bird"
    fake.write_text(f'#!/bin/sh\nexec {sys.executable} -c "import time; time.sleep(120)" "$@"\n')
    fake.chmod(0o755)
    events: list[object] = []
    sp = BirdSpeaker(
        config(90), short_tmp / "st", events.append, bird=str(fake), poll_interval=0.05
    )
    sp._control.timeout = 0.2
    sp._liveness.restart_after = 3600.0  # first only the verdicts
    sp.start()
    try:
        first = wait(lambda: sp.pid, what="the stand-in BIRD")
        wait(lambda: not sp.liveness().responding, what="not responding")
        assert "does not answer" in sp.liveness().detail
        os.kill(first, signal.SIGSTOP)  # our own child, by its PID
        wait(lambda: "is stopped" in sp.liveness().detail, what="stopped")
        sp._liveness.restart_after = 0.5
        wait(lambda: sp.pid not in (None, first) and sp.running, 15, "the restart")
        assert any(isinstance(e, SpeakerHealth) and "killed" in e.detail for e in events)
        assert any(isinstance(e, SpeakerHealth) and "not responding" in e.detail for e in events)
        assert process_state(first) is None  # the old one is gone
    finally:
        sp.stop(withdraw=False, timeout=3)
    rows: list[PeerStatus] = sp.peer_status()
    assert [r.state for r in rows] == ["start"]
