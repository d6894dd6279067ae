"""Supervised: start, restart with backoff, adopt, stop only our own PIDs."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tortie.bgp.process import Supervised, netns_prefix


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sleeper(marker: str) -> list[str]:
    return [sys.executable, "-c", "import time,sys; time.sleep(60)", marker]


@pytest.fixture
def marker() -> str:
    return f"tortie-test-{secrets.token_hex(4)}"


@pytest.fixture
def cleanup() -> Iterator[list[Supervised]]:
    made: list[Supervised] = []
    yield made
    for sup in made:
        sup.stop(timeout=2)


def make(tmp: Path, marker: str, made: list[Supervised], **kw: object) -> Supervised:
    sup = Supervised(
        "sleeper",
        lambda restarting: sleeper(marker),
        pid_path=tmp / "d.pid",
        log_path=tmp / "d.log",
        marker=marker,
        **kw,  # type: ignore[arg-type]
    )
    made.append(sup)
    return sup


def wait(pred: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.01)
    raise AssertionError("timed out")


def test_netns_prefix() -> None:
    assert netns_prefix(None) == []
    assert netns_prefix("tt1") == ["nsenter", "--net=/run/netns/tt1"]
    assert netns_prefix("/proc/1/ns/net") == ["nsenter", "--net=/proc/1/ns/net"]


def test_start_stop_and_pid_file(tmp_path: Path, marker: str, cleanup: list[Supervised]) -> None:
    sup = make(tmp_path, marker, cleanup)
    sup.start()
    pid = sup.pid
    assert pid is not None and sup.running
    assert (tmp_path / "d.pid").read_text().strip() == str(pid)
    assert os.getsid(pid) == pid  # its own session: a Ctrl-C to the agent does not reach it
    sup.stop(timeout=2)
    assert not sup.running and not (tmp_path / "d.pid").exists()
    assert sup.poll() is None  # stopped: never restarted


def test_restart_with_doubling_backoff(
    tmp_path: Path, marker: str, cleanup: list[Supervised]
) -> None:
    clock = Clock()
    exits: list[str] = []
    sup = make(
        tmp_path,
        marker,
        cleanup,
        clock=clock,
        min_backoff=1.0,
        max_backoff=4.0,
        on_exit=exits.append,
    )
    sup.start()
    delays = []
    for _ in range(4):
        pid = sup.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait(lambda: not sup.running)
        assert sup.poll() == "exited: killed by signal 9"
        start = clock.now
        while sup.poll() != "restarted":
            clock.now += 0.5
        delays.append(clock.now - start)
    assert delays == [1.0, 2.0, 4.0, 4.0]
    assert sup.restarts == 4 and exits == ["killed by signal 9"] * 4
    # A run longer than stable_after resets the backoff.
    clock.now += 60
    pid = sup.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait(lambda: not sup.running)
    sup.poll()
    start = clock.now
    while sup.poll() != "restarted":
        clock.now += 0.5
    assert clock.now - start == 1.0


def test_adopts_its_own_daemon_and_not_a_stranger(
    tmp_path: Path, marker: str, cleanup: list[Supervised]
) -> None:
    first = make(tmp_path, marker, cleanup)
    first.start()
    pid = first.pid
    assert pid is not None
    wait(lambda: first._owned(pid))  # exec done: the command line carries the marker
    first.detach()  # the agent exits, the daemon stays
    second = make(tmp_path, marker, cleanup)
    second.start()
    assert second.adopted and second.pid == pid and second.running
    # A PID file pointing at a process without our marker is not trusted.
    stranger = subprocess.Popen(sleeper("someone-else"))
    try:
        (tmp_path / "d.pid").write_text(f"{stranger.pid}\n")
        third = make(tmp_path / ".." / tmp_path.name, "tortie-other-" + marker, cleanup)
        third.start()
        assert not third.adopted and third.pid != stranger.pid
        third.stop(timeout=2)
        assert stranger.poll() is None  # never signalled
    finally:
        stranger.kill()
        stranger.wait()
    # The adopted daemon is watched through /proc: its death is noticed.
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait(lambda: not second.running)
    result = second.poll()
    assert result is not None and result.startswith("exited: the adopted process is gone")


def test_missing_program_is_reported(tmp_path: Path) -> None:
    sup = Supervised(
        "ghost",
        lambda restarting: ["/nonexistent/tortie-daemon"],
        pid_path=tmp_path / "g.pid",
        log_path=tmp_path / "g.log",
        marker="x",
    )
    with pytest.raises(Exception, match="cannot start ghost"):
        sup.start()
