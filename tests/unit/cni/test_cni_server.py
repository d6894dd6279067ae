"""The agent's CNI server without root: verbs over fake namespaces (the real wiring on
FakeNetlink) and an in-memory datastore, and the socket's lifecycle and permissions. The same
verbs against the real kernel are in tests/netns/cni."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cni_server_fakes import FlakyStore

from tortie.agent.cni_pods import NETWORK_ANNOTATION
from tortie.agent.cni_transport import CniServerError
from tortie.agent.cniserver import CniServer
from tortie.cni.client import call_agent
from tortie.dataplane.fake_netlink import FakeNetlink
from tortie.dataplane.fake_netns import FakeNamespaces
from tortie.dataplane.netlink import Link
from tortie.dataplane.routes import KernelRoute
from tortie.datastore.memory import MemoryDatastore
from tortie.datastore.resources import ResourceStore
from tortie.ipam.client import IPAM
from tortie.model.cnierrors import CniError
from tortie.model.cniwire import Attachment, CniRequest, CniResponse, Code
from tortie.model.naming import host_ifname
from tortie.model.resources import IPPool, WorkloadEndpoint

NET = "k8s-pod-network"


class Node:
    """A CniServer for node-1 over fake namespaces, plus the handles tests inspect."""

    def __init__(self, tmp: Path, pool: str = "10.244.0.0/24", block: int = 26) -> None:
        self.store = FlakyStore(MemoryDatastore("memory://"))
        self.resources = ResourceStore(self.store)
        self.resources.apply([_pool("pool1", pool, block)])
        self.ipam = IPAM(self.store)
        (tmp / "ns").mkdir()
        self.namespaces = FakeNamespaces(tmp / "ns")
        self.host = self.namespaces.host  # the node's namespace (the server's own)
        self.server = CniServer(
            str(tmp / "cni.sock"),
            "node-1",
            self.store,
            self.ipam,
            lambda: 1480,
            namespaces=self.namespaces,
        )
        self.tmp = tmp
        self._netns: dict[str, str] = {}

    def netns(self, name: str) -> str:
        """The pod namespace ``name`` (made on first use)."""
        if name not in self._netns:
            self._netns[name] = self.namespaces.add(name)
        return self._netns[name]

    def pod(self, name: str) -> FakeNetlink:
        return self.namespaces.at(self.netns(name))

    def calis(self) -> dict[str, Link]:
        """The host's pod interfaces."""
        return {n: link for n, link in self.host.links.items() if n.startswith("cali")}

    def routed_via(self, ip: Any) -> str | None:
        route = self.host.route_get(ip)
        link = (
            None if route is None or route.oif is None else self.host.get_link_by_index(route.oif)
        )
        return None if link is None else link.name

    def kernel(self) -> dict[str, dict[str, Link]]:
        """Every namespace's interfaces (compare before and after a hostile call)."""
        out = {"host": dict(self.host.links)}
        for name, path in self._netns.items():
            with contextlib.suppress(KeyError, FileNotFoundError):
                out[name] = dict(self.namespaces.at(path).links)
        return out

    def kernel_changes(self) -> list[tuple[str, ...]]:
        ops = list(self.host.link_ops)
        for path in self._netns.values():
            with contextlib.suppress(KeyError, FileNotFoundError):
                ops += self.namespaces.at(path).link_ops
        return ops

    def req(
        self, command: str, cid: str = "c1", pod: str | None = "web-0", **kw: Any
    ) -> CniRequest:
        kw.setdefault("netns", self.netns(cid) if command in ("ADD", "CHECK") else "")
        return CniRequest(
            command,
            NET,
            container_id=cid,
            ifname="eth0",
            node="node-1",
            pod_namespace="web" if pod else None,
            pod=pod,
            **kw,
        )

    def add(self, cid: str = "c1", pod: str | None = "web-0", **kw: Any) -> CniResponse:
        return self.server.handle(self.req("ADD", cid, pod, **kw))

    def ips(self, cid: str) -> list[Any]:
        return self.ipam.addresses_for_handle(f"{NET}.{cid}")

    def weps(self) -> list[WorkloadEndpoint]:
        return self.resources.list(WorkloadEndpoint)


