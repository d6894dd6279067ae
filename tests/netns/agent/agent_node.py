"""A real agent process (``tortie node run``) on a throwaway node namespace, for the repair
tests.

Layout: namespace ``tt<4 hex>n`` with an uplink veth ``eth0`` (peer ``eth0p`` in the same
namespace, so ``ip link set eth0 down`` is a whole flap), 192.168.49.2/24 on it, a default
route and an operator's static route (neither is the agent's). The datastore is an SQLite
file with two pools, IPIP (``10.244.0.0/16``) and native (``10.245.0.0/16``), and a second node
192.168.49.3 holding a block of each: so the agent keeps ``<block> via .3 dev tunl0 onlink``
and ``<block> via .3 dev eth0``. BGP is off (routes from the datastore). Everything is removed
at teardown (the agent by its PID, then the namespace); traffic never leaves the namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

from tortie.agent.registration import register_node
from tortie.datastore.factory import open_datastore
from tortie.datastore.resources import ResourceStore
from tortie.ipam.client import IPAM
from tortie.model.resources import IPPool

REPO = Path(__file__).resolve().parents[3]
NODE_IP = "192.168.49.2/24"
PEER_IP = "192.168.49.3/24"
GATEWAY = "192.168.49.1"
FOREIGN = "172.16.0.0/16"  # an operator's route: never the agent's


def sh(*args: str, check: bool = True) -> str:
    proc = subprocess.run(list(args), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def pool(name: str, cidr: str, ipip: str) -> IPPool:
    return IPPool.from_document(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "IPPool",
            "metadata": {"name": name},
            "spec": {"cidr": cidr, "blockSize": 26, "ipipMode": ipip, "natOutgoing": False},
        }
    )


@dataclass
class AgentNode:
    prefix: str = field(default_factory=lambda: "tt" + secrets.token_hex(2))
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tta", dir="/tmp")))
    ns: str = ""
    proc: subprocess.Popen[bytes] | None = None
    ipip_block: str = ""
    native_block: str = ""

    def ip(self, *args: str, check: bool = True) -> str:
        return sh("ip", "-n", self.ns, *args, check=check)

    def start(self, *agent_args: str) -> AgentNode:
        os.chmod(self.tmp, 0o700)
        self.ns = self.prefix + "n"
        sh("ip", "netns", "add", self.ns)
        self.ip("link", "set", "lo", "up")
        self.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
        for dev in ("eth0", "eth0p"):
            self.ip("link", "set", dev, "up")
        self.ip("addr", "add", NODE_IP, "dev", "eth0")
        self.ip("route", "add", "default", "via", GATEWAY, "dev", "eth0")
        self.ip("route", "add", FOREIGN, "via", GATEWAY, "dev", "eth0", "proto", "static")
        url = f"sqlite://{self.tmp}/ds.db"
        store = open_datastore(url, create=True)
        try:
            res = ResourceStore(store)
            res.apply(
                [pool("ipip", "10.244.0.0/16", "Always"), pool("native", "10.245.0.0/16", "Never")]
            )
            register_node(res, "node2", IPv4Interface(PEER_IP))
            ipam = IPAM(store)
            a = ipam.assign(node="node2", handle="t.a", pools=["10.244.0.0/16"])[0]
            b = ipam.assign(node="node2", handle="t.b", pools=["10.245.0.0/16"])[0]
        finally:
            store.close()
        self.ipip_block = str(IPv4Network(f"{a}/26", strict=False))
        self.native_block = str(IPv4Network(f"{b}/26", strict=False))
        argv = [
            "nsenter", f"--net=/run/netns/{self.ns}", "--",
            sys.executable, "-m", "tortie.ctl.main", "node", "run",
            "--name", "node1", "--ip", NODE_IP, "--no-bgp",
            "--state-dir", str(self.tmp / "state"), *agent_args,
        ]  # fmt: skip
        env = {**os.environ, "TORTIE_DATASTORE": url, "PYTHONPATH": str(REPO / "src")}
        log = open(self.tmp / "agent.log", "ab")  # noqa: SIM115 (the child keeps it)
        self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log)
        log.close()
        wait_for("the agent in sync and converged", self.converged, 60)
        return self

    def status(self) -> dict[str, Any]:
        with contextlib.suppress(OSError, ValueError):
            data: dict[str, Any] = json.loads((self.tmp / "state" / "status.json").read_text())
            return data
        return {}

    def converged(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"the agent exited {self.proc.returncode}:\n{self.log()}")
        st = self.status()
        return bool(st.get("in_sync") and st.get("converged"))

    def log(self) -> str:
        return (self.tmp / "agent.log").read_text(errors="replace")[-3000:]

    def routes(self, *selector: str) -> dict[str, dict[str, Any]]:
        out = json.loads(self.ip("-j", "-4", "route", "show", *selector) or "[]")
        return {r["dst"]: r for r in out}

    def ours(self) -> dict[str, dict[str, Any]]:
        return self.routes("proto", "80")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def cleanup(self) -> None:
        self.stop()
        if self.ns:
            sh("ip", "netns", "del", self.ns, check=False)
        for ns in [n for n in os.listdir("/run/netns") if n.startswith(self.prefix)]:
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)


@contextlib.contextmanager
def agent_node(*agent_args: str) -> Iterator[AgentNode]:
    node = AgentNode()
    try:
        yield node.start(*agent_args)
    finally:
        node.cleanup()


def wait_for(what: str, ok: Callable[[], bool], timeout: float, step: float = 0.02) -> float:
    """Seconds until ``ok()``; AssertionError after ``timeout``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if ok():
            return time.monotonic() - t0
        time.sleep(step)
    raise AssertionError(f"not within {timeout:.0f} s: {what}")
