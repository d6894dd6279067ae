"""A CNI call must never break the node or another pod (issue 17, items 5 and 6).

Hostile and careless calls against the real kernel, through the installed plugin: ADD, DEL and
CHECK into the node's own network namespace (by its name, by another path to it, and as
``/proc/self/ns/net`` of an agent living in it), into something that is not a network
namespace, and into a namespace whose interface belongs to another pod. Each test checks the
node's and the other pod's state afterwards, not just the answer. The legitimate cases next to
them (a retry of the same container's half-done ADD) must keep working.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cni_lab import CniLab, cni_lab, ip_json, sh

from tortie.dataplane.wiring import WiringError
from tortie.model.cniwire import Code


@pytest.fixture
def lab() -> Iterator[CniLab]:
    with cni_lab() as the_lab:
        yield the_lab


def _refused(out: Any, code: int, *words: str) -> None:
    assert out.status == 1, (out.stdout, out.stderr)
    assert out.doc["code"] == code, out.doc
    text = f"{out.doc['msg']} {out.doc.get('details', '')}"
    for word in words:
        assert word in text, out.doc


def _nothing_allocated(lab: CniLab) -> None:
    """No address, no block claimed, no endpoint, no pod interface on the node."""
    assert lab.ipam is not None
    assert list(lab.ipam.store.blocks()) == []
    assert lab.endpoints() == [] and lab.host_links() == []


@contextlib.contextmanager
def _process_in(ns: str) -> Iterator[int]:
    """A process living in namespace ``ns``: its /proc/PID/ns/net is another path to it."""
    proc = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "300"])
    try:
        path = f"/proc/{proc.pid}/ns/net"
        deadline = time.monotonic() + 5
        while os.stat(path).st_ino != os.stat(f"/run/netns/{ns}").st_ino:
            assert time.monotonic() < deadline, "the helper process never entered its namespace"
            time.sleep(0.01)
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


# -- item 5: the node's own namespace ------------------------------------------------------------


@pytest.mark.parametrize("ifname", ["eth0", "up0"])
def test_add_into_the_nodes_namespace_by_name_is_refused(lab: CniLab, ifname: str) -> None:
    """CNI_NETNS=/run/netns/<node>: on main this replaced the node's default route with
    ``via 169.254.1.1`` (eth0) or deleted the node's uplink (up0, a veth)."""
    before = lab.snapshot(lab.node_ns)
    out = lab.plugin("ADD", "c1", f"/run/netns/{lab.node_ns}", "p1", ifname=ifname)
    _refused(out, Code.INVALID_ENVIRONMENT, "node's own network namespace", lab.node_ns)
    assert lab.snapshot(lab.node_ns) == before
    (default,) = [r for r in ip_json(lab.node_ns, "route") if r["dst"] == "default"]
    assert (default["gateway"], default["dev"]) == ("192.0.2.254", "up0")
    _nothing_allocated(lab)


def test_add_into_the_nodes_namespace_by_another_path_is_refused(lab: CniLab) -> None:
    """The identity, not the path: /proc/<pid>/ns/net of a process in the node's namespace
    (what /proc/self/ns/net is for an agent living there), CNI_IFNAME=up0 (the uplink)."""
    before = lab.snapshot(lab.node_ns)
    with _process_in(lab.node_ns) as pid:
        out = lab.plugin("ADD", "c1", f"/proc/{pid}/ns/net", "p1", ifname="up0")
    _refused(out, Code.INVALID_ENVIRONMENT, "node's own network namespace")
    assert lab.snapshot(lab.node_ns) == before
    _nothing_allocated(lab)


def test_del_and_check_in_the_nodes_namespace_are_refused(lab: CniLab) -> None:
    pod_ns = lab.netns("p1")
    result = lab.add("c1", pod_ns, "p1")
    before = lab.snapshot(lab.node_ns)
    node_path = f"/run/netns/{lab.node_ns}"
    out = lab.plugin("CHECK", "c1", node_path, "p1", config=lab.config(prevResult=result))
    _refused(out, Code.INVALID_ENVIRONMENT, "node's own network namespace")
    for cid in ("c1", "never-added"):
        out = lab.plugin("DEL", cid, node_path, "p1", ifname="up0")
        _refused(out, Code.INVALID_ENVIRONMENT, "node's own network namespace")
        assert lab.snapshot(lab.node_ns) == before  # nothing deleted, the pod's veth included
    assert len(lab.endpoints()) == 1 and lab.handle_ips("c1")
    assert lab.plugin("DEL", "c1", pod_ns, "p1").status == 0
    lab.assert_clean()


