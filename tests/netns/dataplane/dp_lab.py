"""Helpers for the dataplane namespace tests: throwaway namespaces, packets, captures.

Every namespace is named ``tt<4 hex><suffix>`` (unique per run) and deleted at teardown,
whatever happened; interfaces only ever live inside those namespaces, so they go with them.
Traffic only flows between addresses inside these namespaces.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tortie.dataplane import bpffs
from tortie.dataplane.netns import ensure_sysctls, run_in_netns

REPO = Path(__file__).resolve().parents[3]


def sh(*args: str, check: bool = True) -> str:
    proc = subprocess.run(list(args), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


@dataclass
class Lab:
    prefix: str = field(default_factory=lambda: "tt" + secrets.token_hex(2))
    namespaces: list[str] = field(default_factory=list)
    mounts: list[Path] = field(default_factory=list)
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tortie-dp-")))

    def netns(self, suffix: str) -> str:
        name = self.prefix + suffix
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def ip(self, ns: str, *args: str) -> str:
        return sh("ip", "-n", ns, *args)

    def bpffs(self, name: str) -> Path:
        path = self.tmp / "bpffs" / name
        if bpffs.ensure_bpffs(path):
            self.mounts.append(path)
        return path

    def cleanup(self) -> None:
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)
        for path in reversed(self.mounts):
            with contextlib.suppress(OSError):
                bpffs.unmount(path)
        shutil.rmtree(self.tmp, ignore_errors=True)
        leftovers = [n for n in os.listdir("/run/netns") if n.startswith(self.prefix)]
        for ns in leftovers:  # belt and braces: anything a failed step half-made
            sh("ip", "netns", "del", ns, check=False)


@contextlib.contextmanager
def lab() -> Iterator[Lab]:
    the_lab = Lab()
    try:
        yield the_lab
    finally:
        the_lab.cleanup()


def build_bpf() -> Path:
    """Build bpf/build/ipip.o and ipip-compat.o with the project's Makefile (fast when up to
    date); returns ipip.o's path."""
    for tool in ("clang", "bpftool", "make"):
        if shutil.which(tool) is None:
            raise RuntimeError(
                f"{tool} missing: apt-get install clang llvm libbpf-dev bpftool make"
            )
    sh("make", "-s", "-C", str(REPO / "bpf"))
    return REPO / "bpf" / "build" / "ipip.o"


# -- packets --------------------------------------------------------------------------------


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def icmp_echo(ident: int, seq: int, payload: bytes) -> bytes:
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    return struct.pack("!BBHHH", 8, 0, _csum(header + payload), ident, seq) + payload


def ipv4_header(src: str, dst: str, proto: int, payload_len: int, ttl: int = 64) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + payload_len,
        0,
        0x4000,
        ttl,
        proto,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    return header[:10] + struct.pack("!H", _csum(header)) + header[12:]


IP_MTU_DISCOVER = 10
IP_PMTUDISC_DO = 2


def ping(ns: str, dst: str, size: int = 56, timeout: float = 2.0, df: bool = True) -> bool:
    """One ICMP echo from namespace ``ns``; True if answered. DF set: too big fails."""
    sock = run_in_netns(
        ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    )
    with sock:
        if df:
            sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        ident = secrets.randbelow(0xFFFF)
        try:
            sock.sendto(icmp_echo(ident, 1, os.urandom(size)), (dst, 0))
        except OSError:  # EMSGSIZE: bigger than the path MTU with DF
            return False
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data = sock.recv(65535)
            except TimeoutError:
                return False
            ihl = (data[0] & 0xF) * 4
            kind, _code, _sum, rid = struct.unpack_from("!BBHH", data, ihl)
            if kind == 0 and rid == ident:
                return True
            if kind == 3:  # unreachable / fragmentation needed
                return False
        return False


