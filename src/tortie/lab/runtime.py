"""What a lab node looks like to the processes that run "on" it: directories, environment,
and the agents started there.

Problem: several lab nodes share one host, yet each node's agent, CNI plugin and ``tortie``
commands must behave as if alone on their machine: their own state directory (MTU file,
status, CNI socket), their own bpffs pin directory, their own CNI conf/bin dirs, their own
node name, and the lab's datastore. :class:`NodeRuntime` is that description; ``tortie lab exec
NODE -- CMD`` runs CMD in the node's network namespace with :meth:`NodeRuntime.env`, so
``tortie node status`` there reports that node.

Invariants:
- Directories live under ``<lab dir>/nodes/<node>/``; each is recorded before it is created
  and the pin directory gets a bpffs of its own (recorded before it is mounted), so ``down``
  removes them; the agent finds its pin directory already on a bpffs and mounts nothing.
- Every process started here runs in the node's network namespace via ``nsenter --net`` (not
  ``ip netns exec``, which remounts /sys and hides pinned BPF objects), in its own session,
  with ``TORTIE_LAB_TOKEN`` in its environment, and is recorded with its start time as soon
  as its PID exists.

Seam: :func:`start_node_agents` is where ``tortie node run`` gets started per node. It is off
unless the lab was asked for agents (``LabOptions.agents``) because the agent lands later.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tortie.lab.errors import LabBuildError
from tortie.lab.kernel import Kernel
from tortie.lab.procs import TOKEN_ENV, record_for
from tortie.lab.state import Journal, LabState, NodeDirs, ProcessRecord
from tortie.lab.topology import NodeSpec, Topology

Progress = Callable[[str], None]
DATASTORE_ENV = "TORTIE_DATASTORE"
NODENAME_ENV = "TORTIE_NODENAME"
LAB_ENV = "TORTIE_LAB"
# An agent command template for developers and tests (``--agent-cmd``); {placeholders}:
# name, ip (with prefix), state_dir, datastore.
DEFAULT_AGENT_TEMPLATE = (
    "{python} -m tortie.ctl.main node run --name {name} --ip {ip} --state-dir {state_dir}"
)


def node_dirs(lab_dir: str | os.PathLike[str], node: str) -> NodeDirs:
    base = Path(lab_dir) / "nodes" / node
    return NodeDirs(
        state_dir=str(base),
        # The agent pins under <state_dir>/bpf (tortie.agent.config.AgentConfig.pin_dir).
        bpf_dir=str(base / "bpf"),
        cni_conf_dir=str(base / "net.d"),
        cni_bin_dir=str(base / "cni-bin"),
        log_dir=str(base / "log"),
    )


@dataclass(frozen=True)
class NodeRuntime:
    """Everything a process needs to act as ``node`` of the lab."""

    lab: str
    token: str
    node: NodeSpec
    dirs: NodeDirs
    datastore: str

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.node.netns}"

    @property
    def agent_socket(self) -> str:
        """The agent's CNI socket: per node *and* per lab (two labs both have a node1, so
        the default /run/tortie/<node>/cni.sock would collide)."""
        return str(Path(self.dirs.state_dir) / "cni.sock")

    def env(self) -> dict[str, str]:
        """The variables ``tortie`` (agent, CLI, CNI install) reads to act as this node."""
        return {
            DATASTORE_ENV: self.datastore,
            NODENAME_ENV: self.node.name,
            "TORTIE_STATE_DIR": self.dirs.state_dir,
            "TORTIE_CNI_CONF_DIR": self.dirs.cni_conf_dir,
            "TORTIE_CNI_BIN_DIR": self.dirs.cni_bin_dir,
            LAB_ENV: self.lab,
            TOKEN_ENV: self.token,
        }

    def nsenter(self, argv: Sequence[str]) -> list[str]:
        return ["nsenter", f"--net={self.netns_path}", "--", *argv]


def node_runtime(topology: Topology, state: LabState, node: str) -> NodeRuntime:
    spec = topology.node(node)
    dirs = state.nodes.get(node) or node_dirs(state.lab_dir, node)
    return NodeRuntime(
        lab=state.name,
        token=state.token,
        node=spec,
        dirs=dirs,
        datastore=state.datastore or "",
    )


def prepare_node_dirs(kernel: Kernel, journal: Journal, node: str) -> NodeDirs:
    """Create (recording first) the node's directories and its bpffs pin directory."""
    dirs = node_dirs(journal.state.lab_dir, node)
    journal.record_node(node, dirs)
    for path in (dirs.state_dir, dirs.cni_conf_dir, dirs.cni_bin_dir, dirs.log_dir):
        journal.record_dir(path)
        os.makedirs(path, mode=0o700, exist_ok=True)
    journal.record_dir(dirs.bpf_dir)
    journal.record_mount(dirs.bpf_dir)
    kernel.mount_bpffs(Path(dirs.bpf_dir))
    return dirs


