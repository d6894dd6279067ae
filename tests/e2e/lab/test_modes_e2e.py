"""The node agent end to end, per mode, in real labs: real agents, the real CNI plugin, BGP.

What the seed shows, checked: IPIP puts proto-4 packets with the pod addresses inside on the
underlay; BGP mode routes the pod addresses natively; CrossSubnet encapsulates only across
subnets; VXLAN carries UDP 4789. Plus the operational promises of the agent: a live mode
change converges without restarts, and a dead node's routes go within the BGP hold time.
(Kill -9 of an agent under traffic is a case of the fault suite, tests/e2e/faults.)
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from lab_e2e import LabCli, assert_full_connectivity, lab_cli, unique_name

from tortie.lab.ops import Lab

Wait = Callable[[], bool]


def wait_until(what: str, ok: Wait, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture
def cli() -> Iterator[LabCli]:
    with lab_cli() as c:
        yield c


def up(cli: LabCli, *args: str, env: dict[str, str] | None = None) -> Lab:
    name = unique_name("m")
    cli.run("up", "--name", name, "-q", *args, env=env, timeout=120)
    return cli.open(name)


def run_on(lab: Lab, name: str, *argv: str, check: bool = True) -> str:
    cmd, env = lab.exec_argv(name, list(argv))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} on {name}: {proc.returncode}\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def routes(lab: Lab, node: str) -> str:
    return run_on(lab, node, "ip", "-4", "route", "show", "proto", "80")


def block_of(lab: Lab, pod: str) -> str:
    a, b, c, d = (int(x) for x in lab.address(pod).split("."))
    return f"{a}.{b}.{c}.{d & ~63}/26"


def ping_ok(lab: Lab, src: str, dst: str, count: int = 1) -> bool:
    argv = lab.ping_argv(src, dst, count=count, interval=0.2, wait=2)
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0


def captured(lab: Lab, node: str, src: str, dst: str, filt: list[str], count: int = 2) -> str:
    """tcpdump lines on ``node``'s uplink while ``src`` pings ``dst``."""
    argv = [*lab.capture_argv(node, count=count), *filt]
    dump = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.7)  # tcpdump attaches
        ping_ok(lab, src, dst, count=3)
        out, _ = dump.communicate(timeout=10)
    finally:
        if dump.poll() is None:
            dump.kill()
            dump.wait()
    return out


def converge(lab: Lab) -> None:
    wait_until("every pod reaches every other pod", lambda: _pods_connected(lab), 30)


def _pods_connected(lab: Lab) -> bool:
    pods = [p.name for p in lab.topology.pods]
    return all(ping_ok(lab, a, b) for a in pods for b in pods if a != b)


def test_ipip_mode_matrix_capture_and_mtu(cli: LabCli) -> None:
    lab = up(cli, "--nodes", "3", "--subnets", "2", "--mode", "ipip")
    converge(lab)
    assert_full_connectivity(lab)
    r = routes(lab, "node1")
    assert f"{block_of(lab, 'pod2')} via 192.168.49.3 dev tunl0 onlink" in r
    assert f"{block_of(lab, 'pod3')} via 192.168.50.2 dev tunl0 onlink" in r
    assert f"blackhole {block_of(lab, 'pod1')}" in r
    p1, p2 = lab.address("pod1"), lab.address("pod2")
    out = captured(lab, "node1", "pod1", "pod2", ["ip", "proto", "4"])
    assert f"IP 192.168.49.2 > 192.168.49.3: IP {p1} > {p2}: ICMP echo request" in out, out
    # The pod's eth0 sees only the inner packet.
    inner = captured(lab, "pod2", "pod1", "pod2", ["icmp"])
    assert f"IP {p1} > {p2}: ICMP echo request" in inner and "192.168.49" not in inner
    # MTU 1480 end to end: 1452 bytes of ICMP payload + 28 = 1480, with DF.
    big = lab.nsenter("pod1", ["ping", "-n", "-c", "1", "-W", "2", "-M", "do", "-s"])
    assert subprocess.run([*big, "1452", p2], capture_output=True, check=False).returncode == 0
    assert subprocess.run([*big, "1453", p2], capture_output=True, check=False).returncode != 0


def test_bgp_mode_routes_pod_addresses_natively(cli: LabCli) -> None:
    lab = up(cli, "--nodes", "2", "--mode", "bgp")
    converge(lab)
    r = routes(lab, "node1")
    assert f"{block_of(lab, 'pod2')} via 192.168.49.3 dev eth0" in r
    assert "tunl0" not in run_on(lab, "node1", "ip", "-o", "link")
    p1, p2 = lab.address("pod1"), lab.address("pod2")
    out = captured(lab, "node1", "pod1", "pod2", ["icmp"])
    assert f"IP {p1} > {p2}: ICMP echo request" in out, out