def _pool(name: str, cidr: str, block: int) -> IPPool:
    return IPPool.from_document(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "IPPool",
            "metadata": {"name": name},
            "spec": {"cidr": cidr, "blockSize": block},
        }
    )


@pytest.fixture
def node(short_dir: Path) -> Node:
    return Node(short_dir)


def _ok(resp: CniResponse) -> CniResponse:
    assert resp.error is None, resp.error
    return resp


def _code(resp: CniResponse) -> int:
    assert resp.error is not None
    return resp.error.code


# -- ADD -----------------------------------------------------------------------------------------


def test_add_allocates_wires_and_records(node: Node) -> None:
    result = _ok(node.add()).result
    assert result is not None
    (ip,) = node.ips("c1")
    cali = host_ifname("c1", "eth0", "web", "web-0")
    assert result["interfaces"][0] == {"name": cali, "mac": "ee:ee:ee:ee:ee:ee", "mtu": 1480}
    assert result["interfaces"][1]["sandbox"] == node.netns("c1")
    assert result["ips"] == [{"address": f"{ip}/32", "gateway": "169.254.1.1", "interface": 1}]
    # The kernel: Calico's veth, proxy ARP, a /32 each way.
    host = node.calis()[cali]
    assert (host.kind, host.mtu, host.mac, host.up) == ("veth", 1480, "ee:ee:ee:ee:ee:ee", True)
    assert node.host.sysctls[f"net/ipv4/conf/{cali}/proxy_arp"] == "1"
    assert node.host.sysctls[f"net/ipv4/neigh/{cali}/proxy_delay"] == "0"
    assert node.routed_via(ip) == cali
    pod = node.pod("c1")
    eth0 = pod.links["eth0"]
    assert eth0.up and eth0.mtu == 1480 and eth0.peer_index == host.index
    assert [str(a) for a in pod.addrs["eth0"]] == [f"{ip}/32"]
    routes = {(str(r.dst), str(r.gateway)) for r in pod.table()}
    assert routes == {("169.254.1.1/32", "None"), ("0.0.0.0/0", "169.254.1.1")}
    (wep,) = node.weps()
    assert wep.metadata.name == "node--1-k8s-web--0-eth0"
    assert wep.metadata.namespace == "web"
    assert wep.metadata.annotations[NETWORK_ANNOTATION] == NET
    assert wep.spec.container_id == "c1" and wep.spec.pod == "web-0"
    assert wep.spec.interface_name == cali and wep.spec.mac == eth0.mac
    assert result["interfaces"][1]["mac"] == eth0.mac
    assert wep.spec.ip_networks == [f"{ip}/32"]
    assert node.ipam.check().problems == ()


def test_add_without_pod_name_uses_the_container(node: Node) -> None:
    _ok(node.add("abc123", pod=None))
    (wep,) = node.weps()
    assert wep.spec.orchestrator == "cni" and wep.metadata.namespace == "default"
    assert wep.spec.interface_name == host_ifname("abc123", "eth0", None, None)


def test_add_twice_reuses_the_address(node: Node) -> None:
    first = _ok(node.add()).result
    second = _ok(node.add()).result
    assert first is not None and second is not None
    assert first["ips"] == second["ips"] and len(node.ips("c1")) == 1
    assert len(node.calis()) == 1 and list(node.pod("c1").links) == ["lo", "eth0"]


def test_add_config_mtu_wins_over_the_agent(node: Node) -> None:
    _ok(node.add(mtu=1300))
    assert next(iter(node.calis().values())).mtu == 1300
    assert node.pod("c1").links["eth0"].mtu == 1300


def test_add_specific_address(node: Node) -> None:
    _ok(node.add(ips=("10.244.0.77/32",)))
    assert [str(a) for a in node.ips("c1")] == ["10.244.0.77"]
    assert _code(node.add("c2", pod="web-1", ips=("10.244.0.77",))) == Code.NO_ADDRESS
    assert _code(node.add("c3", pod="web-2", ips=("fd00::1",))) == Code.UNSUPPORTED_FIELD
    assert _code(node.add("c4", pod="web-3", ips=("a",))) == Code.INVALID_NETWORK_CONFIG
    assert node.ips("c2") == [] and len(node.weps()) == 1


