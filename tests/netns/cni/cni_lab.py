"""A throwaway node for the CNI namespace tests: namespaces, a datastore, the agent's server,
and the installed plugin run as a real process.

Layout: the "node" is a network namespace ``tt<4 hex>node`` (the host side of pods lives
there) with an uplink veth and a default route, which proxy ARP needs. Pods are namespaces
``tt<4 hex>p<n>``. Everything is deleted at teardown whatever happened; interfaces only ever
exist inside these namespaces, so they go with them. Traffic flows only between pod
addresses (10.244.0.0/16) inside them.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tortie.agent.cniserver import CniServer
from tortie.cni import install
from tortie.datastore.api import Datastore
from tortie.datastore.factory import open_datastore
from tortie.datastore.resources import ResourceStore
from tortie.ipam.client import IPAM
from tortie.model.naming import host_ifname
from tortie.model.resources import IPPool, WorkloadEndpoint

NETWORK = "k8s-pod-network"
POOL = "10.244.0.0/16"
MTU = 1480


def sh(*args: str, check: bool = True) -> str:
    proc = subprocess.run(list(args), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def ip_json(ns: str, *args: str) -> Any:
    return json.loads(sh("ip", "-n", ns, "-j", *args) or "[]")


def sysctl(ns: str, key: str) -> str:
    return sh("ip", "netns", "exec", ns, "cat", f"/proc/sys/{key}").strip()


@dataclass
class Outcome:
    status: int
    stdout: str
    stderr: str

    @property
    def doc(self) -> Any:
        return json.loads(self.stdout)


@dataclass
class CniLab:
    prefix: str = field(default_factory=lambda: "tt" + secrets.token_hex(2))
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ttc", dir="/tmp")))
    namespaces: list[str] = field(default_factory=list)
    servers: list[CniServer] = field(default_factory=list)
    stores: list[Datastore] = field(default_factory=list)
    node_ns: str = ""
    url: str = ""
    store: Datastore | None = None
    ipam: IPAM | None = None
    server: CniServer | None = None

    # -- setup ---------------------------------------------------------------------------------
    def netns(self, suffix: str) -> str:
        name = self.prefix + suffix
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def start(self, pool: str = POOL, block: int = 26) -> CniLab:
        os.chmod(self.tmp, 0o700)
        self.node_ns = self.netns("node")
        n = self.node_ns
        sh("ip", "-n", n, "link", "add", "up0", "type", "veth", "peer", "name", "up1")
        for dev in ("up0", "up1"):
            sh("ip", "-n", n, "link", "set", dev, "up")
        sh("ip", "-n", n, "addr", "add", "192.0.2.1/24", "dev", "up0")
        sh("ip", "-n", n, "route", "add", "default", "via", "192.0.2.254", "dev", "up0")
        self.url = f"sqlite://{self.tmp}/ds.db"
        open_datastore(self.url, create=True).close()  # opening never creates one
        self.store = self.open_store()
        ResourceStore(self.store).apply([self.pool_resource(pool, block)])
        self.ipam = IPAM(self.store)
        self.server = self.serve(self.store, "cni.sock")
        install.install_executables(str(self.tmp / "bin"))
        for name in ("portmap", "bandwidth", "tuning"):
            with contextlib.suppress(FileExistsError):
                os.symlink(f"/usr/lib/cni/{name}", self.tmp / "bin" / name)
        return self

    @staticmethod
    def pool_resource(pool: str = POOL, block: int = 26) -> IPPool:
        return IPPool.from_document(
            {
                "apiVersion": "projectcalico.org/v3",
                "kind": "IPPool",
                "metadata": {"name": "pool1"},
                "spec": {"cidr": pool, "blockSize": block, "ipipMode": "Never"},
            }
        )

    def open_store(self, url: str | None = None) -> Datastore:
        store = open_datastore(url or self.url)
        self.stores.append(store)
        return store

    def serve(self, store: Datastore, sock: str) -> CniServer:
        server = CniServer(
            str(self.tmp / sock), "node-1", store, IPAM(store), lambda: MTU, host_netns=self.node_ns
        )
        server.start()
        self.servers.append(server)
        return server

    def cleanup(self) -> None:
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.stop()
        for store in self.stores:
            with contextlib.suppress(Exception):
                store.close()
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)
        leftovers = [n for n in os.listdir("/run/netns") if n.startswith(self.prefix)]
        for ns in leftovers:
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- the plugin ----------------------------------------------------------------------------
    def config(self, version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
        return {
            "cniVersion": version,
            "name": NETWORK,
            "type": "tortie",
            "nodename": "node-1",
            "datastore": self.url,
            "agent_socket": str(self.tmp / "cni.sock"),
            "ipam": {"type": "tortie-ipam"},
            **extra,
        }

    def env(
        self, command: str, cid: str, netns: str | None, pod: str | None, ifname: str = "eth0"
    ) -> dict[str, str]:
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": cid,
            "CNI_IFNAME": ifname,
            "CNI_PATH": str(self.tmp / "bin"),
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        }
        if netns is not None:
            env["CNI_NETNS"] = f"/run/netns/{netns}" if "/" not in netns else netns
        if pod is not None:
            env["CNI_ARGS"] = f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}"
        return env

    def plugin(
        self,
        command: str,
        cid: str,
        netns: str | None,
        pod: str | None = None,
        *,
        config: dict[str, Any] | None = None,
        plugin: str = "tortie",
        in_node: bool = False,
        ifname: str = "eth0",
    ) -> Outcome:
        """Run an installed plugin as the runtime would (in the node's namespace if asked)."""
        argv = [str(self.tmp / "bin" / plugin)]
        if in_node:
            argv = ["ip", "netns", "exec", self.node_ns, *argv]
        proc = subprocess.run(
            argv,
            input=json.dumps(config or self.config()).encode(),
            env=self.env(command, cid, netns, pod, ifname),
            capture_output=True,
            check=False,
            timeout=60,
        )
        return Outcome(proc.returncode, proc.stdout.decode(), proc.stderr.decode())

    def add(self, cid: str, netns: str, pod: str | None = None, **kw: Any) -> dict[str, Any]:
        out = self.plugin("ADD", cid, netns, pod, **kw)
        assert out.status == 0, (out.stdout, out.stderr)
        doc: dict[str, Any] = out.doc
        return doc

    # -- state ---------------------------------------------------------------------------------
    def cali(self, cid: str, pod: str | None) -> str:
        return host_ifname(cid, "eth0", "default" if pod else None, pod)

    def host_links(self) -> list[str]:
        return sorted(
            link["ifname"]
            for link in ip_json(self.node_ns, "link", "show")
            if link["ifname"].startswith("cali")
        )

    def snapshot(self, ns: str) -> dict[str, Any]:
        """A namespace's interfaces (index, MAC, state), addresses and routes: equal snapshots
        before and after a call mean the call changed nothing there."""
        return {
            "links": sorted(
                (link["ifname"], link["ifindex"], link.get("address"), tuple(link["flags"]))
                for link in ip_json(ns, "link", "show")
            ),
            "addresses": sorted(self.pod_addresses(ns)),
            "routes": sorted(json.dumps(r, sort_keys=True) for r in ip_json(ns, "route", "show")),
        }

    def host_routes(self) -> dict[str, str]:
        """Pod /32 routes of the node: destination -> device."""
        return {
            r["dst"]: r.get("dev", "")
            for r in ip_json(self.node_ns, "route", "show")
            if r["dst"].startswith("10.244.")
        }

    def pod_addresses(self, ns: str) -> list[str]:
        out = []
        for link in ip_json(ns, "addr", "show"):
            for a in link.get("addr_info", []):
                if a["family"] == "inet" and link["ifname"] != "lo":
                    out.append(f"{a['local']}/{a['prefixlen']}")
        return out

    def handle_ips(self, cid: str) -> list[str]:
        assert self.ipam is not None
        return [str(a) for a in self.ipam.addresses_for_handle(f"{NETWORK}.{cid}")]

    def endpoints(self) -> list[WorkloadEndpoint]:
        assert self.store is not None
        return ResourceStore(self.store).list(WorkloadEndpoint)

    def ipam_problems(self) -> list[str]:
        assert self.ipam is not None
        return [p.message for p in self.ipam.check().problems]

    def assert_clean(self) -> None:
        """Nothing of any pod left: kernel, IPAM, endpoints."""
        assert self.host_links() == []
        assert self.host_routes() == {}
        assert self.endpoints() == []
        assert self.ipam is not None
        assert [r.in_use for r in self.ipam.usage() if r.grouping == "IP Pool"] == [0]
        assert self.ipam_problems() == []


@contextlib.contextmanager
def cni_lab(**kw: Any) -> Iterator[CniLab]:
    lab = CniLab()
    try:
        yield lab.start(**kw)
    finally:
        lab.cleanup()
