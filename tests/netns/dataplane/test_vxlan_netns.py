"""Two nodes in VXLAN mode on this real kernel: connectivity, the packets, entries, restarts.

Topology (every namespace made here, every address inside them)::

    pod a1 (10.65.1.2) -- cali -- node n1 (eth0 192.168.49.2, vxlan.calico 10.65.1.0) --+
    pod b1 (10.65.1.3) -- cali --'                                                      br0 (u)
    pod a2 (10.65.2.2) -- cali -- node n2 (eth0 192.168.49.3, vxlan.calico 10.65.2.0) --+

Pods are wired Calico-style by hand, as the CNI plugin would; the nodes are driven through the
dataplane API the agent uses (VXLANManager, RouteTable, configure_workload_interface), with
routes ``<block> via <remote VTEP> dev vxlan.calico onlink``.
"""

from __future__ import annotations

import hashlib
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address

import pytest
from dp_lab import Lab, lab, ping, sh

from tortie.dataplane.kernel_netlink import Pyroute2Netlink
from tortie.dataplane.netns import ensure_sysctls, run_in_netns
from tortie.dataplane.routes import RouteSpec
from tortie.dataplane.routetable import RouteTable
from tortie.dataplane.vxlan import (
    VXLAN_DEVICE,
    VXLAN_OVERHEAD,
    RemoteVTEP,
    VXLANManager,
    vtep_mac_for,
)
from tortie.dataplane.workload import configure_workload_interface

NODE_IP = {1: "192.168.49.2", 2: "192.168.49.3"}
VTEP_IP = {1: "10.65.1.0", 2: "10.65.2.0"}
PODS = {"a1": (1, "10.65.1.2"), "b1": (1, "10.65.1.3"), "a2": (2, "10.65.2.2")}
MTU = 1500 - VXLAN_OVERHEAD


def cali_name(pod: str) -> str:
    return "cali" + hashlib.sha1(f"default.{pod}".encode()).hexdigest()[:11]


def remote_vtep(i: int) -> RemoteVTEP:
    return RemoteVTEP(IPv4Address(NODE_IP[i]), IPv4Address(VTEP_IP[i]), vtep_mac_for(f"n{i}"))


@dataclass
class Node:
    ns: str
    netlink: Pyroute2Netlink
    vxlan: VXLANManager
    routes: RouteTable


@dataclass
class Cluster:
    lab: Lab
    nodes: dict[int, Node]
    pod_ns: dict[str, str]


