"""tortie's nftables table on this real kernel: allowlist, anti-spoofing, natOutgoing, ownership.

Topology (every namespace made here, every address inside them)::

    pod a1 (10.65.1.2) -- cali --+
                                 node n1 (eth0 192.168.49.2) --+
    pod b1 (10.65.1.3) -- cali --+                              |
                                                               br0 (u, 192.168.49.1) -- rogue r (.9)
    pod a2 (10.65.2.2) -- cali -- node n2 (eth0 192.168.49.3) --+
                                                                u: wan 203.0.113.1
                                                                   |
                                                                x: "the internet" 203.0.113.10

Nodes route each other's blocks natively (``10.65.2.0/26 via 192.168.49.3 dev eth0``); the
underlay router u knows no pod addresses, so a pod reaches x only through natOutgoing. Pods have
rp_filter off (``allow_spoofing``) so the nftables anti-spoofing rule is the only defence and is
what the tests see. Each node runs an :class:`NftablesManager` as the agent would.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address

import pytest
from dp_lab import Capture, Lab, icmp_echo, ipv4_header, lab, ping, sh

from tortie.dataplane.netns import ensure_sysctls, run_in_netns
from tortie.dataplane.nft_exec import ExecutorKind, make_executor
from tortie.dataplane.nftables import SET_NODE_IPS, SET_WORKLOADS, NftablesManager
from tortie.dataplane.workload import configure_workload_interface

NODE_IP = {1: "192.168.49.2", 2: "192.168.49.3"}
ROGUE_IP = "192.168.49.9"
INTERNET_IP = "203.0.113.10"
ROUTER_WAN = "203.0.113.1"
POOL = "10.65.0.0/16"
PODS = {"a1": (1, "10.65.1.2"), "b1": (1, "10.65.1.3"), "a2": (2, "10.65.2.2")}
FOREIGN = """table inet foreign {
  set s { type ipv4_addr; elements = { 198.51.100.7 } }
  chain c { type filter hook input priority 10; policy accept; ip saddr @s accept; }
}
table ip tortie {
  chain c { type filter hook forward priority 5; policy accept; }
}
"""


def cali_name(pod: str) -> str:
    return "cali" + hashlib.sha1(f"default.{pod}".encode()).hexdigest()[:11]


def workloads(node: int, without: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    return [
        (cali_name(pod), ip) for pod, (n, ip) in PODS.items() if n == node and pod not in without
    ]


@dataclass
class Cluster:
    lab: Lab
    nodes: dict[int, str]
    pods: dict[str, str]
    nft: dict[int, NftablesManager]
    rogue: str
    internet: str

    def n1(self) -> NftablesManager:
        return self.nft[1]


def wire(the_lab: Lab) -> Cluster:
    ip = the_lab.ip
    u = the_lab.netns("u")
    ip(u, "link", "add", "br0", "type", "bridge")
    ip(u, "link", "set", "br0", "up")
    ip(u, "addr", "add", "192.168.49.1/24", "dev", "br0")
    ensure_sysctls({"net/ipv4/ip_forward": "1"}, u)
    x = the_lab.netns("x")
    ip(u, "link", "add", "wan", "type", "veth", "peer", "name", "eth0", "netns", x)
    ip(u, "link", "set", "wan", "up")
    ip(u, "addr", "add", f"{ROUTER_WAN}/24", "dev", "wan")
    ip(x, "link", "set", "eth0", "up")
    ip(x, "addr", "add", f"{INTERNET_IP}/24", "dev", "eth0")
    ip(x, "route", "add", "default", "via", ROUTER_WAN)

    def uplink(ns: str, name: str, addr: str) -> None:
        ip(u, "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip(u, "link", "set", name, "master", "br0", "up")
        ip(ns, "link", "set", "eth0", "up")
        ip(ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        ip(ns, "route", "add", "default", "via", "192.168.49.1")

    rogue = the_lab.netns("r")
    uplink(rogue, "up9", ROGUE_IP)
    nodes, pods = {}, {}
    for i in (1, 2):
        ns = nodes[i] = the_lab.netns(f"n{i}")
        uplink(ns, f"up{i}", NODE_IP[i])
        ensure_sysctls({"net/ipv4/ip_forward": "1"}, ns)
        other = 3 - i
        ip(ns, "route", "add", f"10.65.{other}.0/26", "via", NODE_IP[other], "dev", "eth0")
        for pod, (node, pod_ip) in PODS.items():
            if node != i:
                continue
            p = pods[pod] = the_lab.netns(pod)
            cali = cali_name(pod)
            ip(ns, "link", "add", cali, "type", "veth", "peer", "name", "eth0", "netns", p)
            ip(p, "link", "set", "eth0", "up")
            ip(p, "addr", "add", f"{pod_ip}/32", "dev", "eth0")
            ip(p, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
            ip(p, "route", "add", "default", "via", "169.254.1.1")
            # rp_filter off: nftables alone must stop spoofing.
            configure_workload_interface(cali, netns=ns, allow_spoofing=True)
            ip(ns, "link", "set", cali, "up")
            ip(ns, "route", "add", f"{pod_ip}/32", "dev", cali, "scope", "link")
    return Cluster(the_lab, nodes, pods, {}, rogue, x)


def nft(ns: str, *args: str) -> str:
    return sh("ip", "netns", "exec", ns, "nft", *args)


def load_foreign(ns: str) -> str:
    def work() -> None:
        subprocess.run(["nft", "-f", "-"], input=FOREIGN, text=True, check=True)

    run_in_netns(ns, work)
    return foreign_state(ns)


def foreign_state(ns: str) -> str:
    """The other tables, stateless (no counter values), as nft prints them."""
    return nft(ns, "-s", "list", "table", "inet", "foreign") + nft(
        ns, "-s", "list", "table", "ip", "tortie"
    )


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with lab() as the_lab:
        c = wire(the_lab)
        try:
            for i, ns in c.nodes.items():
                m = c.nft[i] = NftablesManager(ns)
                m.ensure_table()
                m.set_node_ips(NODE_IP.values())
                m.set_pools([POOL], [POOL])
                m.set_workloads(workloads(i))
            yield c
        finally:
            for m in c.nft.values():
                m.close()


# -- packets ------------------------------------------------------------------------------------


class Listener:
    """A raw (protocol) or UDP socket in a namespace that reports packets carrying a marker."""

    def __init__(self, ns: str, kind: int, proto: int, port: int = 0) -> None:
        self.sock = run_in_netns(ns, lambda: socket.socket(socket.AF_INET, kind, proto))
        if port:
            self.sock.bind(("0.0.0.0", port))
        self.sock.setblocking(False)

    def saw(self, marker: bytes, timeout: float = 1.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if marker in self.sock.recv(65535):
                    return True
            except BlockingIOError:
                time.sleep(0.01)
        return False

    def close(self) -> None:
        self.sock.close()


def send_raw(ns: str, dst: str, proto: int, payload: bytes, src: str | None = None) -> None:
    """One IPv4 packet of ``proto``; with ``src``, a hand-made header (any source at all)."""

    def work() -> None:
        if src is None:
            with socket.socket(socket.AF_INET, socket.SOCK_RAW, proto) as s:
                s.sendto(payload, (dst, 0))
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
                s.sendto(ipv4_header(src, dst, proto, len(payload)) + payload, (dst, 0))

    run_in_netns(ns, work)


def send_udp(ns: str, dst: str, port: int, payload: bytes) -> None:
    def work() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(payload, (dst, port))

    run_in_netns(ns, work)


def marker() -> bytes:
    return b"tortie-" + secrets.token_hex(6).encode()


def ipip_packet(mark: bytes) -> bytes:
    inner = icmp_echo(7, 1, mark)
    return ipv4_header("10.65.2.2", "10.65.1.2", socket.IPPROTO_ICMP, len(inner)) + inner


def counted(m: NftablesManager, name: str, action: Callable[[], object]) -> int:
    before = m.counters()[name]
    action()
    time.sleep(0.05)
    return m.counters()[name] - before


# -- tests --------------------------------------------------------------------------------------


def test_ipip_only_from_node_addresses(cluster: Cluster) -> None:
    n1 = cluster.nodes[1]
    listener = Listener(n1, socket.SOCK_RAW, 4)
    try:
        mark = marker()
        dropped = counted(
            cluster.n1(),
            "ipip_dropped",
            lambda: send_raw(cluster.rogue, NODE_IP[1], 4, ipip_packet(mark)),
        )
        assert dropped == 1 and not listener.saw(mark, timeout=0.5)
        mark = marker()
        dropped = counted(
            cluster.n1(),
            "ipip_dropped",
            lambda: send_raw(cluster.nodes[2], NODE_IP[1], 4, ipip_packet(mark)),
        )
        assert dropped == 0 and listener.saw(mark)
    finally:
        listener.close()


def test_vxlan_only_from_node_addresses(cluster: Cluster) -> None:
    listener = Listener(cluster.nodes[1], socket.SOCK_DGRAM, 0, port=4789)
    try:
        mark = marker()
        dropped = counted(
            cluster.n1(),
            "vxlan_dropped",
            lambda: send_udp(cluster.rogue, NODE_IP[1], 4789, mark),
        )
        assert dropped == 1 and not listener.saw(mark, timeout=0.5)
        mark = marker()
        dropped = counted(
            cluster.n1(),
            "vxlan_dropped",
            lambda: send_udp(cluster.nodes[2], NODE_IP[1], 4789, mark),
        )
        assert dropped == 0 and listener.saw(mark)
    finally:
        listener.close()


def test_pod_spoofing_another_address_is_dropped_and_counted(cluster: Cluster) -> None:
    a1, a2_ip = cluster.pods["a1"], PODS["a2"][1]
    listener = Listener(cluster.pods["a2"], socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        assert ping(a1, a2_ip)
        # The same hand-made packet with the pod's own address gets through ...
        mark = marker()
        spoofed = counted(
            cluster.n1(),
            "spoofed",
            lambda: send_raw(a1, a2_ip, 1, icmp_echo(9, 1, mark), src=PODS["a1"][1]),
        )
        assert spoofed == 0 and listener.saw(mark)
        # ... and with its neighbour's address (or any other) it does not.
        for fake_src in (PODS["b1"][1], "10.65.1.99", "192.168.49.3"):
            mark = marker()
            spoofed = counted(
                cluster.n1(),
                "spoofed",
                lambda src=fake_src, m=mark: send_raw(a1, a2_ip, 1, icmp_echo(9, 2, m), src=src),
            )
            assert spoofed == 1, fake_src
            assert not listener.saw(mark, timeout=0.3), fake_src
    finally:
        listener.close()
    assert ping(a1, a2_ip)  # the pod's own traffic still flows


def conntrack_entries(ns: str) -> int:
    return int(sh("ip", "netns", "exec", ns, "cat", "/proc/sys/net/netfilter/nf_conntrack_count"))


def tracked_after(ns: str, action: Callable[[], object]) -> int:
    """How many conntrack entries ``action`` (a new flow through ``ns``) created there."""
    before = conntrack_entries(ns)
    action()
    return conntrack_entries(ns) - before


def untracked_soon(ns: str, new_flow: Callable[[], object], timeout: float = 5.0) -> bool:
    """Whether, within ``timeout``, a new flow through ``ns`` creates no conntrack entry.

    Not at once: the kernel drops conntrack when the masquerade expression is destroyed,
    which nftables defers to a work queue after the transaction commits.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tracked_after(ns, new_flow) == 0:
            return True
        time.sleep(0.1)
    return False


