"""Run INSIDE the vm guest: two nodes, one pod each, IPIP through a real ipip ``tunl0``.

Problem: the ``kernel`` IPIP backend (:class:`tortie.dataplane.ipip_kernel.KernelIPIP`) can only
be exercised where the ipip module exists, i.e. in the guest (see ``scripts/vm/vmguest.py``).
This script is what the guest runs, with tortie's real code from the host's checkout (read-only
over virtiofs); ``tests/vm/test_kernel_ipip.py`` boots the guest and checks what it reports.

Topology (every namespace made here, inside the guest, which has no network device)::

    pod p1 (10.65.1.2) -- caliX -- node n1 eth0 (192.168.49.2) ==veth== node n2 eth0 (.3)
                                                          pod p2 (10.65.2.2) -- caliY -- n2

Pods are wired Calico-style by hand, as the CNI plugin would; the nodes are driven through the
dataplane API the agent uses: ``make_ipip_backend`` (mode from the command line, e.g.
``auto,kernel`` for n1 and n2), ``ensure_device`` twice (the second must change nothing),
the agent's own route calculation (``compute_routes``) programmed by a ``RouteTable``, and
``configure_workload_interface``. Then pod-to-pod pings (one with DF at the 1480 MTU) while an
AF_PACKET socket records n1's uplink.

With ``bpf`` for a node (e.g. ``bpf,kernel``), that node runs the tc-BPF backend on this older
kernel: its loader must fall back to ``ipip-compat.o`` where ``ipip.o``'s kfuncs are missing,
and its packets must be what the real ipip module on the other node takes (wire interop, both
ways). New namespaces then get no fallback ``tunl0`` from the module
(``net.core.fb_tunnels_only_for_init_net=1``): the bpf node makes its veth placeholder
``tunl0``, the kernel node creates an ipip ``tunl0``, as on a host where the module is not
loaded until tortie asks for it.

Output: progress on stderr, and one line ``TORTIE-VM-RESULT <json>`` on stdout. The script
checks nothing itself (the test does), but exits non-zero if it could not run to the end.
Hazard: Python runs 20-30x slower in the guest (TCG): keep the work here small.
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import subprocess
import sys
import time
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

from tortie.agent.desired import LocalNode, PoolInfo, RemotePrefix, Workload, compute_routes
from tortie.dataplane.ipip_choice import make_ipip_backend
from tortie.dataplane.kernel_netlink import Pyroute2Netlink
from tortie.dataplane.netns import ensure_sysctls, run_in_netns
from tortie.dataplane.routetable import RouteTable
from tortie.dataplane.workload import configure_workload_interface

POOL = IPv4Network("10.65.0.0/16")
NODE_IP = {1: "192.168.49.2", 2: "192.168.49.3"}
BLOCK = {1: "10.65.1.0/26", 2: "10.65.2.0/26"}
TUNNEL_ADDR = {1: "10.65.1.1", 2: "10.65.2.1"}
POD_IP = {1: "10.65.1.2", 2: "10.65.2.2"}
MTU = 1480  # uplink 1500 - 20
RESULT_MARK = "TORTIE-VM-RESULT "


def say(msg: str) -> None:
    print(f"[{time.monotonic():8.2f}] {msg}", file=sys.stderr, flush=True)


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {proc.stderr.strip()}")
    return proc


def cali_name(pod: str) -> str:
    return "cali" + hashlib.sha1(f"default.{pod}".encode()).hexdigest()[:11]


class Records(logging.Handler):
    """Keeps tortie's log lines: the test wants to see why ``auto`` chose what it chose."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")