def test_crosssubnet_encapsulates_only_across_subnets(cli: LabCli) -> None:
    lab = up(cli, "--nodes", "3", "--subnets", "2", "--mode", "crosssubnet")
    converge(lab)
    same = captured(lab, "node1", "pod1", "pod2", ["icmp", "or", "ip", "proto", "4"])
    p1, p2, p3 = (lab.address(p) for p in ("pod1", "pod2", "pod3"))
    assert f"IP {p1} > {p2}: ICMP echo request" in same and "192.168.49.3: IP" not in same
    across = captured(lab, "node1", "pod1", "pod3", ["ip", "proto", "4"])
    assert f"IP 192.168.49.2 > 192.168.50.2: IP {p1} > {p3}: ICMP" in across, across


def test_vxlan_mode_carries_udp_4789(cli: LabCli) -> None:
    lab = up(cli, "--nodes", "3", "--subnets", "2", "--mode", "vxlan")
    converge(lab)
    out = captured(lab, "node1", "pod1", "pod3", ["udp", "port", "4789"])
    p1, p3 = lab.address("pod1"), lab.address("pod3")
    assert "192.168.49.2." in out and "VXLAN, flags [I] (0x08), vni 4096" in out, out
    assert f"IP {p1} > {p3}: ICMP echo request" in out, out
    assert "tortie_nft" not in out  # (sanity: plain tcpdump output)


POOL = """apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {{name: default-ipv4-ippool}}
spec: {{cidr: 10.244.0.0/16, ipipMode: {mode}, natOutgoing: true, nodeSelector: all()}}
"""


def test_live_mode_change_converges_without_restart(cli: LabCli, tmp_path: Path) -> None:
    lab = up(cli, "--nodes", "3", "--subnets", "2", "--mode", "ipip")
    converge(lab)
    pids_before = _agent_pids(lab)
    b2, b3 = block_of(lab, "pod2"), block_of(lab, "pod3")
    for mode, want2, want3 in [
        ("Never", "via 192.168.49.3 dev eth0", None),
        ("CrossSubnet", "via 192.168.49.3 dev eth0", "via 192.168.50.2 dev tunl0"),
        ("Always", "via 192.168.49.3 dev tunl0", "via 192.168.50.2 dev tunl0"),
    ]:
        f = tmp_path / f"{mode}.yaml"
        f.write_text(POOL.format(mode=mode))
        run_on(lab, "node1", sys.executable, "-m", "tortie.ctl.main", "apply", "-f", str(f))

        def switched(mode: str = mode, w2: str = want2, w3: str | None = want3) -> bool:
            r = routes(lab, "node1")
            return f"{b2} {w2}" in r and (w3 is None or f"{b3} {w3}" in r)

        wait_until(f"node1's routes in {mode} mode", switched)
        wait_until(f"pod1 -> pod2 in {mode} mode", lambda: ping_ok(lab, "pod1", "pod2"))
    assert _agent_pids(lab) == pids_before


def _agent_pids(lab: Lab) -> dict[str, int]:
    out = {}
    for node in lab.topology.nodes:
        status = Path(lab.state.nodes[node.name].state_dir) / "status.json"
        out[node.name] = int(json.loads(status.read_text())["pid"])
    return out


def test_dead_node_routes_are_withdrawn_within_the_hold_time(cli: LabCli) -> None:
    lab = up(cli, "--nodes", "3", "--mode", "ipip", env={"TORTIE_BGP_HOLD_TIME": "3"})
    converge(lab)
    b2 = block_of(lab, "pod2")
    assert b2 in routes(lab, "node1")
    # The node dies: its cable is cut (no FIN, no NOTIFICATION: only the hold timer tells).
    run_on(lab, "node2", "ip", "link", "set", "eth0", "down")
    t0 = time.monotonic()
    wait_until(f"{b2} gone from node1", lambda: b2 not in routes(lab, "node1"), 15)
    assert time.monotonic() - t0 < 3 + 5  # hold time + slack for a loaded machine
    assert block_of(lab, "pod3") in routes(lab, "node1")  # the healthy node stays
    assert ping_ok(lab, "pod1", "pod3")


def test_node_status_reports_the_mesh(cli: LabCli) -> None:
    lab = up(cli, "--nodes", "3", "--mode", "bgp")
    converge(lab)

    def established() -> bool:
        out = run_on(
            lab, "node1", sys.executable, "-m", "tortie.ctl.main", "node", "status", check=False
        )
        return out.count("Established") == 2

    wait_until("two Established mesh sessions on node1", established)
    out = run_on(lab, "node1", sys.executable, "-m", "tortie.ctl.main", "node", "status")
    assert out.startswith("tortie agent is running.")
    assert "IPv4 BGP status" in out
    assert re.search(r"\| 192\.168\.49\.3 \| node-to-node mesh \| up\s+\|", out), out
    doc = json.loads(
        run_on(
            lab, "node1", sys.executable, "-m", "tortie.ctl.main", "node", "status", "-o", "json"
        )
    )
    assert doc["agentRunning"] is True and doc["node"] == "node1"
