"""A lab node's agent after a restart, ``lab exec``'s tortie, and the lab's datastore checks
(issue 17, items 10 and 15), against a fake kernel and stand-in processes.

Stand-in agents are sleepers started by the test with an agent's command line; they live in
the test's own network namespace, which the tests present as the node's (the namespace
check compares ``/proc/PID/ns/net`` with the node's namespace file).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from lab_fake_kernel import FakeKernel

from tortie.lab import dsforward
from tortie.lab.agents import is_node_agent, running_agent
from tortie.lab.builder import lab_up, preflight
from tortie.lab.errors import LabBuildError, LabOptionError
from tortie.lab.ops import Lab, open_lab, tool_path, tortie_argv
from tortie.lab.procs import identify, record_for
from tortie.lab.registry import LabPaths
from tortie.lab.runtime import NodeRuntime, last_problems, node_runtime, wait_agent_ready
from tortie.lab.state import Journal
from tortie.lab.status import format_status, lab_status
from tortie.lab.topology import LabOptions

OWN_NETNS = "/proc/self/ns/net"


@pytest.fixture
def paths(tmp_path: Path) -> LabPaths:
    (tmp_path / "netns").mkdir()
    return LabPaths(root=tmp_path / "labs", ids_dir=tmp_path / "ids", netns_dir=tmp_path / "netns")


@pytest.fixture
def lab(paths: LabPaths, monkeypatch: pytest.MonkeyPatch) -> Lab:
    """A two-node lab built on a fake kernel, whose nodes' namespace is this test's own."""
    options = LabOptions(name="unit", nodes=2, pods_per_node=0, wire_pods="manual")
    lab_up(options, paths, kernel=FakeKernel(paths.lab_dir("unit")))
    monkeypatch.setattr(NodeRuntime, "netns_path", property(lambda self: OWN_NETNS))
    monkeypatch.setattr(Lab, "netns_path", lambda self, name: OWN_NETNS)
    return open_lab(paths, "unit")


Spawn = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start stand-in processes (sleepers whose command line ends with ``args``)."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        code = "import time; time.sleep(120)"
        proc = subprocess.Popen([sys.executable, "-c", code, *args])
        started.append(proc)
        deadline = time.monotonic() + 5
        while (ident := identify(proc.pid)) is None or ident.cmdline[-1:] != (code, *args)[-1:]:
            assert time.monotonic() < deadline, "the stand-in did not start"
            time.sleep(0.01)
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait(10)


def agent_args(state_dir: str) -> tuple[str, ...]:
    return ("node", "run", "--name", "node1", "--state-dir", state_dir)


# -- who the node's agent is -------------------------------------------------------------------


def test_is_node_agent_needs_node_run_the_node_state_dir_and_its_netns(
    spawn: Spawn, tmp_path: Path
) -> None:
    d = str(tmp_path / "node1")
    agent = identify(spawn(*agent_args(d)).pid)
    assert agent is not None
    assert is_node_agent(agent, d, OWN_NETNS)
    assert not is_node_agent(agent, str(tmp_path / "node2"), OWN_NETNS)  # another node's dir
    (tmp_path / "not-a-netns").write_text("")
    assert not is_node_agent(agent, d, str(tmp_path / "not-a-netns"))  # another namespace
    other = identify(spawn("--state-dir", d).pid)
    assert other is not None and not is_node_agent(other, d, OWN_NETNS)  # not `node run`
    equals = identify(spawn("node", "run", f"--state-dir={d}").pid)
    assert equals is not None and is_node_agent(equals, d, OWN_NETNS)


def _record_agent(lab: Lab, proc: subprocess.Popen[bytes]) -> None:
    record = record_for(proc.pid, "agent", node="node1", log="/dev/null")
    assert record is not None
    Journal(lab.state).record_process(record)


def test_status_shows_an_agent_restarted_by_hand_as_running(
    lab: Lab, paths: LabPaths, spawn: Spawn
) -> None:
    state_dir = lab.state.nodes["node1"].state_dir
    first = spawn(*agent_args(state_dir))
    _record_agent(lab, first)
    lab = open_lab(paths, "unit")
    assert "agent " + str(first.pid) in format_status(lab_status(lab))
    first.kill()
    first.wait(10)
    assert f"agent {first.pid} (dead)" in format_status(lab_status(lab))
    # Restarted by hand (tortie lab exec node1 -- tortie node run ...): it writes its PID file.
    second = spawn(*agent_args(state_dir))
    Path(state_dir, "agent.pid").write_text(f"{second.pid}\n")
    text = format_status(lab_status(lab))
    assert f"agent {second.pid} (restarted outside the lab)" in text, text
    assert "(dead)" not in text and str(first.pid) not in text
    found = running_agent(lab.state, node_runtime(lab.topology, lab.state, "node1"))
    assert found is not None and found.pid == second.pid and found.record is None
    node = next(n for n in lab_status(lab)["nodes"] if n["name"] == "node1")
    assert [(p["pid"], p["alive"], p["superseded"]) for p in node["processes"]] == [
        (first.pid, False, True),
        (second.pid, True, False),
    ]


def test_a_pid_file_naming_something_else_is_not_trusted(
    lab: Lab, paths: LabPaths, spawn: Spawn
) -> None:
    state_dir = lab.state.nodes["node1"].state_dir
    first = spawn(*agent_args(state_dir))
    _record_agent(lab, first)
    first.kill()
    first.wait(10)
    stranger = spawn("unrelated")  # e.g. the PID reused by another program
    Path(state_dir, "agent.pid").write_text(f"{stranger.pid}\n")
    other_node = spawn(*agent_args(lab.state.nodes["node2"].state_dir))
    Path(state_dir, "status.json").write_text(json.dumps({"pid": other_node.pid}))
    lab = open_lab(paths, "unit")
    assert f"agent {first.pid} (dead)" in format_status(lab_status(lab))


def test_a_recorded_restart_supersedes_the_first_agent(
    lab: Lab, paths: LabPaths, spawn: Spawn
) -> None:
    state_dir = lab.state.nodes["node1"].state_dir
    first = spawn(*agent_args(state_dir))
    _record_agent(lab, first)
    first.kill()
    first.wait(10)
    second = spawn(*agent_args(state_dir))
    _record_agent(open_lab(paths, "unit"), second)  # what `tortie lab restart` records
    text = format_status(lab_status(open_lab(paths, "unit")))
    assert f"agent {second.pid}" in text and "(dead)" not in text, text


# -- waiting for an agent -------------------------------------------------------------------------


def test_wait_fails_early_with_the_agents_own_datastore_error(lab: Lab, spawn: Spawn) -> None:
    runtime = node_runtime(lab.topology, lab.state, "node1")
    proc = spawn(*agent_args(runtime.dirs.state_dir))
    log = Path(runtime.dirs.log_dir) / "agent.log"
    log.write_text(
        "2026-01-01 10:00:00,000 INFO tortie.agent.run: starting\n"
        "2026-01-01 10:00:01,000 WARNING tortie.agent.run: datastore etcd://127.0.0.1:2379: "
        "unavailable (connection refused); retrying in 10.0s\n"
    )
    record = record_for(proc.pid, "agent", node="node1", log=str(log))
    assert record is not None
    # A status file left by an earlier agent (kill -9: not removed) does not count.
    Path(runtime.dirs.state_dir, "status.json").write_text(json.dumps({"pid": 1, "in_sync": True}))
    Path(runtime.agent_socket).touch()
    t0 = time.monotonic()
    with pytest.raises(LabBuildError) as err:
        wait_agent_ready(runtime, record, timeout=30, stall=0.3)
    assert time.monotonic() - t0 < 5
    assert "cannot use the datastore" in str(err.value)
    assert "connection refused" in str(err.value)
    # Its own status file, in sync: ready.
    Path(runtime.dirs.state_dir, "status.json").write_text(
        json.dumps({"pid": proc.pid, "in_sync": True})
    )
    wait_agent_ready(runtime, record, timeout=5, stall=0.3)


def test_last_problems(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_text("x INFO a\nx WARNING b\nx INFO c\nx ERROR d\nerror: e\n")
    assert last_problems(str(log), 2) == ["x ERROR d", "error: e"]
    assert last_problems(str(tmp_path / "none")) == [] and last_problems(None) == []


# -- `lab exec NODE -- tortie ...` -------------------------------------------------------------


def test_exec_puts_the_running_tortie_first_on_path(lab: Lab) -> None:
    argv, env = lab.exec_argv("node1", ["tortie", "node", "status"])
    here = os.path.dirname(sys.executable)
    assert env["PATH"].split(os.pathsep)[0] == here
    assert argv[:3] == ["nsenter", f"--net={OWN_NETNS}", "--"]
    script = Path(here, "tortie")
    if script.exists():
        assert argv[3:] == ["tortie", "node", "status"]
    else:
        assert argv[3:] == [sys.executable, "-m", "tortie.ctl.main", "node", "status"]


def test_tool_path_and_a_tortie_not_on_path(tmp_path: Path) -> None:
    python = str(tmp_path / "venv" / "bin" / "python")
    assert tool_path("/usr/bin:/bin", python) == f"{tmp_path}/venv/bin:/usr/bin:/bin"
    assert tool_path(f"/usr/bin:{tmp_path}/venv/bin", python) == f"{tmp_path}/venv/bin:/usr/bin"
    assert tortie_argv(["tortie", "get", "ippools"], str(tmp_path), python) == [
        python,
        "-m",
        "tortie.ctl.main",
        "get",
        "ippools",
    ]
    assert tortie_argv(["ip", "route"], str(tmp_path), python) == ["ip", "route"]
    (tmp_path / "tortie").write_text("#!/bin/sh\n")
    (tmp_path / "tortie").chmod(0o755)
    assert tortie_argv(["tortie", "x"], str(tmp_path), python) == ["tortie", "x"]


# -- the lab's datastore --------------------------------------------------------------------------


def test_a_datastore_the_nodes_cannot_route_to_is_refused_before_anything() -> None:
    with pytest.raises(LabOptionError, match="no route out of the lab"):
        dsforward.etcd_endpoints("etcd://10.20.30.40:2379")
    with pytest.raises(LabOptionError, match=r"192\.0\.2\.1:2379"):
        preflight(LabOptions(datastore="etcd://127.0.0.1:2379,192.0.2.1:2379"), host=False)
    assert dsforward.etcd_endpoints("etcd://127.0.0.1:2379,localhost:22379,[::1]:2") == [
        ("127.0.0.1", 2379),
        ("localhost", 22379),
        ("::1", 2),
    ]
    assert dsforward.etcd_endpoints("sqlite:///x.db") == []
    assert dsforward.etcd_endpoints(None) == []


def test_an_etcd_that_does_not_answer_is_refused_at_once() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    t0 = time.monotonic()
    with pytest.raises(LabOptionError, match=r"does not answer on this host.*start it first"):
        dsforward.preflight(f"etcd://127.0.0.1:{port}")
    assert time.monotonic() - t0 < 3
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        dsforward.preflight(f"etcd://127.0.0.1:{listener.getsockname()[1]}")