def _nothing_left(node: Node, cid: str = "c1") -> None:
    assert node.calis() == {} and list(node.pod(cid).links) == ["lo"]
    assert node.ips(cid) == [] and node.weps() == []
    assert [r for r in node.host.table() if r.proto == 3] == []  # no host /32


@pytest.mark.parametrize(
    ("where", "call"),
    [
        ("host", "create_veth"),
        ("host", "ensure_sysctls"),
        ("host", "set_link"),
        ("pod", "set_link"),
        ("pod", "add_addr"),
    ],
)
def test_add_failing_in_the_kernel_undoes_everything(node: Node, where: str, call: str) -> None:
    """Each step of the wiring failing: the answer names it, and nothing is left behind."""
    kernel = node.host if where == "host" else node.pod("c1")
    kernel.fail_calls[call] = errno.EEXIST
    resp = node.add()
    assert _code(resp) == Code.KERNEL_FAILURE
    assert resp.error is not None and "the kernel refused" in resp.error.msg
    assert "File exists" in resp.error.msg
    kernel.fail_calls.clear()
    _nothing_left(node)


@pytest.mark.parametrize("route", ["the pod's default", "the host's /32"])
def test_add_failing_at_a_route_undoes_everything(node: Node, route: str) -> None:
    if route == "the pod's default":
        node.pod("c1").fail[ipaddress.IPv4Network("0.0.0.0/0")] = errno.ENETUNREACH
    else:
        ip = node.ipam.assign(node="node-1", handle=f"{NET}.c1")[0]  # the address ADD reuses
        node.host.fail[ipaddress.IPv4Network(f"{ip}/32")] = errno.ENOBUFS
    resp = node.add()
    assert _code(resp) == Code.KERNEL_FAILURE
    _nothing_left(node)


def test_add_failing_at_the_endpoint_undoes_everything(node: Node) -> None:
    node.store.down = lambda key: "workloadendpoints" in key
    assert _code(node.add()) == Code.TRY_AGAIN_LATER
    node.store.down = False
    _nothing_left(node)


def test_add_with_datastore_down_leaves_nothing(node: Node) -> None:
    node.store.down = True
    resp = node.add()
    assert _code(resp) == Code.TRY_AGAIN_LATER
    assert resp.error is not None and "unavailable" in resp.error.msg
    node.store.down = False
    _nothing_left(node)


def test_add_to_missing_netns_is_unknown_container(node: Node) -> None:
    assert _code(node.add(netns=str(node.tmp / "gone"))) == Code.UNKNOWN_CONTAINER
    assert node.ips("c1") == [] and node.kernel_changes() == []


def test_add_whose_namespace_vanishes_is_undone(node: Node) -> None:
    """The namespace goes between opening it and wiring it: unknown container, nothing left."""
    netns = node.netns("c1")
    real = node.namespaces.netlink

    def vanishing(ns: Any) -> FakeNetlink:
        if ns is not None and ns != netns and "fd" in str(ns):
            raise OSError(errno.EINVAL, "setns: Invalid argument")
        return real(ns)

    node.namespaces.netlink = vanishing  # type: ignore[method-assign]
    assert _code(node.add()) == Code.UNKNOWN_CONTAINER
    node.namespaces.netlink = real  # type: ignore[method-assign]
    _nothing_left(node)


def test_add_with_pools_exhausted(short_dir: Path) -> None:
    small = Node(short_dir, pool="10.244.0.0/30", block=30)
    for i in range(4):
        _ok(small.add(f"c{i}", pod=f"p{i}"))
    resp = small.add("c9", pod="p9")
    assert _code(resp) == Code.NO_ADDRESS
    assert len(small.calis()) == 4 and small.ips("c9") == []


def test_add_refuses_another_node_or_datastore(node: Node) -> None:
    other_node = CniRequest(
        "ADD", NET, container_id="c1", ifname="eth0", node="node-2", netns=node.netns("c1")
    )
    resp = node.server.handle(other_node)
    assert _code(resp) == Code.INVALID_NETWORK_CONFIG
    assert resp.error is not None and "node-2" in resp.error.msg
    other_store = CniRequest(
        "ADD",
        NET,
        container_id="c1",
        ifname="eth0",
        datastore="sqlite:///elsewhere.db",
        netns=node.netns("c1"),
    )
    assert _code(node.server.handle(other_store)) == Code.INVALID_NETWORK_CONFIG
    assert node.ips("c1") == []


