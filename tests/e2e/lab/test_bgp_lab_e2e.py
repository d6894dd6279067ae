"""BGP topologies in real labs: the BIRD ToR (``--tor``), route reflectors
(``--route-reflectors``), a node leaving and rejoining the mesh, and a pool change under
reflectors.

Each test builds its own lab under a private ``TORTIE_LAB_ROOT`` (removed by the fixture
whatever happens) with real agents, ExaBGP/BIRD speakers and the real CNI plugin; traffic
only flows between lab namespaces.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
from lab_e2e import LabCli, assert_full_connectivity, lab_cli, unique_name

from tortie.lab import procs
from tortie.lab.ops import Lab
from tortie.lab.tor import birdc_argv

pytestmark = pytest.mark.skipif(shutil.which("bird") is None, reason="bird2 is not installed")

TORTIE = [sys.executable, "-m", "tortie.ctl.main"]
HOLD = "3"  # TORTIE_BGP_HOLD_TIME for labs that time failures


def wait_until(what: str, ok: Callable[[], bool], timeout: float = 30.0) -> float:
    """Poll ``ok`` until true; return the seconds it took."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if ok():
            return time.monotonic() - t0
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture
def cli() -> Iterator[LabCli]:
    with lab_cli() as c:
        yield c


def up(cli: LabCli, *args: str, env: dict[str, str] | None = None) -> tuple[Lab, str]:
    name = unique_name("b")
    proc = cli.run("up", "--name", name, *args, env=env, timeout=180)
    return cli.open(name), proc.stdout


def run_on(lab: Lab, name: str, *argv: str, check: bool = True) -> str:
    cmd, env = lab.exec_argv(name, list(argv))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} on {name}: {proc.returncode}\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def routes(lab: Lab, node: str) -> str:
    return run_on(lab, node, "ip", "-4", "route", "show", "proto", "80")


def router(lab: Lab, *argv: str) -> str:
    ns = f"/run/netns/{lab.topology.router.netns}"
    return subprocess.run(
        ["nsenter", f"--net={ns}", "--", *argv], capture_output=True, text=True, check=True
    ).stdout


def birdc(lab: Lab, *command: str) -> str:
    return subprocess.run(
        birdc_argv(lab.state.lab_dir, *command), capture_output=True, text=True, check=True
    ).stdout


def block_of(lab: Lab, pod: str) -> str:
    a, b, c, d = (int(x) for x in lab.address(pod).split("."))
    return f"{a}.{b}.{c}.{d & ~63}/26"


def ping_ok(lab: Lab, src: str, dst: str, count: int = 1) -> bool:
    argv = lab.ping_argv(src, dst, count=count, interval=0.2, wait=2)
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0


def pods_connected(lab: Lab) -> bool:
    pods = [p.name for p in lab.topology.pods]
    return all(ping_ok(lab, a, b) for a in pods for b in pods if a != b)


def node_status(lab: Lab, node: str) -> list[dict[str, object]]:
    doc = json.loads(run_on(lab, node, *TORTIE, "node", "status", "-o", "json", check=False))
    peers: list[dict[str, object]] = doc["ipv4"]
    return peers


def established(lab: Lab, node: str) -> list[str]:
    try:
        return sorted(str(p["peerAddress"]) for p in node_status(lab, node) if p["state"] == "up")
    except (ValueError, KeyError):
        return []


def has_sessions(lab: Lab, node: str, peers: list[str]) -> bool:
    return established(lab, node) == peers


def capture(argv: list[str], traffic: Callable[[], object]) -> str:
    """tcpdump's lines (``argv`` has its ``-c``) while ``traffic()`` runs."""
    dump = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.7)  # tcpdump attaches
        traffic()
        out, _ = dump.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        dump.kill()
        out, _ = dump.communicate()
    return out


def apply_pool(lab: Lab, tmp_path: Path, mode: str) -> None:
    f = tmp_path / f"pool-{mode}.yaml"
    f.write_text(
        "apiVersion: projectcalico.org/v3\nkind: IPPool\n"
        "metadata: {name: default-ipv4-ippool}\n"
        f"spec: {{cidr: 10.244.0.0/16, ipipMode: {mode}, natOutgoing: true, "
        "nodeSelector: all()}\n"
    )
    run_on(lab, "node1", *TORTIE, "apply", "-f", str(f))


def agent_pids(lab: Lab) -> dict[str, int]:
    out = {}
    for node in lab.topology.nodes:
        status = Path(lab.state.nodes[node.name].state_dir) / "status.json"
        out[node.name] = int(json.loads(status.read_text())["pid"])
    return out


# -- (a) the ToR -------------------------------------------------------------------------------