def _capture_ping(cluster: Cluster, ns: str, ifname: str, src_pod: str, dst: str) -> set[str]:
    cap = Capture(ns, ifname)
    try:
        ok = ping(cluster.pods[src_pod], dst)
        # The router's own ICMP errors (no route back to a pod address) are not the ping.
        sources = {
            f.src for f in cap.frames() if f.dst == dst and f.proto == 1 and f.src != ROUTER_WAN
        }
    finally:
        cap.close()
    return sources | ({"answered"} if ok else set())


def test_nat_outgoing_to_the_internet_but_not_pod_to_pod(cluster: Cluster) -> None:
    seen = _capture_ping(cluster, cluster.internet, "eth0", "a1", INTERNET_IP)
    assert seen == {NODE_IP[1], "answered"}  # source rewritten to the node's address
    seen = _capture_ping(cluster, cluster.nodes[2], "eth0", "a1", PODS["a2"][1])
    assert seen == {PODS["a1"][1], "answered"}  # pod -> pod keeps the pod's address


def test_table_converges_after_pool_node_and_pod_changes(cluster: Cluster) -> None:
    m = cluster.n1()
    assert m.rule_count() == 4
    n1 = cluster.nodes[1]
    a1, a2_ip = cluster.pods["a1"], PODS["a2"][1]
    assert tracked_after(n1, lambda: ping(a1, a2_ip)) > 0  # the nat chain: conntrack on
    # Pool loses natOutgoing: pods' packets leave with their own address (and x cannot
    # answer them: the underlay knows no pod routes), and the NAT chain goes: no table of
    # ours needs connection tracking now, so a new flow creates no conntrack entry.
    assert m.set_pools([POOL], []) == [
        "deleted chain postrouting (no pool has natOutgoing)",
        "nat_pool_cidrs: +0 -1 (0 now)",
    ]
    assert m.rule_count() == 3
    assert untracked_soon(n1, lambda: ping(a1, a2_ip))
    assert _capture_ping(cluster, cluster.internet, "eth0", "a1", INTERNET_IP) == {PODS["a1"][1]}
    assert m.set_pools([POOL], [POOL]) == [
        "added chain postrouting",
        "nat_pool_cidrs: +1 -0 (1 now)",
    ]
    assert _capture_ping(cluster, cluster.internet, "eth0", "a1", INTERNET_IP) == {
        NODE_IP[1],
        "answered",
    }
    # Node 2 leaves: its IPIP is now refused; it comes back: accepted again.
    assert m.set_node_ips([NODE_IP[1]]) == ["node_ips: +0 -1 (1 now)"]

    def send() -> None:
        send_raw(cluster.nodes[2], NODE_IP[1], 4, ipip_packet(marker()))

    assert counted(m, "ipip_dropped", send) == 1
    assert m.set_node_ips(NODE_IP.values()) == ["node_ips: +1 -0 (2 now)"]
    assert counted(m, "ipip_dropped", send) == 0
    # Pod a1 is deleted (its entry goes): whatever it still sends is refused; it comes back.
    assert m.set_workloads(workloads(1, without=("a1",))) == ["workload_src: +0 -1 (1 now)"]
    assert counted(m, "spoofed", lambda: ping(a1, a2_ip, timeout=0.5)) >= 1
    assert m.set_workloads(workloads(1)) == ["workload_src: +1 -0 (2 now)"]
    assert ping(a1, a2_ip)
    assert m.rule_count() == 4
    assert m.read_set(SET_NODE_IPS) == {NODE_IP[1], NODE_IP[2]}
    assert m.read_set(SET_WORKLOADS) == {f'"{i}" . {ip}' for i, ip in workloads(1)}
    # Idempotent, and a restarted agent finds nothing to do.
    fresh = NftablesManager(cluster.nodes[1])
    try:
        assert fresh.ensure_table() == []
        assert fresh.set_node_ips(NODE_IP.values()) == []
        assert fresh.set_pools([POOL], [POOL]) == []
        assert fresh.set_workloads(workloads(1)) == []
    finally:
        fresh.close()


