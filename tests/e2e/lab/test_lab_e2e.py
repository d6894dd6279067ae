"""``tortie lab`` end to end, as processes, as root: hand-wired pods (``--wire-pods manual``)
with full connectivity matrices, two subnets through the router, two labs side by side,
exec/ping/capture/status, and ``lab down`` after ``kill -9`` of ``lab up`` mid-build leaving
nothing behind (no namespace, interface, mount, process, directory or id).
"""

from __future__ import annotations

import json
import random
import re
import select
import subprocess
import time
from pathlib import Path

import pytest
from lab_e2e import LabCli, assert_full_connectivity, footprint, lab_cli, unique_name

from tortie.lab.capture import Capture
from tortie.lab.state import load_state

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def cli():  # type: ignore[no-untyped-def]
    with lab_cli() as c:
        yield c


def up(cli: LabCli, name: str, *args: str) -> float:
    t0 = time.monotonic()
    cli.run("up", "--name", name, "--wire-pods", "manual", *args)
    return time.monotonic() - t0


def down_and_check_clean(cli: LabCli, name: str) -> float:
    state = load_state(cli.paths.state_file(name))
    prefix = f"tl{state.lab_id}-" if state.lab_id else None
    t0 = time.monotonic()
    cli.run("down", "--name", name)
    took = time.monotonic() - t0
    left = footprint(Path(state.lab_dir), prefix, state.token)
    assert left.empty, f"left behind: {left}"
    return took


def test_two_nodes_manual_wiring_full_matrix_and_native_path(cli: LabCli) -> None:
    name = unique_name("two")
    took_up = up(cli, name, "--nodes", "2")
    lab = cli.open(name)
    assert [p.ip for p in lab.state.pods.values()] == ["10.244.0.1", "10.244.0.65"]
    assert_full_connectivity(lab)

    # Native routing: the plain pod addresses are on the wire between the nodes.
    with Capture(lab.capture_argv("node2")) as cap:
        cap.wait_ready()
        assert cli.run("ping", "--name", name, "-c", "1", "pod1", "pod2").returncode == 0
        lines = cap.collect(0.5)
    assert any("10.244.0.1 > 10.244.0.65: ICMP echo request" in line for line in lines), lines

    # The CLI's capture: tcpdump lines, default interface, stops at --count.
    capture = cli.popen("capture", "--name", name, "pod2", "--count", "2", "--timeout", "10")
    time.sleep(0.5)
    cli.run("ping", "--name", name, "-c", "1", "node1", "pod2")
    out, _ = capture.communicate(timeout=15)
    assert capture.returncode == 0, out
    assert "192.168.49.2 > 10.244.0.65: ICMP echo request" in out

    took_down = down_and_check_clean(cli, name)
    print(f"\n2 nodes: lab up {took_up:.2f} s, lab down {took_down:.2f} s (processes)")


def test_three_nodes_two_pods_each_full_matrix(cli: LabCli) -> None:
    name = unique_name("three")
    took_up = up(cli, name, "--nodes", "3", "--pods-per-node", "2")
    lab = cli.open(name)
    nodes = [p.node for p in lab.topology.pods]
    assert nodes == ["node1", "node1", "node2", "node2", "node3", "node3"]
    assert_full_connectivity(lab)
    took_down = down_and_check_clean(cli, name)
    print(f"\n3 nodes, 6 pods: lab up {took_up:.2f} s, lab down {took_down:.2f} s")


def _ttl(cli: LabCli, name: str, a: str, b: str) -> int:
    out = cli.run("ping", "--name", name, "-c", "1", a, b).stdout
    match = re.search(r"ttl=(\d+)", out)
    assert match, out
    return int(match.group(1))


def test_two_subnets_route_through_the_router(cli: LabCli) -> None:
    name = unique_name("subnets")
    up(cli, name, "--nodes", "4", "--subnets", "2")
    lab = cli.open(name)
    assert [n.subnet for n in lab.topology.nodes] == [1, 1, 2, 2]
    assert str(lab.topology.node("node3").address) == "192.168.50.2/24"
    assert_full_connectivity(lab)
    # Same subnet: node -> node (2 hops from pod to pod); across: one more, the router.
    assert _ttl(cli, name, "pod1", "pod2") == 62
    assert _ttl(cli, name, "pod1", "pod3") == 61
    route = cli.run("exec", "--name", name, "node1", "--", "ip", "route", "get", "10.244.0.129")
    assert "via 192.168.49.1 dev eth0" in route.stdout
    route = cli.run("exec", "--name", name, "node1", "--", "ip", "route", "get", "10.244.0.65")
    assert "via 192.168.49.3 dev eth0" in route.stdout
    down_and_check_clean(cli, name)


def test_two_labs_side_by_side(cli: LabCli) -> None:
    a, b = unique_name("left"), unique_name("right")
    procs = [
        cli.popen("up", "--name", n, "--wire-pods", "manual", "--nodes", "2", "-q") for n in (a, b)
    ]
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0, out
    la, lb = cli.open(a), cli.open(b)
    assert la.state.lab_id != lb.state.lab_id
    assert not set(la.topology.namespaces()) & set(lb.topology.namespaces())
    # The same addresses in both: they exist only inside each lab's namespaces.
    assert la.address("pod2") == lb.address("pod2") == "10.244.0.65"
    assert_full_connectivity(la)
    assert_full_connectivity(lb)
    # Without --name, several labs are ambiguous.
    proc = cli.run("status", check=False)
    assert proc.returncode == 1 and a in proc.stderr and b in proc.stderr
    down_and_check_clean(cli, a)
    assert_full_connectivity(lb)
    down_and_check_clean(cli, b)