def test_agent_in_the_node_refuses_proc_self(lab: CniLab) -> None:
    """An agent that lives in the node's namespace (as lab agents and real nodes do) is asked
    for CNI_NETNS=/proc/self/ns/net CNI_IFNAME=up0: on main it deleted the node's uplink."""
    sock = lab.tmp / "own.sock"
    agent = subprocess.Popen(
        [
            *("ip", "netns", "exec", lab.node_ns, sys.executable),
            *(str(Path(__file__).with_name("serve_cni.py")), "node-1", lab.url, str(sock)),
        ],
        env={**os.environ},
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert agent.poll() is None, agent.stderr.read() if agent.stderr else ""
            assert time.monotonic() < deadline, "the agent never listened"
            time.sleep(0.05)
        before = lab.snapshot(lab.node_ns)
        cfg = lab.config(agent_socket=str(sock))
        out = lab.plugin("ADD", "c1", "/proc/self/ns/net", "p1", config=cfg, ifname="up0")
        _refused(out, Code.INVALID_ENVIRONMENT, "node's own network namespace")
        assert lab.snapshot(lab.node_ns) == before
        _nothing_allocated(lab)
    finally:
        agent.terminate()
        agent.wait(10)


@pytest.mark.parametrize("what", ["regular file", "proc file", "another kind of namespace"])
def test_a_path_that_is_not_a_network_namespace(lab: CniLab, what: str) -> None:
    path = {
        "regular file": str(lab.tmp / "not-a-netns"),
        "proc file": "/proc/self/status",
        "another kind of namespace": "/proc/self/ns/uts",
    }[what]
    if what == "regular file":
        (lab.tmp / "not-a-netns").write_text("")
    before = lab.snapshot(lab.node_ns)
    out = lab.plugin("ADD", "c1", path, "p1")
    _refused(out, Code.INVALID_ENVIRONMENT, "not a network namespace", path)
    out = lab.plugin("CHECK", "c1", path, "p1", config=lab.config(prevResult=_any_result()))
    _refused(out, Code.INVALID_ENVIRONMENT, "not a network namespace")
    assert lab.snapshot(lab.node_ns) == before
    _nothing_allocated(lab)
    # DEL treats it as a namespace that is gone (an unmounted pin is an empty file): it still
    # finishes the host side, and touches nothing behind the path.
    pod_ns = lab.netns("p1")
    lab.add("c1", pod_ns, "p1")
    assert lab.plugin("DEL", "c1", path, "p1").status == 0
    lab.assert_clean()


def _any_result() -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "/x"}],
        "ips": [{"address": "10.244.0.9/32", "interface": 0}],
    }


# -- item 6: another pod's interface --------------------------------------------------------------


class _Victim:
    """Pod c10 in namespace A, and c11 in B to ping: what must survive the hostile calls."""

    def __init__(self, lab: CniLab) -> None:
        self.lab = lab
        self.ns = lab.netns("pa")
        self.peer_ns = lab.netns("pb")
        lab.add("c10", self.ns, "p10")
        lab.add("c11", self.peer_ns, "p11")
        (self.ip,) = lab.handle_ips("c10")
        (self.peer_ip,) = lab.handle_ips("c11")
        self.cali = lab.cali("c10", "p10")
        self.state = self._state()

    def _state(self) -> dict[str, Any]:
        lab = self.lab
        (wep,) = [w for w in lab.endpoints() if w.spec.container_id == "c10"]
        host = [link for link in ip_json(lab.node_ns, "link") if link["ifname"] == self.cali]
        return {
            "pod": lab.snapshot(self.ns),
            "host": [(h["ifindex"], h["address"], h["flags"]) for h in host],
            "route": lab.host_routes().get(self.ip),
            "endpoint": (wep.metadata.name, wep.spec.interface_name, wep.spec.mac),
            "ips": lab.handle_ips("c10"),
        }

    def assert_intact(self) -> None:
        assert self._state() == self.state
        assert self.state["route"] == self.cali
        out = sh(
            "ip", "netns", "exec", self.ns, "ping", "-c", "2", "-i", "0.2", "-W", "2", self.peer_ip
        )
        assert " 0% packet loss" in out
        assert self.lab.ipam_problems() == []


@pytest.mark.parametrize("pod", ["p12", "p10", None], ids=["own-name", "victims-name", "no-name"])
def test_add_into_another_pods_namespace_is_refused(lab: CniLab, pod: str | None) -> None:
    """ADD c12 into the namespace whose eth0 is c10's: on main rc 0, and c10's eth0 and host
    veth were gone (its endpoint and address kept). The spec: an interface of the requested
    name already exists in the container, so the plugin MUST return an error."""
    victim = _Victim(lab)
    out = lab.plugin("ADD", "c12", victim.ns, pod)
    _refused(out, Code.INTERFACE_EXISTS, "eth0", "already")
    victim.assert_intact()
    assert lab.handle_ips("c12") == []
    assert sorted(w.spec.container_id or "" for w in lab.endpoints()) == ["c10", "c11"]
    assert len(lab.host_links()) == 2


@pytest.mark.parametrize("pod", ["p13", "p10", None], ids=["own-name", "victims-name", "no-name"])
def test_del_of_a_never_added_container_spares_the_pod_in_its_namespace(
    lab: CniLab, pod: str | None
) -> None:
    """DEL of c13, never added, with c10's namespace: on main it deleted c10's eth0."""
    victim = _Victim(lab)
    out = lab.plugin("DEL", "c13", victim.ns, pod)
    assert (out.status, out.stdout) == (0, ""), out.stderr
    victim.assert_intact()


