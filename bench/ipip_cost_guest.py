"""Run INSIDE the qemu guest (``bench/ipip_cost.py`` boots it): pod-to-pod transfers over five
node pairs, each bracketed by instruction-count markers.

Problem: on the host, IPIP can only be measured against the hand-wired path, never against the
kernel's ipip module (the host kernel has none), and throughput there moves by 20 % from run to
run. In a guest with Debian's backports kernel both exist, and the ``insncount`` TCG plugin
counts the instructions each transfer costs, independent of the host's load.

The pairs, each in namespaces of its own (``c<k>n1``, ``c<k>n2``, pods ``c<k>p1``,
``c<k>p2``), wired exactly alike except for the encapsulation:

- ``ideal``: the pods wired Calico-style (``cali`` veth, /32, proxy ARP; the same function the
  CNI plugin uses), the remote block routed natively: ``<block> via <node> dev eth0``;
- ``kernel``: tortie's ``kernel`` backend, a real ipip ``tunl0``;
- ``bpf``: tortie's tc-BPF backend with ``bpf/build/ipip.o`` (outer destination from the route),
  attached as the agent attaches it on this kernel: tcx links (6.6+);
- ``bpf-tc``: the same attached as tc filters (cls_bpf), as on kernels 6.2-6.5;
- ``bpf-compat``: ``ipip-compat.o`` (two FIB lookups per packet) with tc filters, as on kernels
  before 6.2 (which have neither the kfuncs nor tcx).

The three IPIP pairs get the agent's own routes (``compute_routes``, ipipMode Always) and pod
MTU 1480; ``ideal`` keeps 1500, as the hand-wired reference on the host does.

Each measurement: ``xfer recv`` in pod 2, then ``xfer send`` in pod 1, which executes the marker
(``xchg %rcx,%rcx``) right before its first byte and right after the receiver acknowledged the
last (``bench/qemu/xfer.c``); the plugin logs its counters at each marker, to qemu's log, which
only the host sees. Two markers back to back come first (run here through ctypes), so the host
can check the plugin is there and see what a marker pair itself costs.

Output: one line ``TORTIE-COST-RESULT <json>`` on stdout: the measurements in marker order.
With a fifth argument ``profile``, also ``TORTIE-KALLSYMS <base64 of gzip>``: this boot's
text symbols, for ``bench/ipip_profile.py``.
Hazard: Python runs 20-30x slower here (TCG); setup takes most of the guest's time.
"""

from __future__ import annotations

import base64
import ctypes
import gzip
import json
import mmap
import subprocess
import sys
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

from tortie.agent.desired import LocalNode, PoolInfo, RemotePrefix, Workload, compute_routes
from tortie.dataplane.ipip import IPIPBackend
from tortie.dataplane.ipip_bpf import BpfIPIP
from tortie.dataplane.ipip_kernel import KernelIPIP
from tortie.dataplane.kernel_netlink import Pyroute2Netlink
from tortie.dataplane.netns import ensure_sysctls
from tortie.dataplane.routetable import RouteTable
from tortie.dataplane.workload import configure_workload_interface

PATHS = ("ideal", "kernel", "bpf", "bpf-tc", "bpf-compat")
POOL = IPv4Network("10.65.0.0/16")
NODE_IP = {1: "192.168.49.2", 2: "192.168.49.3"}
BLOCK = {1: "10.65.1.0/26", 2: "10.65.2.0/26"}
TUNNEL_ADDR = {1: "10.65.1.1", 2: "10.65.2.1"}
POD_IP = {1: "10.65.1.2", 2: "10.65.2.2"}
MTU = {"ideal": 1500, "tunnel": 1480}
BPF_BUILD = Path(__file__).resolve().parents[1] / "bpf" / "build"
XFER = Path(__file__).resolve().parent / "qemu" / "build" / "xfer"
PORT = 5999
RESULT_MARK = "TORTIE-COST-RESULT "
MARKER_CODE = b"\x48\x87\xc9\xc3"  # xchg %rcx,%rcx; ret