class Flood:
    """ICMP echoes from namespace ``ns`` to ``dst`` every ``interval`` seconds until
    :meth:`stop`, each one accounted for: when it was sent and whether it was answered.

    ping(8) says how many were lost, not which or when; and with ``-c`` it waits for the last
    replies only twice the largest round trip it saw (``-W`` counts only while nothing was
    answered), so a slow last reply on a loaded machine reads as a loss. Here every echo keeps
    its sequence number and the time span of its ``sendto`` (a packet the kernel drops on the
    sending path, e.g. at a qdisc, is dropped inside that call), and :meth:`stop` waits for
    every outstanding reply up to ``linger`` seconds. An ICMP datagram ("ping") socket, not a
    raw one: the kernel hands it only the replies to its own identifier, so other echo traffic
    in the namespace cannot overflow its receive buffer (the namespace's ``ping_group_range``
    is opened to root for it).
    """

    def __init__(self, ns: str, dst: str, interval: float = 0.002) -> None:
        self.dst = dst
        self.interval = interval
        self.sent: dict[int, tuple[float, float]] = {}  # seq -> monotonic (before, after) sendto
        self.answered: set[int] = set()
        ensure_sysctls({"net/ipv4/ping_group_range": "0\t0"}, ns)
        self._sock = run_in_netns(
            ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
        )
        self._sock.settimeout(0.05)
        self._sending = threading.Event()
        self._receiving = threading.Event()
        self._sending.set()
        self._receiving.set()
        self._threads = [
            threading.Thread(target=self._receive, daemon=True),
            threading.Thread(target=self._send, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _send(self) -> None:
        payload = bytes(56)
        next_at = time.monotonic()
        seq = 0
        while self._sending.is_set() and seq < 0xFFFF:
            seq += 1
            before = time.monotonic()
            # The kernel sets the identifier (the socket's) and the checksum.
            with contextlib.suppress(OSError):  # ENOBUFS and the like: unanswered, so lost
                self._sock.sendto(icmp_echo(0, seq, payload), (self.dst, 0))
            self.sent[seq] = (before, time.monotonic())
            next_at += self.interval
            time.sleep(max(0.0, next_at - time.monotonic()))

    def _receive(self) -> None:
        while self._receiving.is_set():
            try:
                data = self._sock.recv(65535)  # the ICMP message, no IP header
            except TimeoutError:
                continue
            kind, _code, _sum, _ident, seq = struct.unpack_from("!BBHHH", data)
            if kind == 0:
                self.answered.add(seq)

    def stop(self, linger: float = 1.0) -> list[int]:
        """Stop sending, wait for the replies still due; the unanswered sequence numbers."""
        self._sending.clear()
        self._threads[1].join()
        deadline = time.monotonic() + linger
        while set(self.sent) - self.answered and time.monotonic() < deadline:
            time.sleep(0.01)
        self._receiving.clear()
        self._threads[0].join()
        self._sock.close()
        return sorted(set(self.sent) - self.answered)


@dataclass(frozen=True)
class Frame:
    src: str
    dst: str
    proto: int
    inner_src: str | None
    inner_dst: str | None
    inner_proto: int | None
    length: int


class Capture:
    """A tcpdump stand-in: every IPv4 frame seen on ``ifname`` in ``ns`` (AF_PACKET)."""

    def __init__(self, ns: str, ifname: str) -> None:
        eth_p_all = 0x0003
        self.sock = run_in_netns(
            ns,
            lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(eth_p_all)),
        )
        self.sock.bind((ifname, 0))
        self.sock.setblocking(False)

    def frames(self) -> list[Frame]:
        out = []
        while True:
            try:
                data = self.sock.recv(65535)
            except BlockingIOError:
                break
            if len(data) < 34 or data[12:14] != b"\x08\x00":
                continue
            ip = data[14:]
            proto = ip[9]
            inner = ip[20:] if proto == 4 and len(ip) >= 40 else None
            out.append(
                Frame(
                    src=socket.inet_ntoa(ip[12:16]),
                    dst=socket.inet_ntoa(ip[16:20]),
                    proto=proto,
                    inner_src=socket.inet_ntoa(inner[12:16]) if inner else None,
                    inner_dst=socket.inet_ntoa(inner[16:20]) if inner else None,
                    inner_proto=inner[9] if inner else None,
                    length=len(ip),
                )
            )
        return out

    def close(self) -> None:
        self.sock.close()


class Monitor:
    """``ip -4 monitor OBJECTS`` in a namespace: every IPv4 change the kernel announces.

    IPv4 only: IPv6 link-local addresses and routes appear by themselves (DAD) after setup.
    """

    def __init__(self, ns: str, *objects: str) -> None:
        self.proc = subprocess.Popen(
            ["ip", "-4", "-n", ns, "monitor", *(objects or ("route",))],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        time.sleep(0.3)  # let it subscribe before anything happens

    def stop(self) -> list[str]:
        time.sleep(0.3)  # let the last notifications arrive
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=5)
        return [line for line in out.splitlines() if line.strip()]
