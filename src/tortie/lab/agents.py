"""A lab node's agent: which process it is now, and ``tortie lab restart NODE``.

Problem (issue 17, item 15): the lab records the agent it started at ``lab up``. An agent
restarted since (by hand through ``tortie lab exec``, as the docs and the kill -9 test do)
is a different process, so ``lab status`` called the node's agent dead while a healthy one
ran; and no ``lab`` verb restarted one.

Who the node's agent is, in this order:
1. the newest recorded ``agent`` record of the node whose process still matches its record
   (:func:`tortie.lab.procs.matches`: start time and command line);
2. else the PID the agent itself wrote in the node's state directory (``agent.pid``, written
   by :func:`tortie.agent.run.run_agent` at start and removed at exit; ``status.json``'s
   ``pid`` as a fallback), trusted only if that process runs ``node run`` with this node's
   state directory on its command line *and* lives in the node's network namespace (same
   ``/proc/PID/ns/net`` as ``/run/netns/<node netns>``): a PID number alone names nothing.

``restart``: under the lab's lock (so never during ``up`` or ``down``), stop the node's agent
(each candidate verified as above, SIGTERM then SIGKILL), start the command the newest agent
record was started with, record it in the state file the moment its PID exists (``down``
stops it like any other), and wait until it is in sync and serves its CNI socket. The
dataplane does not move: an agent's exit leaves routes, devices and the speaker in place,
and the new agent adopts them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tortie.lab import procs
from tortie.lab.errors import LabError, LabStateError
from tortie.lab.registry import LabPaths, lab_lock
from tortie.lab.runtime import NodeRuntime, node_runtime, spawn_in_node, wait_agent_ready
from tortie.lab.state import Journal, LabState, ProcessRecord, load_state
from tortie.lab.topology import LabOptions, build_topology

Progress = Callable[[str], None]
AGENT_PID_NAME = "agent.pid"  # tortie.agent.run writes it into --state-dir
STATUS_NAME = "status.json"
LOCK_WAIT = 15.0


@dataclass(frozen=True)
class RunningAgent:
    """The node's agent process now; ``record`` None when it was started outside the lab."""

    pid: int
    start_time: int
    record: ProcessRecord | None


def _pid_from(path: Path) -> int | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    try:
        if path.suffix == ".json":
            pid = json.loads(text).get("pid")
            return pid if isinstance(pid, int) else None
        return int(text.split()[0])
    except (ValueError, IndexError, AttributeError):
        return None


def _same_netns(pid: int, netns_path: str) -> bool:
    try:
        theirs, node = os.stat(f"/proc/{pid}/ns/net"), os.stat(netns_path)
    except OSError:
        return False
    return (theirs.st_dev, theirs.st_ino) == (node.st_dev, node.st_ino)


def is_node_agent(ident: procs.ProcessIdentity, state_dir: str, netns_path: str) -> bool:
    """Whether process ``ident`` is a tortie agent of the node (see the module docstring)."""
    cmd = ident.cmdline
    runs_agent = any(cmd[i : i + 2] == ("node", "run") for i in range(len(cmd) - 1))
    has_dir = any(
        (arg == "--state-dir" and i + 1 < len(cmd) and cmd[i + 1] == state_dir)
        or arg == f"--state-dir={state_dir}"
        for i, arg in enumerate(cmd)
    )
    return runs_agent and has_dir and _same_netns(ident.pid, netns_path)


def running_agent(state: LabState, runtime: NodeRuntime) -> RunningAgent | None:
    """The node's agent now, or None (see the module docstring for the order)."""
    node = runtime.node.name
    records = [p for p in state.node_processes(node) if p.role == "agent"]
    for record in reversed(records):
        if procs.matches(record, state.token):
            return RunningAgent(record.pid, record.start_time, record)
    state_dir = Path(runtime.dirs.state_dir)
    for source in (state_dir / AGENT_PID_NAME, state_dir / STATUS_NAME):
        pid = _pid_from(source)
        ident = procs.identify(pid) if pid is not None else None
        if ident is not None and is_node_agent(ident, str(state_dir), runtime.netns_path):
            return RunningAgent(ident.pid, ident.start_time, None)
    return None


def restart_agent(
    paths: LabPaths, name: str | None, node: str, progress: Progress, grace: float = 3.0
) -> ProcessRecord:
    """``tortie lab restart NODE``: stop the node's agent, start it again, recorded; return the
    new record once the agent is in sync. Raises LabError."""
    resolved = paths.resolve(name)
    lab_dir = paths.lab_dir(resolved)
    with lab_lock(lab_dir, wait=LOCK_WAIT):
        try:
            state = load_state(paths.state_file(resolved))
        except FileNotFoundError:
            raise LabStateError(f"lab {resolved!r} has no state file") from None
        if state.lab_id is None or state.phase in ("tearing-down", "down-failed"):
            raise LabError(f"lab {resolved!r} is {state.phase}: nothing to restart")
        topology = build_topology(LabOptions.from_json(state.options), state.lab_id)
        topology.node(node)  # a LabError naming the nodes if there is no such node
        runtime = node_runtime(topology, state, node)
        if not os.path.exists(runtime.netns_path):
            raise LabError(f"{node}'s namespace {runtime.node.netns} does not exist; rebuild")
        started = [p for p in state.node_processes(node) if p.role == "agent"]
        if not started:
            raise LabError(
                f"lab {resolved!r} runs no agents (built with --no-agents or --wire-pods "
                "manual): there is no agent to restart"
            )
        argv = started[-1].cmdline  # what the lab started it with (--agent-cmd included)
        journal = Journal(state)
        old = running_agent(state, runtime)
        if old is None:
            progress(f"{node}: no agent running")
        else:
            cmdline = old.record.cmdline if old.record is not None else None
            outcome = procs.stop(old.pid, old.start_time, cmdline, grace, token=state.token)
            progress(f"{node}: agent pid {old.pid}: {outcome}")
        record = spawn_in_node(journal, runtime, "agent", list(argv), "agent.log")
        progress(f"{node}: agent pid {record.pid} started ({record.log})")
        if "node" in argv and "run" in argv:
            wait_agent_ready(runtime, record)
            progress(f"{node}: agent in sync, CNI socket {runtime.agent_socket}")
        return record