def test_tor_learns_every_block_and_carries_pod_traffic_natively(cli: LabCli) -> None:
    lab, out = up(cli, "--nodes", "4", "--subnets", "2", "--mode", "bgp", "--tor")
    assert "tor: BIRD pid" in out and "next hop self" in out, out
    assert "4/4 sessions established" in out and "4/4 pods reachable through it" in out, out
    topo = lab.topology
    blocks = {p.name: block_of(lab, p.name) for p in topo.pods}
    owner = {p.name: topo.node(p.node) for p in topo.pods}

    # The ToR learned every node's block from that node, and installed it in its kernel.
    shown = birdc(lab, "show", "route")
    kernel = router(lab, "ip", "-4", "route", "show", "proto", "bird")
    for pod, block in blocks.items():
        node = owner[pod]
        leg = topo.subnet(node.subnet).router_ifname
        assert re.search(rf"{re.escape(block)}\s+unicast \[{node.name} ", shown), shown
        assert f"via {node.ip} on {leg}" in shown, shown
        assert f"{block} via {node.ip} dev {leg} " in kernel, kernel  # proto bird

    # Nodes: same rack direct (third-party next hop), other rack through the router.
    r1 = routes(lab, "node1")
    assert f"{blocks['pod2']} via 192.168.49.3 dev eth0" in r1, r1
    assert f"{blocks['pod3']} via 192.168.49.1 dev eth0" in r1, r1
    assert f"{blocks['pod4']} via 192.168.49.1 dev eth0" in r1, r1
    r3 = routes(lab, "node3")
    assert f"{blocks['pod1']} via 192.168.50.1 dev eth0" in r3, r3
    assert f"{blocks['pod4']} via 192.168.50.3 dev eth0" in r3, r3
    assert "tunl0" not in r1 + r3
    peers = node_status(lab, "node3")
    assert [(p["peerAddress"], p["peerType"], p["state"]) for p in peers] == [
        ("192.168.50.1", "node specific", "up")
    ]

    wait_until("every pod reaches every other pod", lambda: pods_connected(lab))
    assert_full_connectivity(lab)

    # On the wire between the router and rack 2: the pod addresses themselves, no IPIP.
    p1, p3 = lab.address("pod1"), lab.address("pod3")
    ns = f"/run/netns/{topo.router.netns}"
    dump = ["nsenter", f"--net={ns}", "--", "tcpdump", "-n", "-l", "-i", "eth1", "-c", "4"]
    seen = capture([*dump, "icmp or ip proto 4"], lambda: ping_ok(lab, "pod1", "pod3", 3))
    assert f"IP {p1} > {p3}: ICMP echo request" in seen, seen
    assert f"IP {p3} > {p1}: ICMP echo reply" in seen, seen
    assert "ipip" not in seen.lower() and "proto IPIP" not in seen

    # down stops the ToR (by its recorded PID) with the rest.
    (tor,) = [p for p in lab.state.processes if p.role == "tor"]
    assert procs.matches(tor)
    cli.run("down", "--name", lab.state.name, "-q")
    assert not procs.matches(tor)


# -- (b) route reflectors ----------------------------------------------------------------------


def test_route_reflector_lab_one_session_per_client_full_connectivity(cli: LabCli) -> None:
    lab, _ = up(cli, "--nodes", "4", "--mode", "ipip", "--route-reflectors", "1", "-q")
    rr = str(lab.topology.nodes[0].ip)
    for client in ("node2", "node3", "node4"):
        wait_until(f"{client}'s session to the reflector", partial(has_sessions, lab, client, [rr]))
        (peer,) = node_status(lab, client)
        assert peer["peerType"] == "route reflector" and peer["info"] == "Established"
    clients = sorted(str(n.ip) for n in lab.topology.nodes[1:])
    wait_until("the reflector's sessions", lambda: established(lab, "node1") == clients)
    assert {p["peerType"] for p in node_status(lab, "node1")} == {"node specific"}
    state = json.loads(Path(lab.state.nodes["node1"].state_dir, "status.json").read_text())
    assert state["bgp"]["speaker"] == "BirdSpeaker"

    blocks = {p.node: block_of(lab, p.name) for p in lab.topology.pods}

    def all_installed() -> bool:
        for node in lab.topology.nodes:
            r = routes(lab, node.name)
            for other in lab.topology.nodes:
                want = (
                    f"blackhole {blocks[other.name]}"
                    if other is node
                    else f"{blocks[other.name]} via {other.ip} dev tunl0 onlink"
                )
                if want not in r:
                    return False
        return True

    wait_until("every block on every node (IPIP, next hop = the owner)", all_installed)
    wait_until("every pod reaches every other pod", lambda: pods_connected(lab))
    assert_full_connectivity(lab)


# -- (c) leaving and rejoining the mesh --------------------------------------------------------