def say(msg: str) -> None:
    print(f"[{time.monotonic():8.2f}] {msg}", file=sys.stderr, flush=True)


def sh(*args: str) -> str:
    proc = subprocess.run(list(args), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def make_marker() -> Callable[[], None]:
    """A function that executes the plugin's marker instruction once per call."""
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(MARKER_CODE)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    call = ctypes.CFUNCTYPE(None)(address)
    call.page = page  # type: ignore[attr-defined]  # keep the mapping alive with the function
    return call  # type: ignore[no-any-return]


def backend_for(path: str, nl: Pyroute2Netlink, ns: str, i: int) -> IPIPBackend:
    if path == "kernel":
        return KernelIPIP(nl)
    build = "ipip-compat.o" if path == "bpf-compat" else "ipip.o"
    return BpfIPIP(
        nl,
        node_ip=IPv4Address(NODE_IP[i]),
        uplink="eth0",
        pin_dir=Path(f"/tmp/pins/{ns}"),
        netns=ns,
        bpf_object=BPF_BUILD / build,
        attach="auto" if path == "bpf" else "tc",
    )


def node(prefix: str, path: str, i: int) -> dict[str, Any]:
    """Node i of a pair and its pod, wired; the tunnel and routes for ``path``."""
    ns, pod_ns, cali = f"{prefix}n{i}", f"{prefix}p{i}", f"cali{prefix}pod{i}"
    other = 3 - i
    mtu = MTU["ideal" if path == "ideal" else "tunnel"]
    sh("ip", "-n", ns, "link", "set", "eth0", "up")
    sh("ip", "-n", ns, "addr", "add", f"{NODE_IP[i]}/24", "dev", "eth0")
    # Proxy ARP answers for 169.254.1.1 only if the node routes it elsewhere: a default route.
    sh("ip", "-n", ns, "route", "add", "default", "via", "192.168.49.1")
    ensure_sysctls({"net/ipv4/ip_forward": "1"}, ns)
    sh("ip", "-n", ns, "link", "add", cali, "type", "veth", "peer", "name", "eth0", "netns", pod_ns)
    sh("ip", "-n", pod_ns, "link", "set", "eth0", "mtu", str(mtu), "up")
    sh("ip", "-n", pod_ns, "addr", "add", f"{POD_IP[i]}/32", "dev", "eth0")
    sh("ip", "-n", pod_ns, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
    sh("ip", "-n", pod_ns, "route", "add", "default", "via", "169.254.1.1")
    nl = Pyroute2Netlink(ns)
    out: dict[str, Any] = {"path": path}
    try:
        configure_workload_interface(cali, netns=ns, netlink=nl)
        ipip = "Never" if path == "ideal" else "Always"
        if path != "ideal":
            backend = backend_for(path, nl, ns, i)
            out["ensure"] = backend.ensure_device(mtu, TUNNEL_ADDR[i])
            backend.set_known_nodes({IPv4Address(NODE_IP[other])})
            out["backend"] = backend.name
        desired = compute_routes(
            LocalNode(f"node{i}", IPv4Interface(f"{NODE_IP[i]}/24"), "eth0"),
            [PoolInfo(POOL, ipip_mode=ipip)],
            [IPv4Network(BLOCK[i])],
            [RemotePrefix(IPv4Network(BLOCK[other]), IPv4Address(NODE_IP[other]))],
            [Workload(IPv4Network(f"{POD_IP[i]}/32"), cali)],
        )
        table = RouteTable(nl)
        table.set_routes(desired.specs)
        out["converged"] = table.apply().converged
        out["routes"] = sh("ip", "-4", "-n", ns, "route", "show", "proto", "80")
    finally:
        nl.close()
    return out


def pair(k: int, path: str) -> dict[str, Any]:
    prefix = f"c{k}"
    for name in ("n1", "n2", "p1", "p2"):
        sh("ip", "netns", "add", prefix + name)
        sh("ip", "-n", prefix + name, "link", "set", "lo", "up")
    sh("ip", "-n", f"{prefix}n1", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
       "netns", f"{prefix}n2")  # fmt: skip
    return {"prefix": prefix, "n1": node(prefix, path, 1), "n2": node(prefix, path, 2)}


def uplink_tx_packets(prefix: str) -> int:
    """Packets node 1 has sent on its uplink (skbs: veth does not segment GSO packets).

    Per-packet costs per byte depend on the skb size, which TSO autosizing derives from the
    flow's rate; the host report shows the mean, so a run whose skbs differ stands out
    (measured: about 61 KB on every path, as on the host's labs at 25 Gbit/s)."""
    link = json.loads(sh("ip", "-n", f"{prefix}n1", "-s", "-j", "link", "show", "eth0"))[0]
    return int(link["stats64"]["tx"]["packets"])


def transfer(prefix: str, nbytes: int, xfer: str) -> dict[str, Any]:
    """One transfer of ``nbytes`` from pod 1 to pod 2; ``xfer send`` marks its start and end."""
    packets_before = uplink_tx_packets(prefix)
    receiver = subprocess.Popen(
        ["ip", "netns", "exec", f"{prefix}p2", xfer, "recv", POD_IP[2], str(PORT)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert receiver.stdout is not None
        if receiver.stdout.readline().strip() != "listening":
            raise RuntimeError(f"xfer recv in {prefix}p2 did not start")
        sent = sh(
            "ip", "netns", "exec", f"{prefix}p1", xfer, "send", POD_IP[2], str(PORT), str(nbytes)
        )
        received = int(receiver.communicate(timeout=60)[0].strip())
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    count, seconds = sent.split()
    if int(count) != nbytes or received != nbytes:
        raise RuntimeError(f"{prefix}: sent {count}, received {received}, wanted {nbytes}")
    packets = uplink_tx_packets(prefix) - packets_before
    return {"bytes": nbytes, "seconds": float(seconds), "uplink_packets": packets}


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    nbytes = int(sys.argv[2]) if len(sys.argv) > 2 else 200_000_000
    paths = sys.argv[3].split(",") if len(sys.argv) > 3 else list(PATHS)
    say(f"start: {rounds} rounds of {nbytes} bytes over {paths}")
    # The ipip module is loaded (the initramfs loads it): keep it from making a tunl0 in every
    # new namespace, so the bpf pairs can make their veth placeholder.
    Path("/proc/sys/net/core/fb_tunnels_only_for_init_net").write_text("1\n")
    pairs = {path: pair(k, path) for k, path in enumerate(paths)}
    say("pairs set up")
    marker = make_marker()
    marker()
    marker()  # the first two: the plugin is there, and what a marker pair costs
    xfer = sys.argv[4] if len(sys.argv) > 4 else str(XFER)
    runs = []
    for r in range(rounds):
        order = paths[r % len(paths) :] + paths[: r % len(paths)]  # rotate: no path always first
        for path in order:
            result = transfer(pairs[path]["prefix"], nbytes, xfer)
            runs.append({"path": path, "round": r, **result})
            say(f"round {r} {path}: {result}")
    if len(sys.argv) > 5 and sys.argv[5] == "profile":
        # This boot's text symbols (kernel, modules, BPF programs), for bench/ipip_profile.py:
        # Debian's System.map is a stub, and KASLR moves everything per boot. ~1 MB this way.
        text = [
            line
            for line in Path("/proc/kallsyms").read_text().splitlines()
            if line[17:18] in ("t", "T", "w", "W")
        ]
        packed = base64.b64encode(gzip.compress("\n".join(text).encode(), 9)).decode()
        print("TORTIE-KALLSYMS " + packed, flush=True)
    report = {
        "uname": sh("uname", "-r").strip(),
        "nbytes": nbytes,
        "pairs": pairs,
        "runs": runs,
    }
    print(RESULT_MARK + json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