def wire_pod(the_lab: Lab, node_ns: str, pod: str, ip: str) -> str:
    pod_ns = the_lab.netns(pod)
    cali = cali_name(pod)
    sh_ip = the_lab.ip
    sh_ip(node_ns, "link", "add", cali, "type", "veth", "peer", "name", "eth0", "netns", pod_ns)
    sh_ip(pod_ns, "link", "set", "eth0", "mtu", str(MTU), "up")
    sh_ip(pod_ns, "addr", "add", f"{ip}/32", "dev", "eth0")
    sh_ip(pod_ns, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
    sh_ip(pod_ns, "route", "add", "default", "via", "169.254.1.1")
    return pod_ns


def wire_node(the_lab: Lab, underlay: str, i: int) -> tuple[Node, dict[str, str]]:
    ns = the_lab.netns(f"n{i}")
    ip = the_lab.ip
    ip(underlay, "link", "add", f"up{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
    ip(underlay, "link", "set", f"up{i}", "master", "br0", "up")
    ip(ns, "link", "set", "eth0", "up")
    ip(ns, "addr", "add", f"{NODE_IP[i]}/24", "dev", "eth0")
    # Proxy ARP only answers for 169.254.1.1 if the node has a route to it elsewhere.
    ip(ns, "route", "add", "default", "via", "192.168.49.1")
    ensure_sysctls({"net/ipv4/ip_forward": "1"}, ns)
    pod_ns = {}
    own = []
    for pod, (node, pod_ip) in PODS.items():
        if node == i:
            pod_ns[pod] = wire_pod(the_lab, ns, pod, pod_ip)
            own.append(RouteSpec.link(f"{pod_ip}/32", cali_name(pod)))
    nl = Pyroute2Netlink(ns)
    for pod in pod_ns:
        configure_workload_interface(cali_name(pod), netns=ns, netlink=nl, mtu=MTU)
    vx = VXLANManager(nl, node_ip=NODE_IP[i], uplink="eth0")
    vx.ensure_device(MTU, VTEP_IP[i], mac=vtep_mac_for(f"n{i}"))
    other = 3 - i
    vx.set_remote_vteps([remote_vtep(other)])
    routes = RouteTable(nl)
    routes.set_routes(
        [
            RouteSpec.blackhole(f"10.65.{i}.0/26"),
            RouteSpec.via(f"10.65.{other}.0/26", VTEP_IP[other], VXLAN_DEVICE, onlink=True),
            *own,
        ]
    )
    assert routes.apply().converged
    return Node(ns, nl, vx, routes), pod_ns


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with lab() as the_lab:
        underlay = the_lab.netns("u")
        the_lab.ip(underlay, "link", "add", "br0", "type", "bridge")
        the_lab.ip(underlay, "link", "set", "br0", "up")
        the_lab.ip(underlay, "addr", "add", "192.168.49.1/24", "dev", "br0")
        nodes: dict[int, Node] = {}
        pod_ns: dict[str, str] = {}
        try:
            for i in (1, 2):
                nodes[i], pods = wire_node(the_lab, underlay, i)
                pod_ns.update(pods)
            yield Cluster(the_lab, nodes, pod_ns)
        finally:
            for node in nodes.values():
                node.netlink.close()


@dataclass(frozen=True)
class VXLANFrame:
    src: str
    dst: str
    dport: int
    vni: int
    inner_src: str
    inner_dst: str


class UDPCapture:
    """Every VXLAN-over-IPv4 frame seen on ``ifname`` in ``ns`` (AF_PACKET, no tcpdump)."""

    def __init__(self, ns: str, ifname: str) -> None:
        self.sock = run_in_netns(
            ns, lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        )
        self.sock.bind((ifname, 0))
        self.sock.setblocking(False)

    def frames(self) -> list[VXLANFrame]:
        out = []
        while True:
            try:
                data = self.sock.recv(65535)
            except BlockingIOError:
                break
            if data[12:14] != b"\x08\x00" or data[14 + 9] != socket.IPPROTO_UDP:
                continue
            ip = data[14:]
            ihl = (ip[0] & 0xF) * 4
            _sport, dport = struct.unpack_from("!HH", ip, ihl)
            vxlan = ip[ihl + 8 :]
            inner_eth = vxlan[8:]
            if len(inner_eth) < 34 or inner_eth[12:14] != b"\x08\x00":
                continue
            inner = inner_eth[14:]
            out.append(
                VXLANFrame(
                    src=socket.inet_ntoa(ip[12:16]),
                    dst=socket.inet_ntoa(ip[16:20]),
                    dport=dport,
                    vni=int.from_bytes(vxlan[4:7], "big"),
                    inner_src=socket.inet_ntoa(inner[12:16]),
                    inner_dst=socket.inet_ntoa(inner[16:20]),
                )
            )
        return out

    def close(self) -> None:
        self.sock.close()


def pod_ip(pod: str) -> str:
    return PODS[pod][1]


def test_connectivity_matrix(cluster: Cluster) -> None:
    failed = [
        (src, dst)
        for src in PODS
        for dst in PODS
        if src != dst and not ping(cluster.pod_ns[src], pod_ip(dst), timeout=3.0)
    ]
    assert failed == []
    # Full-size packets fit (pod MTU = host MTU - 50), one byte more with DF does not.
    assert ping(cluster.pod_ns["a1"], pod_ip("a2"), size=MTU - 28)
    assert not ping(cluster.pod_ns["a1"], pod_ip("a2"), size=MTU - 27, timeout=1.0)


def test_pod_to_pod_travels_as_vxlan_between_node_ips(cluster: Cluster) -> None:
    n1 = cluster.nodes[1]
    cap = UDPCapture(n1.ns, "eth0")
    try:
        assert ping(cluster.pod_ns["a1"], pod_ip("a2"))
        frames = cap.frames()
    finally:
        cap.close()
    out = VXLANFrame(NODE_IP[1], NODE_IP[2], 4789, 4096, pod_ip("a1"), pod_ip("a2"))
    back = VXLANFrame(NODE_IP[2], NODE_IP[1], 4789, 4096, pod_ip("a2"), pod_ip("a1"))
    assert out in frames and back in frames, frames
    # The same-node pair never touches the tunnel.
    cap = UDPCapture(n1.ns, "eth0")
    try:
        assert ping(cluster.pod_ns["a1"], pod_ip("b1"))
        assert [f for f in cap.frames() if f.inner_src == pod_ip("a1")] == []
    finally:
        cap.close()


def test_second_ensure_and_fresh_manager_change_nothing(cluster: Cluster) -> None:
    for i, node in cluster.nodes.items():
        mac = vtep_mac_for(f"n{i}")
        assert node.vxlan.ensure_device(MTU, VTEP_IP[i], mac=mac) == []
        assert node.vxlan.set_remote_vteps([remote_vtep(3 - i)]) == []
        with Pyroute2Netlink(node.ns) as fresh_nl:  # the agent restarted
            fresh = VXLANManager(fresh_nl, node_ip=NODE_IP[i], uplink="eth0")
            assert fresh.ensure_device(MTU, VTEP_IP[i], mac=mac) == []
            assert fresh.set_remote_vteps([remote_vtep(3 - i)]) == []
            assert fresh.mac() == mac
    out = sh("ip", "-n", cluster.nodes[1].ns, "-d", "link", "show", VXLAN_DEVICE)
    for word in ("vxlan id 4096", "local 192.168.49.2", "dev eth0", "dstport 4789", "nolearning"):
        assert word in out, out
    assert f"mtu {MTU}" in out


def test_stale_entries_removed_and_foreign_ones_kept(cluster: Cluster) -> None:
    node = cluster.nodes[1]
    ns = node.ns
    # What an agent that knew a node 192.168.49.7 left behind before it restarted.
    stale, dev = "66:00:00:00:00:07", VXLAN_DEVICE
    sh(*f"bridge -n {ns} fdb append {stale} dev {dev} dst 192.168.49.7 self".split())
    sh(*f"ip -n {ns} neigh replace 10.65.7.0 lladdr {stale} dev {dev} nud permanent".split())
    # Someone else's permanent neighbour on the uplink: not ours.
    foreign = "192.168.49.77 lladdr 66:00:00:00:00:77 dev eth0 nud permanent"
    sh(*f"ip -n {ns} neigh replace {foreign}".split())
    changes = node.vxlan.set_remote_vteps([remote_vtep(2)])
    assert changes == [
        "removed neighbour 10.65.7.0",
        "removed fdb 66:00:00:00:00:07 dst 192.168.49.7",
    ]
    fdb = sh("bridge", "-n", ns, "fdb", "show", "dev", VXLAN_DEVICE)
    assert "66:00:00:00:00:07" not in fdb and vtep_mac_for("n2") in fdb
    assert "192.168.49.77" in sh("ip", "-n", ns, "neigh", "show", "dev", "eth0")
    assert ping(cluster.pod_ns["a1"], pod_ip("a2"))


def test_deleted_device_is_rebuilt_with_entries_and_routes(cluster: Cluster) -> None:
    node = cluster.nodes[1]
    sh("ip", "-n", node.ns, "link", "del", VXLAN_DEVICE)  # an operator, or a crash mid-change
    assert not ping(cluster.pod_ns["a1"], pod_ip("a2"), timeout=0.5)
    changes = node.vxlan.ensure_device(MTU, VTEP_IP[1], mac=vtep_mac_for("n1"))
    assert changes[0].startswith("created vxlan")
    assert f"fdb {vtep_mac_for('n2')} dst {NODE_IP[2]}" in changes
    node.routes.on_interface_update(VXLAN_DEVICE)
    node.routes.queue_resync()
    assert node.routes.apply().converged
    assert ping(cluster.pod_ns["a1"], pod_ip("a2"), timeout=3.0)
