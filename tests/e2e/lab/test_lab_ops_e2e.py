"""Labs as an operator runs them (issue 17, items 10 and 15), as processes, as root:

- ``lab up --datastore etcd://127.0.0.1:PORT``: the agents in the node namespaces reach the
  host's etcd through the lab's forwarder; pods ping; ``lab down`` leaves nothing, and the
  lab's resources leave etcd;
- a datastore the nodes cannot reach is refused at once, before anything is built;
- ``lab restart NODE`` restarts an agent, recorded; ``lab status`` shows restarted agents
  (by the lab or by hand) as running; ``lab exec NODE -- tortie ...`` works without the
  virtualenv on ``PATH`` (as under sudo).

Each test uses a private lab root and its own etcd (``start_etcd``); agents a test kills are
found by the PIDs the lab recorded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lab_e2e import LabCli, footprint, lab_cli, unique_name

from conftest import EtcdProcess
from tortie.datastore.factory import open_datastore
from tortie.lab.ops import Lab
from tortie.lab.procs import identify
from tortie.lab.state import load_state

pytestmark = pytest.mark.timeout(240)

BARE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # what sudo leaves: no virtualenv


@pytest.fixture
def cli() -> Iterator[LabCli]:
    with lab_cli() as c:
        yield c


def wait_until(what: str, ok: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def ping_ok(lab: Lab, src: str, dst: str) -> bool:
    argv = lab.ping_argv(src, dst, count=1, interval=0.2, wait=2)
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0


def down_and_check_clean(cli: LabCli, name: str) -> None:
    state = load_state(cli.paths.state_file(name))
    prefix = f"tl{state.lab_id}-" if state.lab_id else None
    cli.run("down", "--name", name, "-q")
    left = footprint(Path(state.lab_dir), prefix, state.token)
    assert left.empty, f"left behind: {left}"


def test_lab_on_an_etcd_on_the_hosts_loopback(start_etcd: EtcdProcess, cli: LabCli) -> None:
    # start_etcd first: fixtures are torn down in reverse, so a lab left by a failure is
    # brought down while its etcd still runs (else its resources and id stay behind).
    start_etcd.start()
    url = start_etcd.url  # etcd://127.0.0.1:PORT: the host's loopback, not the nodes'
    name = unique_name("etcd")
    t0 = time.monotonic()
    out = cli.run("up", "--name", name, "--nodes", "2", "--datastore", url, timeout=180)
    took = time.monotonic() - t0
    assert "forwarded into every node" in out.stdout, out.stdout
    lab = cli.open(name)
    wait_until("pod1 reaches pod2", lambda: ping_ok(lab, "pod1", "pod2"))
    assert ping_ok(lab, "pod2", "pod1")
    # From inside a node, through the same URL, without the virtualenv on PATH.
    got = cli.run(
        "exec", "--name", name, "node1", "--", "tortie", "get", "ippools", env={"PATH": BARE_PATH}
    )
    assert "10.244.0.0/16" in got.stdout, got.stdout
    status = json.loads(cli.run("status", "--name", name, "-o", "json").stdout)
    assert status["datastore"] == url
    assert [(p["role"], p["alive"]) for p in status["processes"]] == [("datastore-forwarder", True)]
    store = open_datastore(url)
    try:
        keys = [kv.key for kv in store.list("/tortie/").items]
        assert any(k.endswith("/default-ipv4-ippool") for k in keys), keys  # in the host's etcd
        down_and_check_clean(cli, name)
        left = [kv.key for kv in store.list("/tortie/").items]
        assert not [k for k in left if k.endswith("/default-ipv4-ippool")], left  # the lab's pool
    finally:
        store.close()
    print(f"lab up on the host's etcd: {took:.1f} s")


def test_an_unreachable_datastore_is_refused_before_anything_is_built(cli: LabCli) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here
    name = unique_name("noetcd")
    t0 = time.monotonic()
    down = cli.run("up", "--name", name, "--datastore", f"etcd://127.0.0.1:{port}", check=False)
    assert down.returncode == 1 and "does not answer on this host" in down.stderr, down.stderr
    assert time.monotonic() - t0 < 10
    far = cli.run("up", "--name", name, "--datastore", "etcd://192.0.2.10:2379", check=False)
    assert far.returncode == 1 and "no route out of the lab" in far.stderr, far.stderr
    assert not cli.paths.lab_dir(name).exists()


def _agent_pid(lab: Lab, node: str) -> int:
    status = Path(lab.state.nodes[node].state_dir) / "status.json"
    return int(json.loads(status.read_text())["pid"])


def test_restart_status_and_exec_of_restarted_agents(cli: LabCli) -> None:
    name = unique_name("rst")
    cli.run("up", "--name", name, "--nodes", "2", "-q", timeout=180)
    lab = cli.open(name)
    wait_until("pod1 reaches pod2", lambda: ping_ok(lab, "pod1", "pod2"))
    first = _agent_pid(lab, "node1")

    # The lab's verb: recorded, and status shows the new agent running.
    out = cli.run("restart", "--name", name, "node1")
    assert "agent in sync" in out.stdout, out.stdout
    lab = cli.open(name)
    second = _agent_pid(lab, "node1")
    assert second != first
    assert second in [p.pid for p in lab.state.processes if p.role == "agent"]
    text = cli.run("status", "--name", name).stdout
    assert f"agent {second}" in text and "(dead)" not in text, text
    assert ping_ok(lab, "pod1", "pod2")

    # By hand, as the docs show: kill -9, then `tortie node run` through `lab exec`.
    os.kill(second, signal.SIGKILL)  # the agent the lab started for this test, by its PID
    record = next(p for p in reversed(lab.state.processes) if p.node == "node1")
    argv, env = lab.exec_argv("node1", list(record.cmdline))
    log = Path(lab.state.nodes["node1"].log_dir) / "agent-by-hand.log"
    with open(log, "ab") as f:
        subprocess.Popen(argv, env=env, stdout=f, stderr=f, start_new_session=True)

    def by_hand() -> int | None:
        try:
            pid = _agent_pid(lab, "node1")
        except (OSError, ValueError, KeyError):
            return None
        return pid if pid not in (first, second) else None

    wait_until("the agent started by hand", by_hand)
    third = by_hand()
    text = cli.run("status", "--name", name).stdout
    assert f"agent {third} (restarted outside the lab)" in text, text
    assert "(dead)" not in text

    # `tortie` inside the node works with sudo's PATH.
    node_status = cli.run(
        "exec", "--name", name, "node1", "--", "tortie", "node", "status", env={"PATH": BARE_PATH}
    )
    assert node_status.stdout.startswith("tortie agent is running."), node_status.stdout

    # The lab's verb also replaces an agent it did not start (found by its PID file).
    cli.run("restart", "--name", name, "node1", "-q")
    lab = cli.open(name)
    fourth = _agent_pid(lab, "node1")
    assert fourth not in (first, second, third)
    assert third is not None and identify(third) is None  # stopped (a zombie of this test's)
    text = cli.run("status", "--name", name).stdout
    assert f"agent {fourth}" in text and "(dead)" not in text and "outside" not in text, text
    assert ping_ok(lab, "pod2", "pod1")
    down_and_check_clean(cli, name)