def wire(i: int) -> tuple[str, str, str]:
    """Node namespace n<i> (uplink eth0) and its pod p<i> wired as the CNI plugin does."""
    ns, pod_ns, cali = f"n{i}", f"p{i}", cali_name(f"pod{i}")
    sh("ip", "-n", ns, "link", "set", "eth0", "up")
    sh("ip", "-n", ns, "addr", "add", f"{NODE_IP[i]}/24", "dev", "eth0")
    # Proxy ARP answers for 169.254.1.1 only if the node routes it elsewhere: a default route.
    sh("ip", "-n", ns, "route", "add", "default", "via", "192.168.49.1")
    ensure_sysctls({"net/ipv4/ip_forward": "1"}, ns)
    sh("ip", "-n", ns, "link", "add", cali, "type", "veth", "peer", "name", "eth0", "netns", pod_ns)
    sh("ip", "-n", pod_ns, "link", "set", "lo", "up")
    sh("ip", "-n", pod_ns, "link", "set", "eth0", "mtu", str(MTU), "up")
    sh("ip", "-n", pod_ns, "addr", "add", f"{POD_IP[i]}/32", "dev", "eth0")
    sh("ip", "-n", pod_ns, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
    sh("ip", "-n", pod_ns, "route", "add", "default", "via", "169.254.1.1")
    return ns, pod_ns, cali


def node(i: int, mode: str, records: Records) -> dict[str, Any]:
    """The agent's part on node i; returns what it did and saw."""
    ns, _pod_ns, cali = wire(i)
    other = 3 - i
    nl = Pyroute2Netlink(ns)
    out: dict[str, Any] = {"mode": mode, "cali": cali}
    out["tunl0_before"] = _link(nl, "tunl0")
    first_log = len(records.lines)
    backend, why = make_ipip_backend(
        mode,  # type: ignore[arg-type]
        nl,
        node_ip=IPv4Address(NODE_IP[i]),
        uplink="eth0",
        pin_dir=Path(f"/tmp/pins/n{i}"),
        netns=ns,
    )
    out["backend"], out["why"] = backend.name, why
    out["log"] = records.lines[first_log:]
    out["ensure_1"] = backend.ensure_device(MTU, TUNNEL_ADDR[i])
    out["ensure_2"] = backend.ensure_device(MTU, TUNNEL_ADDR[i])
    out["known_nodes"] = backend.set_known_nodes({IPv4Address(NODE_IP[other])})
    out["tunl0"] = _link(nl, "tunl0")
    out["tunl0_addrs"] = [str(a) for a in nl.list_addrs("tunl0")]
    out["workload"] = configure_workload_interface(cali, netns=ns, netlink=nl)

    # The routes the agent computes: nothing in them depends on the IPIP backend.
    local = LocalNode(f"node{i}", IPv4Interface(f"{NODE_IP[i]}/24"), "eth0")
    desired = compute_routes(
        local,
        [PoolInfo(POOL, ipip_mode="Always")],
        [IPv4Network(BLOCK[i])],
        [RemotePrefix(IPv4Network(BLOCK[other]), IPv4Address(NODE_IP[other]))],
        [Workload(IPv4Network(f"{POD_IP[i]}/32"), cali)],
    )
    out["specs"] = sorted(str(s) for s in desired.specs)
    out["tunnel_device"] = local.tunnel_device
    # The bpf backend for the same node (constructed only: it would need tunl0 to be its veth
    # placeholder, and the ipip module has made tunl0 an ipip device in every namespace).
    bpf, _ = make_ipip_backend(
        "bpf",
        nl,
        node_ip=IPv4Address(NODE_IP[i]),
        uplink="eth0",
        pin_dir=Path(f"/tmp/pins/n{i}"),
        netns=ns,
    )
    out["bpf_device"] = bpf.device
    table = RouteTable(nl)
    table.set_routes(desired.specs)
    first = table.apply()
    out["apply_1"] = {"converged": first.converged, "added": first.added}
    table.queue_resync()
    again = table.apply()
    out["apply_2"] = {"converged": again.converged, "writes": again.writes}
    out["kernel_routes"] = sh("ip", "-4", "-n", ns, "route", "show", "proto", "80").stdout
    out["_netlink"] = nl
    out["_backend"] = backend
    return out


def _link(nl: Pyroute2Netlink, name: str) -> dict[str, Any] | None:
    link = nl.get_link(name)
    if link is None:
        return None
    return {"kind": link.kind, "mtu": link.mtu, "up": link.up}


def capture_open(ns: str, ifname: str) -> socket.socket:
    eth_p_all = 0x0003
    sock = run_in_netns(
        ns, lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(eth_p_all))
    )
    sock.bind((ifname, 0))
    sock.setblocking(False)
    return sock


def capture_read(sock: socket.socket) -> list[dict[str, Any]]:
    """Every IPv4 frame received so far: outer and (for IP proto 4) inner addresses."""
    frames = []
    while True:
        try:
            data = sock.recv(65535)
        except BlockingIOError:
            break
        if len(data) < 34 or data[12:14] != b"\x08\x00":
            continue
        ip = data[14:]
        frame: dict[str, Any] = {
            "src": socket.inet_ntoa(ip[12:16]),
            "dst": socket.inet_ntoa(ip[16:20]),
            "proto": ip[9],
            "len": len(ip),
        }
        if ip[9] == 4 and len(ip) >= 40:
            inner = ip[20:]
            frame["inner"] = [
                socket.inet_ntoa(inner[12:16]),
                socket.inet_ntoa(inner[16:20]),
                inner[9],
            ]
        frames.append(frame)
    return frames


def ping(pod_ns: str, dst: str, *extra: str) -> dict[str, Any]:
    proc = sh("ip", "netns", "exec", pod_ns, "ping", "-n", "-W", "5", *extra, dst, check=False)
    return {"args": list(extra), "rc": proc.returncode, "out": (proc.stdout + proc.stderr)[-600:]}


def main() -> int:
    modes = (sys.argv[1] if len(sys.argv) > 1 else "kernel,kernel").split(",")
    records = Records()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    logging.getLogger("tortie").addHandler(records)
    say(f"start: modes {modes}")
    if "bpf" in modes:
        Path("/proc/sys/net/core/fb_tunnels_only_for_init_net").write_text("1\n")
    for name in ("n1", "n2", "p1", "p2"):
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
    # The underlay: the two nodes' uplinks joined by one veth.
    veth = ["link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", "n2"]
    sh("ip", "-n", "n1", *veth)
    nodes = {i: node(i, modes[i - 1], records) for i in (1, 2)}
    say("nodes set up")

    result: dict[str, Any] = {"uname": sh("uname", "-r").stdout.strip()}
    sock = capture_open("n1", "eth0")
    counters_before = nodes[1]["_backend"].counters()
    pings = [
        ping("p1", POD_IP[2], "-c", "3", "-i", "0.3"),
        ping("p2", POD_IP[1], "-c", "1"),
        # MTU 1480 end to end: 1452 + 8 (ICMP) + 20 (IP) = 1480 passes with DF, 1453 does not.
        ping("p1", POD_IP[2], "-c", "1", "-M", "do", "-s", "1452"),
        ping("p1", POD_IP[2], "-c", "1", "-M", "do", "-s", "1453"),
    ]
    time.sleep(0.2)
    result["frames"] = capture_read(sock)
    sock.close()
    result["pings"] = pings
    result["counters_before"] = counters_before
    result["counters_after"] = nodes[1]["_backend"].counters()
    result["tunl0_stats"] = sh("ip", "-n", "n1", "-s", "link", "show", "tunl0").stdout
    for i, info in nodes.items():
        info.pop("_backend")
        info.pop("_netlink").close()
        result[f"n{i}"] = info
    say("done")
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