def test_bad_pod_name_is_invalid_environment(node: Node) -> None:
    assert _code(node.add(pod="-web")) == Code.INVALID_ENVIRONMENT


def test_unknown_command_is_invalid_environment(node: Node) -> None:
    assert _code(node.server.handle(CniRequest("FROB", NET))) == Code.INVALID_ENVIRONMENT


def test_a_bug_is_an_internal_error_not_a_crash(node: Node) -> None:
    def broken(*_: object) -> None:
        raise TypeError("a bug (test)")

    node.server.handler._add = broken  # type: ignore[method-assign]
    resp = node.add()
    assert _code(resp) == Code.INTERNAL
    assert resp.error is not None and "internal error in the tortie agent" in resp.error.msg


# -- DEL -----------------------------------------------------------------------------------------


def test_del_removes_everything_and_is_idempotent(node: Node) -> None:
    _ok(node.add())
    _ok(node.server.handle(node.req("DEL", netns=node.netns("c1"))))
    _nothing_left(node)
    _ok(node.server.handle(node.req("DEL")))  # containerd's second DEL: no netns
    _ok(node.server.handle(node.req("DEL", "never-added")))


def test_del_without_netns_still_removes_the_host_side(node: Node) -> None:
    _ok(node.add())
    _ok(node.server.handle(node.req("DEL")))
    _nothing_left(node)  # the pod's eth0 went with its host end


def test_del_of_an_old_sandbox_spares_the_live_one(node: Node) -> None:
    _ok(node.add("old"))
    _ok(node.add("new"))  # the pod was re-created: same name, same cali interface
    (live_ip,) = node.ips("new")
    assert node.ips("old") != []  # the runtime has not deleted the old sandbox yet
    _ok(node.server.handle(node.req("DEL", "old", netns=node.netns("old"))))
    assert node.ips("old") == [] and node.ips("new") == [live_ip]
    (wep,) = node.weps()
    assert wep.spec.container_id == "new"
    cali = host_ifname("new", "eth0", "web", "web-0")
    assert node.routed_via(live_ip) == cali and "eth0" in node.pod("new").links


def test_del_after_an_add_that_died_before_its_endpoint(node: Node) -> None:
    """The handle's address is routed through the interface: it is ours to delete."""
    ip = node.ipam.assign(node="node-1", handle=f"{NET}.c1")[0]
    cali = host_ifname("c1", "eth0", "web", "web-0")
    node.host.create_veth(cali, "eth0", peer_netns=node.netns("c1"))
    oif = node.host.links[cali].index
    node.host.replace_route(KernelRoute(ipaddress.IPv4Network(f"{ip}/32"), proto=3, oif=oif))
    _ok(node.server.handle(node.req("DEL")))
    _nothing_left(node)


def test_del_spares_a_host_interface_routing_nothing_of_ours(node: Node) -> None:
    """No endpoint names the container and the host does not route its address through the
    interface of that name: not ours (another sandbox's, or someone else's)."""
    node.ipam.assign(node="node-1", handle=f"{NET}.c1")
    cali = host_ifname("c1", "eth0", "web", "web-0")
    node.host.add_link(cali)
    _ok(node.server.handle(node.req("DEL")))
    assert cali in node.host.links and node.ips("c1") == []


def test_del_with_datastore_down_is_try_again_later(node: Node) -> None:
    _ok(node.add())
    node.store.down = True
    assert _code(node.server.handle(node.req("DEL"))) == Code.TRY_AGAIN_LATER
    node.store.down = False
    _ok(node.server.handle(node.req("DEL")))
    assert node.ips("c1") == [] and node.weps() == []


# -- whose namespace, whose interface (issue 17, items 5 and 6) ----------------------------------


def _msg(resp: CniResponse) -> str:
    assert resp.error is not None
    return f"{resp.error.msg} {resp.error.details}"


def _refused_path(node: Node, kind: str) -> str:
    if kind == "the node's own":
        return node.namespaces.host_path
    path = node.tmp / "plain-file"
    path.touch()
    return str(path)