def test_node_leaves_and_rejoins_the_mesh(cli: LabCli, tmp_path: Path) -> None:
    lab, _ = up(cli, "--nodes", "3", "--mode", "bgp", "-q", env={"TORTIE_BGP_HOLD_TIME": HOLD})
    wait_until("every pod reaches every other pod", lambda: pods_connected(lab))
    b3 = block_of(lab, "pod3")
    assert b3 in routes(lab, "node1") and b3 in routes(lab, "node2")
    others_before = {k: v for k, v in agent_pids(lab).items() if k != "node3"}

    # node3 goes down: its agent stops (it leaves the speaker running: nothing changes) ...
    (agent,) = [p for p in lab.state.processes if p.role == "agent" and p.node == "node3"]
    assert procs.stop_record(agent, token=lab.state.token) == "stopped"
    time.sleep(1.0)
    assert b3 in routes(lab, "node1"), "an agent stop must not withdraw the node's routes"
    # ... then its speaker. ExaBGP closes its sessions without a NOTIFICATION (graceful
    # restart was negotiated): the peers keep node3's routes, stale, as for a restart.
    pid_file = next(Path(lab.state.nodes["node3"].state_dir).rglob("exabgp.pid"))
    pid = int(pid_file.read_text().split()[0])
    assert procs.has_token(pid, lab.state.token)  # ours: started by the lab's agent
    os.kill(pid, signal.SIGTERM)
    wait_until(
        "node1's session to node3 down", lambda: "192.168.49.4" not in established(lab, "node1")
    )
    assert b3 in routes(lab, "node1"), "graceful restart: stale routes stay for the GR time"

    # node3 leaves the cluster: its Node goes, the mesh shrinks on the others (a config
    # reload, no restart) and what they learned from node3 goes with the peer.
    run_on(lab, "node1", *TORTIE, "delete", "node", "node3")
    took = wait_until(
        f"{b3} withdrawn from node1 and node2",
        lambda: b3 not in routes(lab, "node1") and b3 not in routes(lab, "node2"),
        15,
    )
    # At once (a reload), not after the 120 s graceful-restart time; slack for a busy host.
    assert took < 10, f"withdrawn {took:.1f}s after the Node was deleted"
    assert [p["peerAddress"] for p in node_status(lab, "node1")] == ["192.168.49.3"]
    assert ping_ok(lab, "pod1", "pod2")

    # node3 joins again: a new agent registers it, the others add the peer by reload.
    argv, env = lab.exec_argv("node3", list(agent.cmdline))
    with open(Path(lab.state.nodes["node3"].log_dir) / "agent-rejoined.log", "ab") as log:
        subprocess.Popen(argv, env=env, stdout=log, stderr=log, start_new_session=True)
    wait_until(
        "node1 and node2 peer with node3 again",
        lambda: (
            "192.168.49.4" in established(lab, "node1")
            and "192.168.49.4" in established(lab, "node2")
        ),
        45,
    )
    wait_until(
        f"{b3} back on node1", lambda: f"{b3} via 192.168.49.4 dev eth0" in routes(lab, "node1")
    )
    wait_until("pod1 -> pod3 again", lambda: ping_ok(lab, "pod1", "pod3"))
    assert {k: v for k, v in agent_pids(lab).items() if k != "node3"} == others_before


# -- (d) a pool change under reflectors --------------------------------------------------------


def test_pool_change_ipip_to_never_under_reflectors_converges(cli: LabCli, tmp_path: Path) -> None:
    lab, _ = up(cli, "--nodes", "3", "--mode", "ipip", "--route-reflectors", "1", "-q")
    wait_until("every pod reaches every other pod", lambda: pods_connected(lab))
    pids = agent_pids(lab)
    blocks = {p.node: block_of(lab, p.name) for p in lab.topology.pods}

    def every_node(how: str) -> bool:
        for node in lab.topology.nodes:
            r = routes(lab, node.name)
            for other in lab.topology.nodes:
                if other is not node and f"{blocks[other.name]} via {other.ip} dev {how}" not in r:
                    return False
        return True

    assert every_node("tunl0")
    for mode, how in (("Never", "eth0"), ("Always", "tunl0"), ("Never", "eth0")):
        apply_pool(lab, tmp_path, mode)
        took = wait_until(f"{mode}: routes via {how} on every node", partial(every_node, how))
        wait_until(f"{mode}: pods connected", lambda: pods_connected(lab))
        print(f"ipipMode {mode}: every node converged in {took:.2f}s")
    # Native now: the pod addresses on node1's uplink, no IPIP.
    p1, p2 = lab.address("pod1"), lab.address("pod2")
    seen = capture(
        [*lab.capture_argv("node1", count=4), "icmp or ip proto 4"],
        lambda: ping_ok(lab, "pod1", "pod2", 3),
    )
    assert f"IP {p1} > {p2}: ICMP echo request" in seen and "192.168.49.3: IP" not in seen, seen
    assert agent_pids(lab) == pids  # converged live, no restarts
