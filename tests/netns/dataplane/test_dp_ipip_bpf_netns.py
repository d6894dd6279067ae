"""Two nodes, one pod each, IPIP through the tc-BPF backend: the packets, the MTU, the allowlist.

Topology (every namespace made here, every address inside them)::

    pod p1 (10.65.1.2) -- caliX -- node n1 (eth0 192.168.49.2) --+
                                                                  br0 (namespace u) -- rogue (.9)
    pod p2 (10.65.2.2) -- caliY -- node n2 (eth0 192.168.49.3) --+

Pods are wired Calico-style by hand, as the CNI plugin would; the nodes are driven through the
dataplane API the agent uses (BpfIPIP, RouteTable, configure_workload_interface). Every test runs
with the programs attached as tcx links (kernel 6.6+; skipped before) and as tc filters.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from dp_lab import (
    Capture,
    Flood,
    Lab,
    Monitor,
    build_bpf,
    icmp_echo,
    ipv4_header,
    lab,
    ping,
    sh,
)

from tortie.dataplane import tc, tcx
from tortie.dataplane.bpfhooks import hook_programs
from tortie.dataplane.ipip_bpf import AttachMode, BpfIPIP
from tortie.dataplane.kernel_netlink import Pyroute2Netlink
from tortie.dataplane.netns import ensure_sysctls, run_in_netns
from tortie.dataplane.routes import RouteSpec
from tortie.dataplane.routetable import RouteTable
from tortie.dataplane.workload import configure_workload_interface

NODE_IP = {1: "192.168.49.2", 2: "192.168.49.3"}
POD_IP = {1: "10.65.1.2", 2: "10.65.2.2"}
ROGUE_IP = "192.168.49.9"
MTU = 1480  # uplink 1500 - 20


def cali_name(pod: str) -> str:
    return "cali" + hashlib.sha1(f"default.{pod}".encode()).hexdigest()[:11]


@dataclass
class Node:
    ns: str
    pod_ns: str
    netlink: Pyroute2Netlink
    ipip: BpfIPIP
    routes: RouteTable
    pin_dir: Path


@dataclass
class Cluster:
    lab: Lab
    nodes: dict[int, Node]
    rogue: str
    obj: Path
    attach: AttachMode


def wire_node(the_lab: Lab, underlay: str, i: int, obj: Path, attach: AttachMode) -> Node:
    ns, pod_ns = the_lab.netns(f"n{i}"), the_lab.netns(f"p{i}")
    ip = the_lab.ip
    ip(underlay, "link", "add", f"up{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
    ip(underlay, "link", "set", f"up{i}", "master", "br0", "up")
    ip(ns, "link", "set", "eth0", "up")
    ip(ns, "addr", "add", f"{NODE_IP[i]}/24", "dev", "eth0")
    # Proxy ARP only answers for 169.254.1.1 if the node has a route to it elsewhere.
    ip(ns, "route", "add", "default", "via", "192.168.49.1")
    ensure_sysctls({"net/ipv4/ip_forward": "1"}, ns)

    # The pod, as the CNI plugin wires it.
    cali = cali_name(f"pod{i}")
    ip(ns, "link", "add", cali, "type", "veth", "peer", "name", "eth0", "netns", pod_ns)
    ip(pod_ns, "link", "set", "eth0", "mtu", str(MTU), "up")
    ip(pod_ns, "addr", "add", f"{POD_IP[i]}/32", "dev", "eth0")
    ip(pod_ns, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
    ip(pod_ns, "route", "add", "default", "via", "169.254.1.1")

    # The agent's part.
    nl = Pyroute2Netlink(ns)
    configure_workload_interface(cali, netns=ns, netlink=nl, mtu=MTU)
    other = 3 - i
    ipip = BpfIPIP(
        nl,
        node_ip=IPv4Address(NODE_IP[i]),
        uplink="eth0",
        pin_dir=the_lab.bpffs(f"n{i}"),
        netns=ns,
        bpf_object=obj,
        attach=attach,
    )
    ipip.ensure_device(MTU, f"10.65.{i}.1")
    ipip.set_known_nodes({IPv4Address(NODE_IP[other])})
    routes = RouteTable(nl)
    routes.set_routes(
        [
            RouteSpec.blackhole(f"10.65.{i}.0/26"),
            RouteSpec.via(f"10.65.{other}.0/26", NODE_IP[other], "tunl0", onlink=True),
            RouteSpec.link(f"{POD_IP[i]}/32", cali),
        ]
    )
    assert routes.apply().converged
    return Node(ns, pod_ns, nl, ipip, routes, ipip.pin_dir)


# Both builds of bpf/ipip.c: ipip.o (outer destination from the skb's route, kfuncs) and
# ipip-compat.o (by FIB lookup, for kernels before 6.2), each through every test here; ipip.o
# both ways of attaching (tcx links where the kernel has them, else tc filters).
@pytest.fixture(
    scope="module",
    params=[("ipip.o", "tcx"), ("ipip.o", "tc"), ("ipip-compat.o", "tc")],
    ids=["ipip.o-tcx", "ipip.o-tc", "ipip-compat.o-tc"],
)
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    name, attach = request.param
    if attach == "tcx" and not tcx.supported():
        pytest.skip("this kernel has no tcx (Linux 6.6+)")
    obj = build_bpf().parent / name
    with lab() as the_lab:
        underlay = the_lab.netns("u")
        the_lab.ip(underlay, "link", "add", "br0", "type", "bridge")
        the_lab.ip(underlay, "link", "set", "br0", "up")
        nodes = {i: wire_node(the_lab, underlay, i, obj, attach) for i in (1, 2)}
        rogue = the_lab.netns("r")
        the_lab.ip(
            underlay, "link", "add", "up9", "type", "veth", "peer", "name", "eth0", "netns", rogue
        )
        the_lab.ip(underlay, "link", "set", "up9", "master", "br0", "up")
        the_lab.ip(rogue, "link", "set", "eth0", "up")
        the_lab.ip(rogue, "addr", "add", f"{ROGUE_IP}/24", "dev", "eth0")
        try:
            yield Cluster(the_lab, nodes, rogue, obj, attach)
        finally:
            for node in nodes.values():
                node.netlink.close()


def another_backend(node: Node, *objects: Path, attach: AttachMode) -> BpfIPIP:
    """A second BpfIPIP for node 1 (an upgraded or restarted agent's), trying ``objects``."""
    return BpfIPIP(
        node.netlink,
        node_ip=IPv4Address(NODE_IP[1]),
        uplink="eth0",
        pin_dir=node.pin_dir,
        netns=node.ns,
        bpf_objects=objects,
        attach=attach,
    )


def ours(ns: str) -> list[tuple[str, str, str, str]]:
    """tortie's programs on the node's hooks: (dev, hook, tcx|tc, program name)."""
    return [
        (p.dev, p.hook, p.attach, p.name)
        for p in hook_programs(ns)
        if p.name in ("ipip_encap", "ipip_decap")
    ]


def expected(attach: str) -> list[tuple[str, str, str, str]]:
    return sorted(
        [("eth0", "ingress", attach, "ipip_decap"), ("tunl0", "egress", attach, "ipip_encap")]
    )


def wait_for(predicate: object, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def test_pod_to_pod_ping_travels_as_ipip(cluster: Cluster) -> None:
    n1, n2 = cluster.nodes[1], cluster.nodes[2]
    capture = Capture(n2.ns, "eth0")
    try:
        assert ping(n1.pod_ns, POD_IP[2])
        assert ping(n2.pod_ns, POD_IP[1])
        time.sleep(0.05)
        frames = capture.frames()
    finally:
        capture.close()
    ipip = [f for f in frames if f.proto == 4]
    there = (NODE_IP[1], NODE_IP[2], POD_IP[1], POD_IP[2], 1)
    back = (NODE_IP[2], NODE_IP[1], POD_IP[2], POD_IP[1], 1)
    seen = {(f.src, f.dst, f.inner_src, f.inner_dst, f.inner_proto) for f in ipip}
    assert there in seen and back in seen, frames
    # Pod addresses never appear bare on the underlay.
    assert not [f for f in frames if f.src in POD_IP.values() or f.dst in POD_IP.values()]
    for node in (n1, n2):
        counters = node.ipip.counters()
        assert counters["encap_ok"] >= 2 and counters["decap_ok"] >= 2, counters


def test_mtu_1480_through_the_tunnel(cluster: Cluster) -> None:
    n1, n2 = cluster.nodes[1], cluster.nodes[2]
    assert n1.netlink.get_link("tunl0").mtu == MTU  # type: ignore[union-attr]
    assert n1.netlink.get_link("eth0").mtu == 1500  # type: ignore[union-attr]
    capture = Capture(n2.ns, "eth0")
    try:
        assert ping(n1.pod_ns, POD_IP[2], size=1452)  # 1452 + 8 + 20 = 1480 inner
        time.sleep(0.05)
        largest = max(f.length for f in capture.frames() if f.proto == 4)
    finally:
        capture.close()
    assert largest == 1500  # outer packet fills the uplink exactly
    assert not ping(n1.pod_ns, POD_IP[2], size=1453, timeout=0.5)


def test_tcp_stream_pod_to_pod(cluster: Cluster) -> None:
    n1, n2 = cluster.nodes[1], cluster.nodes[2]
    payload = os.urandom(8 << 20)
    server = run_in_netns(n2.pod_ns, lambda: socket.create_server((POD_IP[2], 0)))
    port = server.getsockname()[1]
    received = hashlib.sha256()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            while chunk := conn.recv(1 << 16):
                received.update(chunk)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = run_in_netns(
        n1.pod_ns, lambda: socket.create_connection((POD_IP[2], port), timeout=10)
    )
    with client:
        client.sendall(payload)
    thread.join(timeout=20)
    server.close()
    assert received.digest() == hashlib.sha256(payload).digest()


def send_ipip_from_rogue(cluster: Cluster, inner_src: str) -> None:
    inner = icmp_echo(0x1234, 1, b"x" * 32)
    packet = ipv4_header(inner_src, POD_IP[1], 1, len(inner)) + inner
    sock = run_in_netns(cluster.rogue, lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, 4))
    with sock:
        sock.sendto(packet, (NODE_IP[1], 0))


def test_ipip_from_unknown_source_is_dropped_and_counted(cluster: Cluster) -> None:
    n1 = cluster.nodes[1]
    before = n1.ipip.counters()
    pod_capture = Capture(n1.pod_ns, "eth0")
    try:
        send_ipip_from_rogue(cluster, "10.65.9.9")
        assert wait_for(
            lambda: (
                n1.ipip.counters()["decap_drop_unknown_src"] == before["decap_drop_unknown_src"] + 1
            )
        )
        time.sleep(0.05)
        assert not [f for f in pod_capture.frames() if f.src == "10.65.9.9"]
        assert n1.ipip.counters()["decap_ok"] == before["decap_ok"]

        # Control: the same packet from a known node is decapsulated and reaches the pod.
        assert n1.ipip.set_known_nodes({IPv4Address(NODE_IP[2]), IPv4Address(ROGUE_IP)}) == [
            "allowlist +1 -0"
        ]
        send_ipip_from_rogue(cluster, "10.65.9.9")
        assert wait_for(lambda: any(f.src == "10.65.9.9" for f in pod_capture.frames()))
        assert n1.ipip.counters()["decap_ok"] == before["decap_ok"] + 1
    finally:
        pod_capture.close()
        n1.ipip.set_known_nodes({IPv4Address(NODE_IP[2])})
    assert n1.ipip.known_nodes() == {IPv4Address(NODE_IP[2])}


def test_programs_are_attached_the_configured_way(cluster: Cluster) -> None:
    for node in cluster.nodes.values():
        assert node.ipip.attach_how() == cluster.attach
        assert sorted(ours(node.ns)) == expected(cluster.attach)


def test_setup_is_idempotent_across_agent_restarts(cluster: Cluster) -> None:
    n1 = cluster.nodes[1]
    attached = hook_programs(n1.ns)
    assert sorted(ours(n1.ns)) == expected(cluster.attach)
    monitor = Monitor(n1.ns, "link", "address", "route")
    try:
        assert n1.ipip.ensure_device(MTU, "10.65.1.1") == []
        assert n1.ipip.set_known_nodes({IPv4Address(NODE_IP[2])}) == []
        # A restarted agent: new objects, no memory; the node is already right.
        with Pyroute2Netlink(n1.ns) as nl:
            fresh = BpfIPIP(
                nl,
                node_ip=IPv4Address(NODE_IP[1]),
                uplink="eth0",
                pin_dir=n1.pin_dir,
                netns=n1.ns,
                bpf_object=cluster.obj,
                attach=cluster.attach,
            )
            assert fresh.set_known_nodes({IPv4Address(NODE_IP[2])}) == []
            assert fresh.ensure_device(MTU, "10.65.1.1") == []
        assert ping(n1.pod_ns, POD_IP[2])
    finally:
        events = monitor.stop()
    assert events == []
    assert hook_programs(n1.ns) == attached  # same programs, same links: nothing re-attached


def test_tunnel_address_change_and_upgrade_keep_traffic(cluster: Cluster) -> None:
    n1 = cluster.nodes[1]
    assert n1.ipip.ensure_device(MTU, "10.65.1.3") == [
        "added address 10.65.1.3/32 to tunl0",
        "removed address 10.65.1.1/32 from tunl0",
    ]
    # An upgrade: a different object loads beside the old one, the allowlist is carried over
    # and the filters are swapped; old pins go.
    newer = cluster.lab.tmp / "ipip-newer.o"
    newer.write_bytes(cluster.obj.read_bytes() + b"\0")  # same code, different hash
    upgraded = another_backend(n1, newer, attach=cluster.attach)
    links = {p.hook: p.link_id for p in hook_programs(n1.ns)}
    changes = upgraded.ensure_device(MTU, "10.65.1.3")
    assert any(c.startswith("loaded ") for c in changes)
    assert "copied 1 allowlist entries" in " ".join(changes)
    # tcx: the program inside each link is swapped (same links); tc: filters replaced in place.
    swap = "swapped program" if cluster.attach == "tcx" else "attached "
    assert sum(c.startswith(swap) for c in changes) == 2, changes
    assert {p.hook: p.link_id for p in hook_programs(n1.ns)} == links
    assert sorted(ours(n1.ns)) == expected(cluster.attach)
    assert sum(c.startswith("unpinned ") for c in changes) == 1
    assert len(list(n1.pin_dir.glob("ipip-*"))) == 1
    assert ping(n1.pod_ns, POD_IP[2])
    assert upgraded.known_nodes() == {IPv4Address(NODE_IP[2])}
    n1.ipip = upgraded


def test_first_packet_to_an_unresolved_neighbour_is_not_lost(cluster: Cluster) -> None:
    """Encap sends via the kernel's route while ARP resolves, via the known next hop after.

    The two ways differ in the skb's dst: a packet queued for ARP with the inner route's dst
    would leave with tunl0's MAC and be lost. A single ping right after the neighbour is
    flushed must arrive; then the fast path (``encap_ok`` without ``encap_via_route``) is used.
    """
    n1, n2 = cluster.nodes[1], cluster.nodes[2]
    for node in (n1, n2):
        sh("ip", "-n", node.ns, "neigh", "flush", "dev", "eth0")
    before = n1.ipip.counters()
    assert ping(n1.pod_ns, POD_IP[2])  # one echo; lost if the queued packet went astray
    resolving = n1.ipip.counters()
    assert resolving["encap_via_route"] > before["encap_via_route"], resolving
    assert ping(n1.pod_ns, POD_IP[2])
    after = n1.ipip.counters()
    assert after["encap_ok"] > resolving["encap_ok"], after
    assert after["encap_via_route"] == resolving["encap_via_route"], after


def test_outer_destination_comes_from_the_route_or_a_lookup_by_build(cluster: Cluster) -> None:
    """ipip.o takes the gateway from the skb's route; ipip-compat.o looks it up per packet."""
    n1 = cluster.nodes[1]
    before = n1.ipip.counters()
    assert ping(n1.pod_ns, POD_IP[2])
    after = n1.ipip.counters()
    sent = after["encap_ok"] - before["encap_ok"]
    looked_up = after["encap_gw_by_lookup"] - before["encap_gw_by_lookup"]
    assert sent >= 1, after
    assert looked_up == (0 if cluster.obj.name == "ipip.o" else sent), (cluster.obj.name, after)


def test_an_object_the_kernel_refuses_falls_back_to_the_next(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A first choice that does not load (here: not even ELF) leaves the next one loaded."""
    n1 = cluster.nodes[1]
    refused = tmp_path / "ipip-refused.o"
    refused.write_bytes(b"not an ELF object")
    other = tmp_path / "ipip-next.o"
    other.write_bytes(cluster.obj.read_bytes() + b"\0\0")  # same code, a new version
    nodes = {IPv4Address(NODE_IP[2])}
    fallback = another_backend(n1, refused, other, attach=cluster.attach)
    fallback.set_known_nodes(nodes)
    changes = fallback.ensure_device(MTU, "10.65.1.3")
    assert any(c.startswith(f"loaded {other.name} into") for c in changes), changes
    assert any(c.startswith("not loaded: ") and refused.name in c for c in changes), changes
    assert ping(n1.pod_ns, POD_IP[2])
    # Settled: the loaded fallback is kept, the refused object is not tried again.
    assert fallback.ensure_device(MTU, "10.65.1.3") == []
    assert fallback.known_nodes() == nodes
    n1.ipip = fallback


GRAFT = "n1 eth0 tx_dropped (the kernel grafting a clsact qdisc)"


def link_stats(ns: str) -> dict[str, dict[str, dict[str, int]]]:
    """``ip -s link`` of every device in ``ns``: name -> {"rx": {...}, "tx": {...}}."""
    links = json.loads(sh("ip", "-n", ns, "-s", "-j", "link"))
    return {link["ifname"]: link["stats64"] for link in links}


def snmp(ns: str, group: str, field: str) -> int:
    """A counter of ``ns``'s /proc/net/snmp (e.g. Ip InUnknownProtos)."""
    out = sh("ip", "netns", "exec", ns, "cat", "/proc/net/snmp")
    names, values = [line.split() for line in out.splitlines() if line.startswith(f"{group}:")]
    return int(values[names.index(field)])


def has_clsact(ns: str, dev: str) -> bool:
    qdiscs = json.loads(sh("ip", "netns", "exec", ns, "tc", "-j", "qdisc", "show", "dev", dev))
    return any(q.get("kind") == "clsact" for q in qdiscs)


def losses(cluster: Cluster) -> dict[str, int]:
    """Every counter that rises when node 1's IPIP path loses a packet, named by where.

    A hook without its program: on tunl0's egress the pod's packet leaves the placeholder
    unencapsulated, for its peer tunl0p; on the uplink's ingress the IPIP packet reaches the
    node's IP stack, which has no ipip module (InUnknownProtos). A qdisc graft on tunl0 while
    nothing redirects its packets (tunl0 tx_dropped). The programs' own drops, on both nodes.
    And :data:`GRAFT`: what the uplink dropped while the kernel grafted its clsact qdisc.
    """
    n1 = cluster.nodes[1]
    links = link_stats(n1.ns)
    counts = {
        "tunl0 egress without ipip_encap: tunl0p rx_packets": links["tunl0p"]["rx"]["packets"],
        "tunl0 tx_dropped": links["tunl0"]["tx"].get("dropped", 0),
        "eth0 ingress without ipip_decap: n1 Ip InUnknownProtos": snmp(
            n1.ns, "Ip", "InUnknownProtos"
        ),
        GRAFT: links["eth0"]["tx"].get("dropped", 0),
    }
    for i, node in cluster.nodes.items():
        for name, value in node.ipip.counters().items():
            if "drop" in name:
                counts[f"n{i} {name}"] = value
    return counts


@dataclass
class Switch:
    """One change of node 1's attach type: when (monotonic) and what it reported."""

    start: float
    end: float
    changes: list[str]


@dataclass
class SwitchRun:
    """Pod 1 flooding pod 2 with echoes while node 1 switches attach type and back."""

    flood: Flood
    lost: list[int]  # unanswered echoes
    switches: list[Switch]
    counted: dict[str, int]  # what losses() counted meanwhile: only what rose

    def during(self, seq: int) -> list[int]:
        """The switches (indices) during which echo ``seq`` was being sent."""
        before, after = self.flood.sent[seq]
        return [i for i, s in enumerate(self.switches) if before <= s.end and after >= s.start]

    def report(self) -> str:
        return (
            f"lost echoes (seq, during switch #) {[(seq, self.during(seq)) for seq in self.lost]}"
            f" of {len(self.flood.sent)}; counted {self.counted}; switches "
            f"{[(round(s.end - s.start, 3), s.changes) for s in self.switches]}"
        )


def switch_under_flood(cluster: Cluster, *, gap: bool = False) -> SwitchRun:
    """Switch node 1 to the other attach type and back under the flood, as a restarted agent
    with the other ``--bpf-attach-type`` would. ``gap``: remove the old attachments first (the
    defect the product avoids), to show that the measurement sees it."""
    n1 = cluster.nodes[1]
    other: AttachMode = "tc" if cluster.attach == "tcx" else "tcx"
    nodes = {IPv4Address(NODE_IP[2])}
    before = losses(cluster)
    # Echoes every 0.2 ms as well, unaccounted: more packets through the hooks, so that even a
    # gap of a fraction of a millisecond meets one (the hooks' counters see it).
    dense = subprocess.Popen(
        ["ip", "netns", "exec", n1.pod_ns, "ping", "-q", "-i", "0.0002", POD_IP[2]],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    flood = Flood(n1.pod_ns, POD_IP[2])
    switches = []
    try:
        time.sleep(0.2)
        for attach in (other, cluster.attach):
            switched = another_backend(n1, cluster.obj, attach=attach)
            switched.set_known_nodes(nodes)
            start = time.monotonic()
            if gap:
                tc_hooks: list[tuple[str, tc.Direction]] = [
                    ("tunl0", "egress"),
                    ("eth0", "ingress"),
                ]
                for (dev, hook), prog in zip(tc_hooks, ("ipip_encap", "ipip_decap"), strict=True):
                    if attach == "tcx":
                        tc.remove_bpf_filter(dev, hook, n1.ns)
                    else:
                        tcx.remove_link(switched.link_path(prog))
            changes = switched.ensure_device(MTU, "10.65.1.3")
            switches.append(Switch(start, time.monotonic(), changes))
            n1.ipip = switched
            time.sleep(0.3)
    finally:
        lost = flood.stop()
        dense.send_signal(signal.SIGINT)
        dense.wait(timeout=10)
    after = losses(cluster)
    counted = {k: v - before[k] for k, v in after.items() if v != before[k]}
    return SwitchRun(flood, lost, switches, counted)


def test_switching_the_attach_type_keeps_traffic_flowing(cluster: Cluster) -> None:
    """tc -> tcx -> tc (or the reverse) under a flood of pod-to-pod echoes: the new attachment
    is made before the old one goes, so no packet meets a hook without the program.

    Every echo is accounted for. The one loss allowed is the kernel's, not tortie's: the first
    tc filter on a device without a clsact qdisc makes the kernel graft one, and the device
    drops what it sends meanwhile (tortie.dataplane.tc's hazard, shown without tortie in
    test_dp_tc_netns.py). Here that is the uplink, on the switch from tcx to tc: an echo may be
    lost only while that switch ran, and only as many as the uplink's tx_dropped counted.
    """
    if not tcx.supported():
        pytest.skip("this kernel has no tcx (Linux 6.6+)")
    n1 = cluster.nodes[1]
    first: AttachMode = "tc" if cluster.attach == "tcx" else "tcx"
    grafts_due = [0] if first == "tc" and not has_clsact(n1.ns, "eth0") else []
    run = switch_under_flood(cluster)
    for switch, attach in zip(run.switches, (first, cluster.attach), strict=True):
        new, gone = (
            ("(tcx link)", "removed tc filter")
            if attach == "tcx"
            else ("attached ipip_", "detached the tcx link")
        )
        assert sum(new in c for c in switch.changes) == 2, switch.changes
        assert sum(c.startswith(gone) for c in switch.changes) == 2, switch.changes
    assert sorted(ours(n1.ns)) == expected(cluster.attach)
    assert n1.ipip.ensure_device(MTU, "10.65.1.3") == []
    # The flood ran across both switches, so it measured them.
    sent = sorted(run.flood.sent.values())
    assert sent[0][1] < run.switches[0].start and sent[-1][0] > run.switches[-1].end
    assert len(run.flood.answered) >= 100, run.report()

    grafts = [
        i for i, s in enumerate(run.switches) if "added the clsact qdisc to eth0" in s.changes
    ]
    assert grafts == grafts_due, run.report()  # the qdisc added where missing, never again
    by_kernel = run.counted.pop(GRAFT, 0)
    assert run.counted == {}, run.report()
    assert all(set(run.during(seq)) & set(grafts) for seq in run.lost), run.report()
    assert len(run.lost) <= by_kernel, run.report()


def test_the_switching_test_sees_a_gap(cluster: Cluster) -> None:
    """The measurement above catches the defect it is there for: with the old attachments
    removed before the new ones are made, echoes are lost and the hooks' counters say where."""
    if not tcx.supported():
        pytest.skip("this kernel has no tcx (Linux 6.6+)")
    run = switch_under_flood(cluster, gap=True)
    run.counted.pop(GRAFT, None)
    assert run.lost, run.report()
    assert "tunl0 egress without ipip_encap: tunl0p rx_packets" in run.counted, run.report()
    assert "eth0 ingress without ipip_decap: n1 Ip InUnknownProtos" in run.counted, run.report()
    assert sorted(ours(cluster.nodes[1].ns)) == expected(cluster.attach)


def test_decap_passes_other_traffic_on_to_the_next_filter(cluster: Cluster) -> None:
    """Traffic that is not IPIP for this node goes on to whatever runs after ipip_decap on
    the uplink (TC_ACT_UNSPEC, not TC_ACT_OK, which would end the hook): here a tc filter at a
    later preference mirrors ICMP to a veth, whose peer counts what arrives."""
    n1, n2 = cluster.nodes[1], cluster.nodes[2]
    n2_tc = ("ip", "netns", "exec", n2.ns, "tc")
    cluster.lab.ip(n2.ns, "link", "add", "mir0", "type", "veth", "peer", "name", "mir1")
    cluster.lab.ip(n2.ns, "link", "set", "mir0", "up")
    cluster.lab.ip(n2.ns, "link", "set", "mir1", "up")
    if cluster.attach == "tcx":  # a tc filter needs the clsact qdisc tortie does not need
        sh(*n2_tc, "qdisc", "replace", "dev", "eth0", "clsact")
    sh(*n2_tc, "filter", "add", "dev", "eth0", "ingress", "pref", "200", "protocol", "ip",
       "u32", "match", "ip", "protocol", "1", "0xff",
       "action", "mirred", "egress", "mirror", "dev", "mir0")  # fmt: skip
    rx = "/sys/class/net/mir1/statistics/rx_packets"
    try:
        before = int(sh("ip", "netns", "exec", n2.ns, "cat", rx))
        for _ in range(3):
            assert ping(n1.ns, NODE_IP[2])  # node to node: plain ICMP on n2's uplink
        mirrored = int(sh("ip", "netns", "exec", n2.ns, "cat", rx)) - before
        assert mirrored >= 3, mirrored
        assert ping(n1.pod_ns, POD_IP[2])  # and IPIP is still decapsulated
    finally:
        sh(*n2_tc, "filter", "del", "dev", "eth0", "ingress", "pref", "200", check=False)
        cluster.lab.ip(n2.ns, "link", "del", "mir0")