@pytest.mark.parametrize("kind", ["the node's own", "not a namespace"])
def test_add_into_a_refused_namespace_changes_nothing(node: Node, kind: str) -> None:
    path = _refused_path(node, kind)
    resp = node.add(netns=path)
    assert _code(resp) == Code.INVALID_ENVIRONMENT and "CNI_NETNS" in _msg(resp)
    assert node.kernel_changes() == [] and node.ips("c1") == [] and node.weps() == []
    assert list(node.ipam.store.blocks()) == []  # not even a block claimed and given back
    check = node.server.handle(node.req("CHECK", netns=path, prev_result={}))
    assert _code(check) in (Code.INVALID_ENVIRONMENT, Code.CHECK_FAILED)


def test_check_in_the_nodes_namespace_is_refused(node: Node) -> None:
    result = _ok(node.add()).result
    resp = node.server.handle(
        node.req("CHECK", netns=node.namespaces.host_path, prev_result=result)
    )
    assert _code(resp) == Code.INVALID_ENVIRONMENT


def test_del_in_the_nodes_namespace_is_refused_before_any_change(node: Node) -> None:
    _ok(node.add())
    before, changes = node.kernel(), len(node.kernel_changes())
    for cid in ("c1", "never-added"):
        resp = node.server.handle(node.req("DEL", cid, netns=node.namespaces.host_path))
        assert _code(resp) == Code.INVALID_ENVIRONMENT
    assert node.kernel() == before and len(node.kernel_changes()) == changes
    assert node.ips("c1") and len(node.weps()) == 1


def test_del_whose_namespace_is_no_longer_one_does_the_host_side(node: Node) -> None:
    """An unmounted namespace pin is an empty file: DEL must still finish."""
    _ok(node.add())
    pod = node.pod("c1")
    node.namespaces.unmount(node.netns("c1"))
    _ok(node.server.handle(node.req("DEL", netns=node.netns("c1"))))
    assert node.calis() == {} and node.ips("c1") == [] and node.weps() == []
    assert list(pod.links) == ["lo"]  # the pod end went with the host end


def _victim(node: Node) -> tuple[str, dict[str, Any]]:
    """c10 (pod p10) in its namespace: its state, to compare after a hostile call."""
    _ok(node.add("c10", pod="p10"))
    state = {
        "kernel": node.kernel(),
        "ips": node.ips("c10"),
        "weps": [w.model_dump() for w in node.weps()],
    }
    return node.netns("c10"), state


def _intact(node: Node, state: dict[str, Any]) -> None:
    kernel = node.kernel()
    assert {k: kernel[k] for k in state["kernel"]} == state["kernel"]
    assert node.ips("c10") == state["ips"]
    assert [w.model_dump() for w in node.weps()] == state["weps"]


@pytest.mark.parametrize("pod", ["p12", "p10", None])
def test_add_into_another_pods_namespace_is_refused(node: Node, pod: str | None) -> None:
    """Whatever pod name the caller claims, c10's eth0 is not c12's to replace."""
    netns, state = _victim(node)
    resp = node.add("c12", pod=pod, netns=netns)
    assert _code(resp) == Code.INTERFACE_EXISTS
    assert "already has an interface eth0" in _msg(resp)
    _intact(node, state)
    assert node.ips("c12") == []


@pytest.mark.parametrize("pod", ["p13", "p10", None])
def test_del_of_a_never_added_container_spares_the_pod_in_its_namespace(
    node: Node, pod: str | None
) -> None:
    netns, state = _victim(node)
    _ok(node.server.handle(node.req("DEL", "c13", pod=pod, netns=netns)))
    _intact(node, state)


def test_peers_are_proven_by_netns_id_not_by_ifindex(node: Node) -> None:
    """A pod veth whose peer index happens to match a host cali of ours, but whose peer lives
    in another namespace, is not ours: the netns id tells (docs/cni-namespaces.md)."""
    _, state = _victim(node)
    cali = host_ifname("c10", "eth0", "web", "p10")
    other = node.pod("elsewhere")
    other.create_veth("x0", "eth0", peer_netns=node.netns("c12"))  # c12's eth0 peers elsewhere
    assert node.pod("c12").links["eth0"].peer_netnsid is not None
    resp = node.add("c12", pod="p10", netns=node.netns("c12"))
    assert _code(resp) == Code.INTERFACE_EXISTS and "not on this node" in _msg(resp)
    _intact(node, state)
    assert cali in node.calis()


