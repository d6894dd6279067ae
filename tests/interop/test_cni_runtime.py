"""tortie's CNI plugin driven by a real runtime: Debian's podman 4.3 with its CNI backend.

Two containers on network ``k8s-pod-network`` (tortie, chained with Debian's portmap) get
their addresses and veths from the agent's CNI server, reach each other (ping), and are
removed; afterwards no interface, route, endpoint or address is left and ``ipam check`` is
clean. podman ignores DEL failures (``podman rm`` exits 0 anyway), so the state checks are
the evidence.

Everything podman keeps goes under a private temporary root (storage, run dir, config,
conflist, plugins); the image is a one-binary busybox-static rootfs imported locally (no
registry). Habits of this podman that the test caters for:
- ``network_backend = "cni"`` and our conflist/plugin dirs come from a private
  containers.conf (``CONTAINERS_CONF``);
- its default capabilities drop NET_RAW, which ping needs: ``--cap-add NET_RAW``;
- crun refuses this host's hybrid cgroup layout, so runc runs the containers, with the
  cgroupfs manager, and ulimits within this host's hard limits;
- all calls run from this process (one mount namespace), or podman skips DEL.

Pods' host interfaces are in this host's namespace (that is where podman's netns peers
live); their names are computed from the unique pod names and removed at teardown.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tortie.agent.cniserver import CniServer
from tortie.cni import install
from tortie.datastore.api import Datastore
from tortie.datastore.factory import open_datastore
from tortie.datastore.resources import ResourceStore
from tortie.ipam.client import IPAM
from tortie.model.naming import host_ifname
from tortie.model.resources import IPPool, WorkloadEndpoint

BINARIES = ("podman", "runc", "conmon", "iptables")
BUSYBOX = "/bin/busybox"
PORTMAP = "/usr/lib/cni/portmap"
APPLETS = ("sh", "sleep", "ping", "ip", "cat")


def _missing() -> list[str]:
    missing = [b for b in BINARIES if shutil.which(b) is None]
    missing += [p for p in (BUSYBOX, PORTMAP) if not os.path.exists(p)]
    return missing


@dataclass
class Podman:
    root: Path
    prefix: str

    def env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CONTAINERS_CONF": str(self.root / "containers.conf"),
            "HOME": str(self.root),
        }

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        argv = [
            "podman",
            "--root", str(self.root / "storage"),
            "--runroot", str(self.root / "runroot"),
            "--storage-driver", "vfs",
            "--cgroup-manager", "cgroupfs",
            "--events-backend", "file",
            "--runtime", "runc",
            *args,
        ]  # fmt: skip
        proc = subprocess.run(
            argv, capture_output=True, text=True, env=self.env(), timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout


@dataclass
class Node:
    name: str
    store: Datastore
    ipam: IPAM
    server: CniServer
    podman: Podman
    image: str

    def endpoints(self) -> list[WorkloadEndpoint]:
        return ResourceStore(self.store).list(WorkloadEndpoint)


def _write_image(root: Path) -> Path:
    """A rootfs tarball: static busybox and the applets the test uses."""
    tar_path = root / "busybox.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(BUSYBOX, arcname="bin/busybox")
        for applet in APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            tar.addfile(info)
    return tar_path


def _host_links() -> set[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True)
    return {link["ifname"] for link in json.loads(out.stdout)}


@pytest.fixture
def node() -> Iterator[Node]:
    missing = _missing()
    if missing:
        pytest.skip(
            f"podman interop needs {', '.join(missing)}: install Debian's podman, runc, "
            "containernetworking-plugins and busybox-static"
        )
    prefix = "tt" + secrets.token_hex(2)
    root = Path(tempfile.mkdtemp(prefix="ttp", dir="/tmp"))
    os.chmod(root, 0o700)
    url = f"sqlite://{root}/ds.db"
    store = open_datastore(url, create=True)
    ResourceStore(store).apply(
        [
            IPPool.from_document(
                {
                    "apiVersion": "projectcalico.org/v3",
                    "kind": "IPPool",
                    "metadata": {"name": "interop"},
                    "spec": {"cidr": "10.244.0.0/16", "ipipMode": "Never"},
                }
            )
        ]
    )
    node_name = f"{prefix}-node"
    server = CniServer(str(root / "run" / "cni.sock"), node_name, store, IPAM(store), lambda: 1480)
    server.start()
    install.install_executables(str(root / "bin"))
    doc = install.conflist(nodename=node_name, datastore=url, agent_socket=server.socket_path)
    install.write_conflist(str(root / "net.d"), doc)
    (root / "containers.conf").write_text(
        "[containers]\n"
        'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
        "[engine]\n"
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
        "[network]\n"
        'network_backend = "cni"\n'
        f'cni_plugin_dirs = ["{root}/bin", "/usr/lib/cni"]\n'
        f'network_config_dir = "{root}/net.d"\n'
    )
    podman = Podman(root, prefix)
    image = f"localhost/{prefix}-busybox:latest"
    try:
        podman.run("import", str(_write_image(root)), image)
        yield Node(node_name, store, IPAM(store), server, podman, image)
    finally:
        with contextlib.suppress(Exception):
            names = podman.run("ps", "-a", "--format", "{{.Names}}", check=False).split()
            if names:
                podman.run("rm", "-f", "-t", "0", *names, check=False)
            podman.run("rmi", "-f", image, check=False)
        server.stop()
        for name in (f"{prefix}-a", f"{prefix}-b"):  # belt and braces: our pods' veths
            cali = host_ifname("", "eth0", "default", name)
            if cali in _host_links():
                subprocess.run(["ip", "link", "del", cali], check=False)
        store.close()
        with open("/proc/mounts") as f:  # anything podman left mounted under our root
            mounts = [line.split()[1] for line in f if str(root) in line.split()[1]]
        for mount in sorted(mounts, reverse=True):
            subprocess.run(["umount", "-l", mount], check=False)
        shutil.rmtree(root, ignore_errors=True)


def test_two_podman_pods_reach_each_other_and_leave_nothing(node: Node) -> None:
    podman, prefix = node.podman, node.podman.prefix
    assert "k8s-pod-network" in podman.run("network", "ls", "--format", "{{.Name}}")
    names = [f"{prefix}-a", f"{prefix}-b"]
    for name in names:
        podman.run(
            "run", "-d", "--name", name, "--network", "k8s-pod-network",
            "--cap-add", "NET_RAW", node.image, "/bin/sleep", "600",
        )  # fmt: skip

    # tortie wired both: endpoints in the datastore, cali veths and /32 routes on the host.
    weps = {w.spec.pod: w for w in node.endpoints()}
    assert set(weps) == set(names)
    addresses = {}
    for name in names:
        wep = weps[name]
        assert wep.spec.node == node.name
        assert wep.spec.interface_name == host_ifname("", "eth0", "default", name)
        ip = wep.spec.ip_networks[0].split("/")[0]
        addresses[name] = ip
        inside = podman.run("exec", name, "ip", "-o", "-4", "addr", "show", "eth0")
        assert f"{ip}/32" in inside
        route = subprocess.run(
            ["ip", "-j", "route", "show", f"{ip}/32"], capture_output=True, text=True, check=True
        ).stdout
        assert json.loads(route)[0]["dev"] == wep.spec.interface_name
    inspect = json.loads(podman.run("inspect", names[0]))[0]
    assert (
        inspect["NetworkSettings"]["Networks"]["k8s-pod-network"]["IPAddress"]
        == addresses[names[0]]
    )

    # They reach each other, both ways.
    for src, dst in ((names[0], names[1]), (names[1], names[0])):
        out = podman.run("exec", src, "ping", "-c", "3", "-W", "2", addresses[dst])
        assert " 0% packet loss" in out, out

    # Deleted cleanly: nothing left in the kernel, the datastore or IPAM.
    podman.run("rm", "-f", "-t", "0", *names)
    caliset = {w.spec.interface_name for w in weps.values()}
    assert caliset.isdisjoint(_host_links())
    assert node.endpoints() == []
    report = node.ipam.check()
    assert report.problems == (), [p.message for p in report.problems]
    assert [r.in_use for r in node.ipam.usage() if r.grouping == "IP Pool"] == [0]