def test_exec_status_and_errors(cli: LabCli) -> None:
    name = unique_name("ops")
    up(cli, name, "--nodes", "2")
    out = cli.run("exec", "node2", "--", "sh", "-c", "echo $TORTIE_NODENAME $TORTIE_DATASTORE")
    assert out.stdout.split()[0] == "node2"
    assert out.stdout.split()[1].startswith("sqlite:///") and name in out.stdout
    assert cli.run("exec", "pod1", "--", "sh", "-c", "exit 7", check=False).returncode == 7
    status = json.loads(cli.run("status", "-o", "json").stdout)
    assert status["phase"] == "up" and status["name"] == name
    assert all(n["exists"] for n in status["nodes"]) and all(p["exists"] for p in status["pods"])
    assert "pod2   node2" in cli.run("status").stdout
    again = cli.run("up", "--name", name, "--wire-pods", "manual", check=False)
    assert again.returncode == 1 and "already exists" in again.stderr
    bad = cli.run("ping", "pod1", "pod9", check=False)
    assert bad.returncode == 1 and "has no node or pod 'pod9'" in bad.stderr
    # The default lab wires pods through the real CNI plugin, served by real node agents.
    cni_name = unique_name("cni")
    cni = cli.run("up", "--name", cni_name, check=False)
    assert cni.returncode == 0, cni.stderr
    cni_status = json.loads(cli.run("status", "--name", cni_name, "-o", "json").stdout)
    assert cni_status["phase"] == "up"
    down_and_check_clean(cli, cni_name)
    down_and_check_clean(cli, name)
    gone = cli.run("down", "--name", name, check=False)
    assert gone.returncode == 1 and "no lab named" in gone.stderr


def _wait_for_stall(proc: subprocess.Popen[str], timeout: float = 30) -> str:
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            seen += line
            if "stalled after state save" in line:
                return seen
            if not line and proc.poll() is not None:
                break
    raise AssertionError(f"lab up never reached its stall point:\n{seen}")


# 2 nodes, 1 pod each, agents: save 4 records the wire namespace (not created yet); 14 the
# bpffs mount of node1 (not mounted); 28 the second agent (both running, after both nodes'
# network keepers); 33 pod2's record.
@pytest.mark.parametrize("stall", [4, 14, 28, 33])
def test_down_after_kill9_of_up_mid_build_leaves_nothing(cli: LabCli, stall: int) -> None:
    name = unique_name("crash")
    builder = cli.popen(
        "up",
        "--name",
        name,
        "--wire-pods",
        "manual",
        "--agents",
        "--agent-cmd",
        "sleep 300",
        env={"TORTIE_LAB_STALL_AFTER": str(stall)},
    )
    try:
        _wait_for_stall(builder)
        state = load_state(cli.paths.state_file(name))
        extra = None
        if "tl" + str(state.lab_id) + "-n1" in state.namespaces and stall > 15:
            # A process started by `lab exec` (carries the lab token, never recorded).
            extra = cli.popen("exec", "--name", name, "node1", "--", "sleep", "301")
            time.sleep(0.3)
        if stall >= 28:
            assert [p.role for p in state.processes] == ["keeper", "keeper", "agent", "agent"]
    finally:
        builder.kill()  # SIGKILL: no cleanup in the builder
        builder.wait()
    state = load_state(cli.paths.state_file(name))
    assert state.phase == "building"
    prefix = f"tl{state.lab_id}-" if state.lab_id else None
    before = footprint(Path(state.lab_dir), prefix, state.token)
    assert before.lab_dir_exists
    cli.run("down", "--name", name)
    left = footprint(Path(state.lab_dir), prefix, state.token)
    assert left.empty, f"left behind: {left}"
    if extra is not None:
        extra.wait(5)
    cli.run("down", "--name", name, check=False)  # idempotent: nothing to do, says so


def test_down_after_kill9_at_random_moments(cli: LabCli) -> None:
    rng = random.Random(7)
    for _ in range(3):
        name = unique_name("random")
        builder = cli.popen(
            "up",
            "--name",
            name,
            "--wire-pods",
            "manual",
            "--nodes",
            "3",
            "--agents",
            "--agent-cmd",
            "sleep 300",
        )
        time.sleep(rng.uniform(0.15, 0.6))
        builder.kill()
        builder.wait()
        if not cli.paths.lab_dir(name).exists():
            continue
        try:
            state = load_state(cli.paths.state_file(name))
            prefix, token = (f"tl{state.lab_id}-" if state.lab_id else None), state.token
        except FileNotFoundError:
            prefix, token = None, None
        cli.run("down", "--name", name)
        left = footprint(cli.paths.lab_dir(name), prefix, token)
        assert left.empty, f"left behind: {left}"