def test_a_foreign_interface_is_never_replaced_or_deleted(node: Node) -> None:
    netns = node.netns("c1")
    bridge = node.pod("c1").add_link("eth0", kind="bridge")
    resp = node.add(netns=netns)
    assert _code(resp) == Code.INTERFACE_EXISTS and "a bridge" in _msg(resp)
    _ok(node.server.handle(node.req("DEL", netns=netns)))
    assert node.pod("c1").links["eth0"] == bridge and node.ips("c1") == []


def test_an_unfinished_attempt_of_the_pod_is_replaced(node: Node) -> None:
    """A veth peered with our host interface and claimed by no endpoint: an ADD that died
    half-way (the agent killed). The retry replaces it; the endpoint of an older sandbox,
    whose interface this is not (other MAC and address), does not stop it."""
    _ok(node.add("old", pod="web-0", netns=node.netns("old")))
    stale = node.weps()[0]
    cali = host_ifname("new", "eth0", "web", "web-0")
    node.host.delete_link(cali)  # replaced old's veth ...
    node.host.create_veth(cali, "eth0", peer_netns=node.netns("new"))
    node.pod("new").add_addr("eth0", ipaddress.IPv4Interface("10.244.0.200/32"))  # ... then died
    half = node.pod("new").links["eth0"].index
    assert stale.spec.container_id == "old"
    _ok(node.add("new", pod="web-0", netns=node.netns("new")))
    (wep,) = node.weps()
    assert wep.spec.container_id == "new"
    eth0 = node.pod("new").links["eth0"]
    assert eth0.index != half and eth0.peer_index == node.calis()[cali].index
    assert node.routed_via(node.ips("new")[0]) == cali


def test_a_host_interface_named_by_another_pods_endpoint_is_not_replaced(node: Node) -> None:
    """Calico replaces a host interface of the pod's name (an older sandbox's); never one that
    another pod's endpoint names (a hash collision, or an endpoint applied by hand)."""
    cali = host_ifname("c1", "eth0", "web", "web-0")
    taken = node.host.add_link(cali)
    other = WorkloadEndpoint.from_document(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "WorkloadEndpoint",
            "metadata": {"name": "node--1-k8s-other-eth0", "namespace": "web"},
            "spec": {
                "node": "node-1",
                "orchestrator": "k8s",
                "pod": "other",
                "endpoint": "eth0",
                "containerID": "c9",
                "interfaceName": cali,
                "ipNetworks": ["10.244.0.9/32"],
            },
        }
    )
    node.resources.apply([other])
    resp = node.add()
    assert _code(resp) == Code.INTERFACE_EXISTS and "node--1-k8s-other-eth0" in _msg(resp)
    assert node.calis() == {cali: taken} and node.ips("c1") == []
    node.resources.delete(WorkloadEndpoint, "node--1-k8s-other-eth0", "web")
    _ok(node.add())  # nobody's: this pod's name, so Calico's replacement applies
    assert node.calis()[cali].index != taken.index
    assert node.calis()[cali].peer_index == node.pod("c1").links["eth0"].index


# -- CHECK ---------------------------------------------------------------------------------------


