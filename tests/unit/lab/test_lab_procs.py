"""Processes: identity beyond the PID, the token sweep, never signalling someone else."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tortie.lab import procs
from tortie.lab.procs import TOKEN_ENV, _stat_start_time, identify, record_for


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, TOKEN_ENV: "unit-token-" + os.urandom(4).hex()}
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    yield proc
    proc.kill()
    proc.wait()


def test_start_time_parsing_survives_odd_command_names() -> None:
    fields = " ".join(str(i) for i in range(3, 53))  # fields 3..52
    stat = f"123 (we ird) (x)) {fields}"
    assert _stat_start_time(stat) == 22


def test_identify_self() -> None:
    me = identify(os.getpid())
    assert me is not None
    assert "python" in me.cmdline[0]
    assert identify(2**22 + 12345) is None


def test_stop_refuses_a_different_start_time(sleeper: subprocess.Popen[bytes]) -> None:
    record = record_for(sleeper.pid, "agent")
    assert record is not None and procs.matches(record)
    outcome = procs.stop(sleeper.pid, record.start_time + 1, record.cmdline, grace=0.5)
    assert "reused" in outcome
    assert sleeper.poll() is None
    assert procs.stop_record(record, grace=2) == "stopped"
    assert sleeper.wait(2) is not None


def test_recorded_argv_matches_as_suffix(sleeper: subprocess.Popen[bytes]) -> None:
    final = ("-c", "import time; time.sleep(60)")
    record = record_for(sleeper.pid, "agent", argv=final)
    assert record is not None and record.cmdline == final
    assert procs.matches(record)
    wrong = record_for(sleeper.pid, "agent", argv=("tortie", "node", "run"))
    assert wrong is not None and not procs.matches(wrong)


def test_token_sweep_finds_only_token_holders(sleeper: subprocess.Popen[bytes]) -> None:
    with open(f"/proc/{sleeper.pid}/environ", "rb") as f:
        token = next(
            e.split(b"=", 1)[1].decode()
            for e in f.read().split(b"\0")
            if e.startswith(TOKEN_ENV.encode() + b"=")
        )
    assert procs.pids_with_token(token) == [sleeper.pid]
    assert procs.pids_with_token(token + "x") == []
    done = procs.stop_token_holders(token, grace=2)
    assert done == [(sleeper.pid, "stopped")]
    assert sleeper.wait(2) is not None


def test_never_signals_itself() -> None:
    me = identify(os.getpid())
    assert me is not None
    assert "skipped" in procs.stop(me.pid, me.start_time, me.cmdline)