def test_add_with_another_interface_name_leaves_the_pod_alone(lab: CniLab) -> None:
    """A second attachment (net1) in the same namespace is allowed by the spec, and must not
    take the first pod's eth0."""
    victim = _Victim(lab)
    before = ip_json(victim.ns, "link", "show", "dev", "eth0")
    out = lab.plugin("ADD", "c14", victim.ns, "p14", ifname="net1")
    assert out.status == 0, out.stdout
    assert ip_json(victim.ns, "link", "show", "dev", "eth0") == before
    assert lab.plugin("DEL", "c14", victim.ns, "p14", ifname="net1").status == 0
    assert ip_json(victim.ns, "link", "show", "dev", "eth0") == before
    assert lab.handle_ips("c10") == [victim.ip]


# -- the legitimate replacements still happen ------------------------------------------------


def _die_half_way(lab: CniLab, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """Make the next ADD stop where an agent killed at that point would: nothing undone."""
    server = lab.server
    assert server is not None
    monkeypatch.setattr(server.handler, "_undo_add", lambda *_: None)
    if where == "before the endpoint":

        def apply(*_: object) -> None:
            raise WiringError("write the endpoint", "agent killed (test)")

        monkeypatch.setattr(server.handler.endpoints.resources, "apply", apply)
    else:

        def route(*_: object) -> None:
            raise WiringError("route the pod", "agent killed (test)")

        monkeypatch.setattr(server.wiring, "_host_route", route)


@pytest.mark.parametrize("where", ["before the endpoint", "before the host route"])
def test_retry_of_a_half_done_add_replaces_its_own_leftovers(
    lab: CniLab, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    ns = lab.netns("ph")
    _die_half_way(lab, monkeypatch, where)
    assert lab.plugin("ADD", "c20", ns, "p20").status == 1
    assert [link["ifname"] for link in ip_json(ns, "link")] == ["lo", "eth0"]  # left behind
    assert lab.host_links() == [lab.cali("c20", "p20")] and lab.endpoints() == []
    monkeypatch.undo()
    result = lab.add("c20", ns, "p20")
    (ip,) = lab.handle_ips("c20")
    assert result["ips"][0]["address"] == f"{ip}/32"
    assert lab.pod_addresses(ns) == [f"{ip}/32"]
    assert lab.host_routes() == {ip: lab.cali("c20", "p20")}
    (wep,) = lab.endpoints()
    assert wep.spec.container_id == "c20"
    assert lab.plugin("CHECK", "c20", ns, "p20", config=lab.config(prevResult=result)).status == 0
    assert lab.plugin("DEL", "c20", ns, "p20").status == 0
    lab.assert_clean()


@pytest.mark.parametrize("where", ["before the endpoint", "before the host route"])
def test_del_after_a_half_done_add_removes_its_leftovers(
    lab: CniLab, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    ns = lab.netns("pl")
    _die_half_way(lab, monkeypatch, where)
    assert lab.plugin("ADD", "c21", ns, "p21").status == 1
    monkeypatch.undo()
    assert lab.plugin("DEL", "c21", ns, "p21").status == 0
    lab.assert_clean()
    assert [link["ifname"] for link in ip_json(ns, "link")] == ["lo"]


@pytest.mark.parametrize("peer", ["elsewhere", "in the pod", "index twin"])
def test_a_veth_peered_elsewhere_is_not_ours(lab: CniLab, peer: str) -> None:
    """The peer is proven by netns id and ifindex both ways, not by name or index alone: a veth
    whose other end has our host name but lives in a third namespace, one whose ends are both
    in the pod, and one whose peer in a third namespace has the ifindex of a live host cali."""
    ns, other = lab.netns("pv"), lab.netns("px")
    cali = lab.cali("c30", "p30")
    if peer == "elsewhere":
        sh("ip", "-n", other, "link", "add", cali, "type", "veth", "peer", "eth0", "netns", ns)
    elif peer == "in the pod":
        sh("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "x0")
    else:
        lab.add("c31", lab.netns("pw"), "p31")  # a live host cali on the node
        (host,) = ip_json(lab.node_ns, "link", "show", "dev", lab.cali("c31", "p31"))
        sh(
            *("ip", "-n", other, "link", "add", "y0", "index", str(host["ifindex"])),
            *("type", "veth", "peer", "eth0", "netns", ns),
        )
    before = lab.snapshot(ns)
    out = lab.plugin("ADD", "c30", ns, "p30")
    _refused(out, Code.INTERFACE_EXISTS, "already has an interface eth0", "veth")
    assert lab.plugin("DEL", "c30", ns, "p30").status == 0
    assert lab.snapshot(ns) == before
    assert lab.handle_ips("c30") == []