def test_check(node: Node) -> None:
    result = _ok(node.add()).result
    _ok(node.server.handle(node.req("CHECK", prev_result=result)))
    cali = host_ifname("c1", "eth0", "web", "web-0")
    node.host.sysctls[f"net/ipv4/conf/{cali}/proxy_arp"] = "0"
    resp = node.server.handle(node.req("CHECK", prev_result=result))
    assert _code(resp) == Code.CHECK_FAILED
    assert resp.error is not None and "proxy_arp of" in resp.error.details
    node.host.sysctls[f"net/ipv4/conf/{cali}/proxy_arp"] = "1"
    node.resources.delete(WorkloadEndpoint, node.weps()[0].metadata.name, "web")
    resp = node.server.handle(node.req("CHECK", prev_result=result))
    assert _code(resp) == Code.CHECK_FAILED
    assert resp.error is not None and "no workload endpoint" in resp.error.details


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        ("host down", "is down"),
        ("pod down", "eth0 in the pod is down"),
        ("pod address", "does not have"),
        ("pod default route", "no route default via 169.254.1.1"),
        ("host route", "the host routes"),
        ("veth gone", "does not exist"),
    ],
)
def test_check_finds_what_is_not_as_add_left_it(node: Node, damage: str, problem: str) -> None:
    result = _ok(node.add()).result
    assert result is not None
    (ip,) = node.ips("c1")
    cali = host_ifname("c1", "eth0", "web", "web-0")
    pod = node.pod("c1")
    if damage == "host down":
        node.host.set_link(cali, up=False)
    elif damage == "pod down":
        pod.set_link("eth0", up=False)
    elif damage == "pod address":
        pod.del_addr("eth0", ipaddress.IPv4Interface(f"{ip}/32"))
    elif damage == "pod default route":
        pod.delete_route(KernelRoute(ipaddress.IPv4Network("0.0.0.0/0"), proto=0))
    elif damage == "host route":
        node.host.delete_route(KernelRoute(ipaddress.IPv4Network(f"{ip}/32"), proto=0))
    else:
        node.host.delete_link(cali)
    resp = node.server.handle(node.req("CHECK", prev_result=result))
    assert _code(resp) == Code.CHECK_FAILED
    assert resp.error is not None and problem in resp.error.details, resp.error.details


def test_check_needs_our_address_in_prev_result(node: Node) -> None:
    _ok(node.add())
    resp = node.server.handle(node.req("CHECK", prev_result={"interfaces": [], "ips": []}))
    assert _code(resp) == Code.CHECK_FAILED
    assert _code(node.server.handle(node.req("CHECK"))) == Code.INVALID_NETWORK_CONFIG


# -- GC ------------------------------------------------------------------------------------------


def test_gc_removes_what_the_runtime_no_longer_has(node: Node) -> None:
    for i in range(3):
        _ok(node.add(f"c{i}", pod=f"p{i}"))
    # Another node's and another network's allocations are never touched.
    node.ipam.assign(node="node-2", handle=f"{NET}.elsewhere")
    node.ipam.assign(node="node-1", handle="other-net.c7")
    keep = (Attachment("c0", "eth0"),)
    _ok(node.server.handle(CniRequest("GC", NET, node="node-1", valid_attachments=keep)))
    assert node.ips("c0") and not node.ips("c1") and not node.ips("c2")
    assert [w.spec.container_id for w in node.weps()] == ["c0"]
    assert list(node.calis()) == [host_ifname("c0", "eth0", "web", "p0")]
    assert "eth0" in node.pod("c0").links and "eth0" not in node.pod("c1").links
    assert node.ipam.addresses_for_handle(f"{NET}.elsewhere")
    assert node.ipam.addresses_for_handle("other-net.c7")


def test_gc_releases_handles_without_endpoints(node: Node) -> None:
    node.ipam.assign(node="node-1", handle=f"{NET}.orphan", attrs={"namespace": "a", "pod": "b"})
    _ok(node.server.handle(CniRequest("GC", NET, node="node-1")))
    assert node.ips("orphan") == []


def test_gc_spares_an_add_in_flight(node: Node) -> None:
    _ok(node.add("c1"))
    with node.server.handler.adds.adding("c1"):
        _ok(node.server.handle(CniRequest("GC", NET, node="node-1")))
    assert node.ips("c1") and node.weps() and node.calis()


def test_gc_reports_what_it_could_not_remove_and_goes_on(node: Node) -> None:
    for i in range(2):
        _ok(node.add(f"c{i}", pod=f"p{i}"))
    node.host.fail_calls["delete_link_index"] = errno.EBUSY
    resp = node.server.handle(CniRequest("GC", NET, node="node-1"))
    assert _code(resp) == Code.TRY_AGAIN_LATER
    assert resp.error is not None and "2 attachment(s)" in resp.error.msg
    assert "Device or resource busy" in resp.error.details
    node.host.fail_calls.clear()
    _ok(node.server.handle(CniRequest("GC", NET, node="node-1")))
    assert node.calis() == {} and node.weps() == []


# -- STATUS --------------------------------------------------------------------------------------