def spawn_in_node(
    journal: Journal,
    runtime: NodeRuntime,
    role: str,
    argv: Sequence[str],
    log_name: str,
) -> ProcessRecord:
    """Start ``argv`` in the node's namespace, detached, logging to the node's log dir.

    The process gets its own session (a signal to ``lab up`` does not reach it) and the lab
    token; it is recorded the moment its PID exists. If ``up`` dies between the fork and the
    record, ``down`` still finds it by the token.
    """
    log = Path(runtime.dirs.log_dir) / log_name
    env = {**os.environ, **runtime.env()}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            runtime.nsenter(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    record = record_for(proc.pid, role, node=runtime.node.name, log=str(log), argv=tuple(argv))
    if record is None:
        raise LabBuildError(
            f"{role} on {runtime.node.name} exited at once ({shlex.join(argv)}); see {log}"
        )
    journal.record_process(record)
    return record


def agent_argv(runtime: NodeRuntime, template: str = DEFAULT_AGENT_TEMPLATE) -> list[str]:
    values = {
        "python": sys.executable,
        "name": runtime.node.name,
        "ip": str(runtime.node.address),
        "state_dir": runtime.dirs.state_dir,
        "datastore": runtime.datastore,
    }
    try:
        return [part.format(**values) for part in shlex.split(template)]
    except (KeyError, IndexError, ValueError) as err:
        raise LabBuildError(
            f"agent command template {template!r}: {err} (placeholders: {', '.join(values)})"
        ) from err


def start_node_agents(
    topology: Topology,
    journal: Journal,
    progress: Progress,
    *,
    enabled: bool,
    template: str = DEFAULT_AGENT_TEMPLATE,
) -> list[ProcessRecord]:
    """Start one agent per node (``tortie node run``), or nothing when not ``enabled``, and
    wait until every agent is in sync with the datastore and serves its CNI socket (pods are
    created right after this). First, for an etcd on the host's loopback, the forwarder that
    makes it reachable from inside the nodes (:mod:`.dsforward`; also without agents: ``lab
    exec NODE -- tortie ...`` uses it)."""
    from tortie.lab.dsforward import start_forwarder

    start_forwarder(journal, topology, progress)
    if not enabled:
        progress("agents: not started (the lab runs without node agents; --agents starts them)")
        return []
    started = []
    for node in topology.nodes:
        runtime = node_runtime(topology, journal.state, node.name)
        argv = agent_argv(runtime, template)
        record = spawn_in_node(journal, runtime, "agent", argv, "agent.log")
        progress(f"{node.name}: agent pid {record.pid} ({record.log})")
        started.append(record)
    if template != DEFAULT_AGENT_TEMPLATE:
        # A developer's stand-in (--agent-cmd) need not speak tortie's status protocol.
        progress("agents: custom command, not waiting for readiness")
        return started
    for record in started:
        runtime = node_runtime(topology, journal.state, record.node or "")
        wait_agent_ready(runtime, record)
    return started


AGENT_READY_TIMEOUT = 60.0
# An agent still not in sync after this long while its log says the datastore is unavailable
# will not get there by waiting: fail with its own words instead of after the timeout.
DATASTORE_STALL = 15.0


def wait_agent_ready(
    runtime: NodeRuntime,
    record: ProcessRecord,
    timeout: float = AGENT_READY_TIMEOUT,
    stall: float = DATASTORE_STALL,
) -> None:
    """Until the agent's status file (written by *this* agent: its PID) says in sync and its
    CNI socket exists. Fails early, with the agent's last error, when it exits or when it
    keeps failing to reach the datastore (issue 17, item 10)."""
    status = Path(runtime.dirs.state_dir) / "status.json"
    start = time.monotonic()
    deadline = start + timeout
    while time.monotonic() < deadline:
        if not _alive(record.pid):
            raise LabBuildError(
                f"the agent of {runtime.node.name} exited; its log {record.log} says:\n"
                + _tail(record.log)
            )
        with contextlib.suppress(OSError, ValueError):
            doc = json.loads(status.read_text())
            mine = doc.get("pid") in (None, record.pid)  # not a stale file of an earlier agent
            if mine and doc.get("in_sync") and os.path.exists(runtime.agent_socket):
                return
        if time.monotonic() - start > stall:
            problems = last_problems(record.log)
            if any("datastore" in line.lower() for line in problems[-1:]):
                raise LabBuildError(
                    f"the agent of {runtime.node.name} cannot use the datastore "
                    f"{runtime.datastore} after {stall:.0f}s; its last error ({record.log}):\n"
                    + "\n".join(problems)
                )
        time.sleep(0.05)
    problems = last_problems(record.log)
    raise LabBuildError(
        f"the agent of {runtime.node.name} was not ready after {timeout:.0f}s; "
        + (
            f"its last errors ({record.log}):\n" + "\n".join(problems)
            if problems
            else f"its log {record.log} shows no error:\n{_tail(record.log)}"
        )
    )


def last_problems(path: str | None, count: int = 3) -> list[str]:
    """The last ``count`` warning or error lines of an agent's log."""
    if path is None:
        return []
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return []
    marks = (" WARNING ", " ERROR ", " CRITICAL ", "error: ")
    return [line for line in lines if any(m in line for m in marks)][-count:]


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs. Reaps it if it is our exited child (a zombie still has a
    /proc entry, so that alone would make a dead agent look alive)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass  # not our child: /proc decides
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _tail(path: str | None, lines: int = 5) -> str:
    if path is None:
        return "(no log)"
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError as err:
        return f"(cannot read: {err})"