def test_foreign_tables_untouched_and_remove_takes_only_ours() -> None:
    with lab() as the_lab:
        ns = the_lab.netns("f")
        before = load_foreign(ns)
        m = NftablesManager(ns)
        try:
            m.ensure_table()
            m.set_node_ips(["192.168.49.2"])
            m.set_pools([POOL], [POOL])
            m.set_workloads([("cali1", "10.65.1.2")])
            # Tamper with our table: a stray rule and a stray set go, contents stay.
            nft(ns, "add", "rule", "inet", "tortie", "input", "drop")
            assert m.ensure_table() == ["replaced the rules of chain input"]
            nft(ns, "add", "set", "inet", "tortie", "stray", "{ type ipv4_addr; }")
            (change,) = m.ensure_table()
            assert change.startswith("recreated table inet tortie")
            assert m.read_set(SET_NODE_IPS) == {"192.168.49.2"}
            assert foreign_state(ns) == before
            assert m.remove() == ["deleted table inet tortie"]
            assert not m.table_exists()
            assert nft(ns, "-s", "list", "ruleset") == before
        finally:
            m.close()


@pytest.mark.parametrize("kind", ["lib", "cli"])
def test_both_executors_program_the_same_table(kind: ExecutorKind) -> None:
    with lab() as the_lab:
        ns = the_lab.netns("e")
        m = NftablesManager(ns, executor=make_executor(ns, kind))
        try:
            assert m.executor.name == {"lib": "libnftables", "cli": "nft-cli"}[kind]
            assert m.ensure_table() == ["created table inet tortie"]
            m.set_workloads([("cali1", "10.65.1.2"), ("cali2", IPv4Address("10.65.1.3"))])
            m.set_pools(["10.65.0.0/16", "10.66.0.0/24"], ["10.66.0.0/24"])
            assert m.read_set("pool_cidrs") == {"10.65.0.0/16", "10.66.0.0/24"}
            assert m.set_workloads([("cali2", "10.65.1.3")]) == ["workload_src: +0 -1 (1 now)"]
            assert m.ensure_table() == [] and m.rule_count() == 4
            text = nft(ns, "list", "table", "inet", "tortie")
            assert '"cali2" . 10.65.1.3' in text and "cali1" not in text
            assert "masquerade" in text and "priority raw" in text
        finally:
            m.close()
    assert not os.path.exists(f"/run/netns/{ns}")