def test_status(node: Node) -> None:
    _ok(node.server.handle(CniRequest("STATUS", NET)))
    node.store.down = True
    resp = node.server.handle(CniRequest("STATUS", NET))
    assert _code(resp) == Code.PLUGIN_NOT_AVAILABLE
    assert resp.error is not None and "datastore" in resp.error.msg


def test_status_without_free_addresses(short_dir: Path) -> None:
    small = Node(short_dir, pool="10.244.0.0/30", block=30)
    for i in range(4):
        _ok(small.add(f"c{i}", pod=f"p{i}"))
    resp = small.server.handle(CniRequest("STATUS", NET))
    assert _code(resp) == Code.PLUGIN_NOT_AVAILABLE
    assert resp.error is not None and "free" in resp.error.msg
    small.resources.delete(IPPool, "pool1")
    assert _code(small.server.handle(CniRequest("STATUS", NET))) == Code.PLUGIN_NOT_AVAILABLE


# -- the socket ----------------------------------------------------------------------------------


@pytest.fixture
def serving(node: Node) -> Iterator[Node]:
    node.server.start()
    try:
        yield node
    finally:
        node.server.stop()


def test_socket_is_private(serving: Node) -> None:
    path = serving.server.socket_path
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert [p for p in os.listdir(os.path.dirname(path)) if p.startswith(".cni")] == []


def test_requests_over_the_socket(serving: Node) -> None:
    resp = call_agent(serving.server.socket_path, serving.req("ADD"), 10)
    assert resp.ok and resp.result is not None


def test_concurrent_requests(serving: Node) -> None:
    results: list[CniResponse] = []

    def one(i: int) -> None:
        results.append(
            call_agent(serving.server.socket_path, serving.req("ADD", f"c{i}", f"p{i}"), 30)
        )

    threads = [threading.Thread(target=one, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.ok for r in results) and len(results) == 10
    ips = {str(ipaddress.ip_interface(r.result["ips"][0]["address"])) for r in results if r.result}
    assert len(ips) == 10


def test_garbage_request_is_decode_failure(serving: Node) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(serving.server.socket_path)
        s.sendall(b"{nope")
        s.shutdown(socket.SHUT_WR)
        data = s.recv(65536)
    resp = CniResponse.from_bytes(data)
    assert resp.error is not None and resp.error.code == Code.DECODE_FAILURE


def test_stop_removes_the_socket_and_plugin_sees_agent_down(node: Node) -> None:
    node.server.start()
    node.server.stop()
    assert not os.path.exists(node.server.socket_path)
    with pytest.raises(CniError) as err:
        call_agent(node.server.socket_path, node.req("DEL"), 5)
    assert err.value.code == Code.TRY_AGAIN_LATER


def test_stale_socket_is_replaced(node: Node) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(node.server.socket_path)
    stale.close()
    with node.server:
        assert call_agent(node.server.socket_path, node.req("DEL"), 5).ok


def test_live_socket_is_not_stolen(serving: Node, short_dir: Path) -> None:
    second = CniServer(
        serving.server.socket_path,
        "node-1",
        serving.store,
        serving.ipam,
        lambda: 1480,
        namespaces=serving.namespaces,
    )
    with pytest.raises(CniServerError, match="another tortie agent"):
        second.start()
    assert call_agent(serving.server.socket_path, serving.req("DEL"), 5).ok


def test_non_socket_file_is_not_removed(node: Node) -> None:
    Path(node.server.socket_path).write_text("precious")
    with pytest.raises(CniServerError, match="not a socket"):
        node.server.start()
    assert Path(node.server.socket_path).read_text() == "precious"


def test_shared_directory_is_refused(node: Node, short_dir: Path) -> None:
    shared = short_dir / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    server = CniServer(str(shared / "cni.sock"), "node-1", node.store, node.ipam, lambda: 1480)
    with pytest.raises(CniServerError, match="0755"):
        server.start()


def test_missing_directory_is_made_private(node: Node, short_dir: Path) -> None:
    server = CniServer(
        str(short_dir / "run" / "n1" / "cni.sock"),
        "node-1",
        node.store,
        node.ipam,
        lambda: 1480,
        namespaces=node.namespaces,
    )
    with server:
        assert stat.S_IMODE(os.stat(short_dir / "run" / "n1").st_mode) == 0o700
