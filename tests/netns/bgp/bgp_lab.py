"""A throwaway lab for the BGP namespace and interop tests: nodes on one bridge.

Every namespace is named ``tt<4 hex><suffix>`` (unique per run) and deleted at teardown,
whatever happened; interfaces live only inside those namespaces, so they go with them. Every
daemon a test starts is registered here and stopped by its PID at teardown. Traffic only
flows between addresses inside these namespaces (10.99.0.0/24 on the lab bridge).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from tortie.bgp.types import SpeakerEvent

SUBNET = "10.99.0"


def sh(*args: str, check: bool = True, timeout: float = 20.0) -> str:
    proc = subprocess.run(list(args), capture_output=True, text=True, check=False, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def node_ip(i: int) -> IPv4Address:
    return IPv4Address(f"{SUBNET}.{i}")


def block(i: int, j: int = 0) -> IPv4Network:
    """A /26 pod block for node ``i`` (``j``: its j-th block)."""
    return IPv4Network(f"10.244.{i}.{64 * j}/26")


@dataclass
class Lab:
    prefix: str = field(default_factory=lambda: "tt" + secrets.token_hex(2))
    namespaces: list[str] = field(default_factory=list)
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tt-bgp-")))
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    bridge_ns: str | None = None
    dump: bool = True

    def ns(self, suffix: str) -> str:
        return self.prefix + suffix

    def _add_ns(self, suffix: str) -> str:
        name = self.ns(suffix)
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def bridge(self) -> str:
        if self.bridge_ns is None:
            self.bridge_ns = self._add_ns("br")
            sh("ip", "-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", self.bridge_ns, "link", "set", "br0", "up")
        return self.bridge_ns

    def node(self, i: int) -> str:
        """Namespace ``<prefix>n<i>`` with eth0 = 10.99.0.<i>/24 on the lab bridge."""
        br = self.bridge()
        name = self._add_ns(f"n{i}")
        sh(
            "ip", "link", "add", "eth0", "netns", name, "type", "veth",
            "peer", "name", f"v{i}", "netns", br,
        )  # fmt: skip
        sh("ip", "-n", br, "link", "set", f"v{i}", "master", "br0", "up")
        sh("ip", "-n", name, "addr", "add", f"{node_ip(i)}/24", "dev", "eth0")
        sh("ip", "-n", name, "link", "set", "eth0", "up")
        return name

    def link(self, i: int, up: bool) -> None:
        """Cut (or restore) node ``i``'s cable: the bridge side goes down, so nothing it
        sends arrives and its peers see only silence (as when a node dies)."""
        sh("ip", "-n", self.bridge(), "link", "set", f"v{i}", "up" if up else "down")

    def state_dir(self, name: str) -> Path:
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def popen(self, argv: list[str], ns: str, log: Path, **kw: Any) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{ns}", *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **kw,
            )
        self.procs.append(proc)
        return proc

    def dump_logs(self, tail: int = 6000) -> None:
        """Print every daemon log (pytest shows teardown output only for failed tests)."""
        for path in sorted(self.tmp.rglob("*.log")):
            text = path.read_text(errors="replace")
            print(f"===== {path.relative_to(self.tmp)} (last {tail} chars)\n{text[-tail:]}")

    def cleanup(self) -> None:
        for fn in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                fn()
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        if self.dump:
            self.dump_logs()
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)
        leftovers = [n for n in os.listdir("/run/netns") if n.startswith(self.prefix)]
        for ns in leftovers:  # anything a failed step half-made
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)


@contextlib.contextmanager
def lab(dump_logs: bool = True) -> Iterator[Lab]:
    the_lab = Lab(dump=dump_logs)
    try:
        yield the_lab
    finally:
        the_lab.cleanup()


class Events:
    """Collects speaker events (thread-safe enough: list.append is atomic)."""

    def __init__(self) -> None:
        self.items: list[tuple[float, SpeakerEvent]] = []

    def __call__(self, event: SpeakerEvent) -> None:
        self.items.append((time.monotonic(), event))

    def of(self, kind: type) -> list[Any]:
        return [e for _, e in self.items if isinstance(e, kind)]


def wait_for(pred: Callable[[], Any], timeout: float, what: str, step: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)
