"""The reconciler end to end over the memory datastore, real IPAM and a fake kernel."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from tortie.agent.config import AgentConfig, NodeAddress
from tortie.agent.node import NodeAgent
from tortie.agent.registration import register_node
from tortie.dataplane.fake_netlink import FakeNetlink
from tortie.dataplane.netlink import Link
from tortie.dataplane.routes import KernelRoute
from tortie.dataplane.tunnel import TunnelAddr
from tortie.dataplane.vxlan import RemoteVTEP
from tortie.datastore.memory import MemoryDatastore
from tortie.datastore.resources import ResourceStore
from tortie.datastore.syncer import InSync, Update
from tortie.ipam.client import IPAM
from tortie.model.loader import load_documents
from tortie.model.resources import IPPool, Node, WorkloadEndpoint


class FakeBackend:
    name = "fake"
    device = "tunl0"

    def __init__(self, netlink: FakeNetlink) -> None:
        self.netlink = netlink
        self.known: set[IPv4Address] = set()
        self.mtu: int | None = None
        self.addr: TunnelAddr = None
        self.removed = 0
        self.calls: list[str] = []

    def ensure_device(self, mtu: int, tunnel_addr: TunnelAddr = None) -> list[str]:
        self.calls.append("ensure")
        changes = []
        if self.netlink.get_link("tunl0") is None:
            self.netlink.add_link("tunl0", kind="veth", mtu=mtu)
            changes.append("created tunl0")
        if (mtu, tunnel_addr) != (self.mtu, self.addr):
            changes.append("configured")
        self.mtu, self.addr = mtu, tunnel_addr
        return changes

    def set_known_nodes(self, node_ips: Iterable[IPv4Address]) -> list[str]:
        self.calls.append("known")
        new = set(node_ips)
        changed = new != self.known
        self.known = new
        return ["allowlist"] if changed else []

    def counters(self) -> dict[str, int]:
        return {"dropped_unknown_source": 0}

    def remove(self) -> list[str]:
        if self.netlink.get_link("tunl0") is None:
            return []
        self.netlink.delete_link("tunl0")
        self.removed += 1
        return ["removed tunl0"]


class FakeFirewall:
    def __init__(self) -> None:
        self.node_ips: set[str] = set()
        self.pools: tuple[set[str], set[str]] = (set(), set())
        self.workloads: set[tuple[str, str]] = set()
        self.resyncs = 0

    def ensure_table(self) -> list[str]:
        return []

    def resync(self) -> list[str]:
        self.resyncs += 1
        return []

    def set_node_ips(self, ips: Iterable[object]) -> list[str]:
        self.node_ips = {str(i) for i in ips}
        return []

    def set_pools(self, all_cidrs: Iterable[object], nat_cidrs: Iterable[object]) -> list[str]:
        self.pools = ({str(c) for c in all_cidrs}, {str(c) for c in nat_cidrs})
        return []

    def set_workloads(self, endpoints: Iterable[tuple[str, object]]) -> list[str]:
        self.workloads = {(i, str(a)) for i, a in endpoints}
        return []

    def counters(self) -> dict[str, int]:
        return {"spoofed": 2, "ipip_dropped": 1}


class FakeVxlan:
    device = "vxlan.calico"

    def __init__(self, netlink: FakeNetlink) -> None:
        self.netlink = netlink
        self.mtu: int | None = None
        self.addr: object = None
        self.mac: str | None = None
        self.remotes: list[object] = []

    def ensure_device(
        self, mtu: int, vtep_addr: object = None, mac: str | None = None
    ) -> list[str]:
        created = self.netlink.get_link(self.device) is None
        if created:
            self.netlink.add_link(self.device, kind="vxlan", mtu=mtu)
        self.mtu, self.addr, self.mac = mtu, vtep_addr, mac
        return ["created"] if created else []

    def set_remote_vteps(self, vteps: Iterable[object]) -> list[str]:
        self.remotes = sorted(vteps, key=str)
        return []

    def remove(self) -> list[str]:
        if self.netlink.get_link(self.device) is None:
            return []
        self.netlink.delete_link(self.device)
        return ["removed"]


POOL = """
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pool}
spec: {cidr: 10.244.0.0/16, ipipMode: %s, natOutgoing: true}
"""

WEP_DOC = """
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: node1-k8s-pod1-eth0, namespace: default}
spec: {node: node1, pod: pod1, endpoint: eth0, interfaceName: cali1234567890a,
       ipNetworks: [10.244.3.7/32], orchestrator: k8s}
"""

VXLAN_POOL = """
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pool}
spec: {cidr: 10.244.0.0/16, vxlanMode: %s}
"""


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.store = MemoryDatastore()
        self.res = ResourceStore(self.store)
        self.ipam = IPAM(self.store)
        self.kernel = FakeNetlink()
        self.kernel.add_link("eth0", kind=None)
        self.backend = FakeBackend(self.kernel)
        self.firewall = FakeFirewall()
        self.vxlan = FakeVxlan(self.kernel)
        self.now = 0.0
        cfg = AgentConfig(node_name="node1", datastore_url="memory://", state_dir=tmp_path)
        addr = NodeAddress(IPv4Interface("192.168.49.2/24"), "eth0", "test")
        self.agent = NodeAgent(
            cfg,
            self.store,
            self.kernel,
            addr,
            lambda: (self.backend, "test"),
            ipam=self.ipam,
            firewall=self.firewall,
            vxlan_factory=lambda: self.vxlan,
            clock=lambda: self.now,
        )
        self.agent.register()
        self.cfg = cfg

    def set_mode(self, mode: str) -> None:
        self.res.apply(load_documents(POOL % mode, "pool.yaml"))

    def set_vxlan_mode(self, mode: str) -> None:
        self.res.apply(load_documents(VXLAN_POOL % mode, "pool.yaml"))

    def add_node(self, name: str, ip: str) -> None:
        register_node(self.res, name, IPv4Interface(ip))

    def sync(self) -> None:
        """Feed the whole datastore as the syncer would, then run a pass."""
        listing = self.store.list("/tortie/")
        for kv in listing.items:
            self.agent.on_sync_event(Update(kv.key, kv.value, kv.mod_revision))
        self.agent.on_sync_event(InSync(listing.revision))
        self.agent.run_once()

    def routes(self) -> dict[str, str]:
        names = {link.index: link.name for link in self.kernel.list_links()}
        out = {}
        for r in self.kernel.table():
            text = "blackhole" if r.type == 6 else ""
            if r.gateway:
                text += f"via {r.gateway}"
            if r.oif:
                text += f" dev {names[r.oif]}"
            if r.onlink:
                text += " onlink"
            out[str(r.dst)] = text.strip()
        return out


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def test_no_kernel_writes_before_in_sync(h: Harness) -> None:
    h.set_mode("Always")
    kv = h.store.list("/tortie/").items[0]
    h.agent.on_sync_event(Update(kv.key, kv.value, kv.mod_revision))
    h.agent.run_once()
    assert h.kernel.route_writes == 0 and h.kernel.link_ops == []
    assert h.backend.calls == []


def test_ipip_mode_routes_tunnel_and_node_record(h: Harness) -> None:
    h.set_mode("Always")
    h.add_node("node2", "192.168.49.3/24")
    local = h.ipam.assign(node="node1", handle="k8s-pod-network.a")[0]
    remote = h.ipam.assign(node="node2", handle="k8s-pod-network.b")[0]
    h.sync()
    local_block = str(IPv4Network(f"{local}/26", strict=False))
    remote_block = str(IPv4Network(f"{remote}/26", strict=False))
    routes = h.routes()
    assert routes[local_block] == "blackhole"
    assert routes[remote_block] == "via 192.168.49.3 dev tunl0 onlink"
    # Known nodes before the device: a BPF (re)load attaches with the allowlist in place.
    assert h.backend.calls[:2] == ["known", "ensure"]
    assert h.backend.known == {IPv4Address("192.168.49.3")}
    assert h.backend.mtu == 1480
    node = h.res.require(Node, "node1")
    assert node.spec.bgp is not None and node.spec.bgp.ipv4_ipip_tunnel_addr
    assert str(h.backend.addr).startswith(node.spec.bgp.ipv4_ipip_tunnel_addr)
    assert h.cfg.mtu_file.read_text() == "1480\n"
    assert h.agent.board.ready() == (True, "ok")


def test_live_mode_changes_converge(h: Harness) -> None:
    h.set_mode("Always")
    h.add_node("node2", "192.168.49.3/24")
    h.add_node("node3", "192.168.50.2/24")
    b2 = h.ipam.assign(node="node2", handle="x.b")[0]
    b3 = h.ipam.assign(node="node3", handle="x.c")[0]
    blk2 = str(IPv4Network(f"{b2}/26", strict=False))
    blk3 = str(IPv4Network(f"{b3}/26", strict=False))
    h.sync()
    assert h.routes()[blk2] == "via 192.168.49.3 dev tunl0 onlink"
    h.set_mode("Never")
    h.sync()
    assert h.routes()[blk2] == "via 192.168.49.3 dev eth0"
    assert h.routes()[blk3] == "via 192.168.50.2 dev eth0"
    assert h.backend.removed == 1
    assert h.res.require(Node, "node1").spec.bgp.ipv4_ipip_tunnel_addr is None  # type: ignore[union-attr]
    assert h.cfg.mtu_file.read_text() == "1500\n"
    h.set_mode("CrossSubnet")
    h.sync()
    assert h.routes()[blk2] == "via 192.168.49.3 dev eth0"
    assert h.routes()[blk3] == "via 192.168.50.2 dev tunl0 onlink"


def test_restart_writes_nothing_when_kernel_is_right(h: Harness, tmp_path: Path) -> None:
    h.set_mode("Always")
    h.add_node("node2", "192.168.49.3/24")
    h.ipam.assign(node="node2", handle="x.b")
    h.ipam.assign(node="node1", handle="x.a")
    h.sync()
    writes = h.kernel.route_writes
    assert writes > 0
    # A new agent over the same kernel and datastore (kill -9 and start again).
    cfg = h.cfg
    addr = NodeAddress(IPv4Interface("192.168.49.2/24"), "eth0", "test")
    again = NodeAgent(cfg, h.store, h.kernel, addr, lambda: (h.backend, "t"), ipam=h.ipam)
    h.agent = again
    h.sync()
    assert h.kernel.route_writes == writes


def test_foreign_routes_untouched_and_stale_owned_removed(h: Harness) -> None:
    h.set_mode("Never")
    foreign = KernelRoute(IPv4Network("10.99.0.0/24"), proto=4, oif=2)
    stale = KernelRoute(IPv4Network("10.244.99.0/26"), proto=80, type=6)
    h.kernel.add_foreign_route(foreign)
    h.kernel.add_foreign_route(stale)
    h.sync()
    routes = h.routes()
    assert "10.99.0.0/24" in routes
    assert "10.244.99.0/26" not in routes


def test_borrowed_and_workload_routes(h: Harness) -> None:
    h.set_mode("Always")
    h.add_node("node2", "192.168.49.3/24")
    h.res.apply(load_documents(WEP_DOC, "wep.yaml"))
    h.kernel.add_link("cali1234567890a")
    # node2 borrows an address from a block affine to node1.
    h.ipam.assign(node="node1", handle="x.a")
    blk = h.ipam.blocks_for_node("node1")[0]
    borrowed_ip = str(blk.network_address + 9)
    h.ipam.assign(node="node2", handle="x.b", ip=borrowed_ip)
    h.sync()
    routes = h.routes()
    assert routes[f"{borrowed_ip}/32"] == "via 192.168.49.3 dev tunl0 onlink"
    assert routes["10.244.3.7/32"] == "dev cali1234567890a"


def test_corrupt_datastore_entry_is_ignored_not_fatal(h: Harness) -> None:
    h.set_mode("Always")
    h.store.put("/tortie/v3/ippools/broken", "{not json")
    h.sync()
    assert "/tortie/v3/ippools/broken" in h.agent.state.bad_keys
    assert h.agent.state.in_sync
    assert "tortie_datastore_bad_keys 1" in h.agent.board.metrics_text()


def test_failed_route_is_retried_with_backoff(h: Harness) -> None:
    h.set_mode("Never")
    h.add_node("node2", "192.168.49.3/24")
    ip = h.ipam.assign(node="node2", handle="x.b")[0]
    blk = IPv4Network(f"{ip}/26", strict=False)
    h.kernel.fail_once[blk] = 22  # EINVAL once
    h.sync()
    assert str(blk) not in h.routes()
    ready, why = h.agent.board.ready()
    assert not ready and str(blk) in why
    h.now += 10
    h.agent.run_once()
    assert h.routes()[str(blk)] == "via 192.168.49.3 dev eth0"
    assert h.agent.board.ready()[0]


def test_resources_types_exposed(h: Harness) -> None:
    # The agent reads pools and endpoints through the model's types (smoke).
    h.set_mode("Always")
    h.sync()
    assert isinstance(next(iter(h.agent.state.pools.values())), IPPool)
    assert not any(isinstance(w, WorkloadEndpoint) for w in h.agent.state.local_workloads())


def test_steady_state_passes_write_nothing(h: Harness) -> None:
    """Regression: every pass used to drop the cache of routes via tunl0 and re-add them."""
    h.set_mode("Always")
    h.add_node("node2", "192.168.49.3/24")
    h.ipam.assign(node="node2", handle="x.b")
    h.sync()
    writes = h.kernel.route_writes
    for _ in range(3):
        h.agent.state.dirty = True
        h.agent.run_once()
    assert h.kernel.route_writes == writes
    assert h.agent.board.ready() == (True, "ok")


def test_vxlan_mode_publishes_vtep_and_routes_via_remote_vteps(h: Harness, tmp_path: Path) -> None:
    h.set_vxlan_mode("Always")
    h.add_node("node2", "192.168.49.3/24")
    remote = h.ipam.assign(node="node2", handle="x.b")[0]
    block = str(IPv4Network(f"{remote}/26", strict=False))
    h.sync()
    me = h.res.require(Node, "node1")
    assert me.spec.ipv4_vxlan_tunnel_addr and me.spec.vxlan_tunnel_mac_addr == h.agent.vtep_mac
    assert h.vxlan.mtu == 1450 and h.cfg.mtu_file.read_text() == "1450\n"
    # node2 has no agent here: publish its VTEP as its agent would.
    vtep2 = h.ipam.ensure_tunnel_address("node2", "vxlan")
    assert vtep2 is not None
    register_node(
        h.res,
        "node2",
        IPv4Interface("192.168.49.3/24"),
        vxlan=(IPv4Address(str(vtep2)), "66:aa:bb:cc:dd:ee"),
    )
    assert block not in h.routes()  # until the VTEP is known: reported, not guessed
    h.sync()
    assert h.routes()[block] == f"via {vtep2} dev vxlan.calico onlink"
    assert [str(r) for r in h.vxlan.remotes] == [
        str(RemoteVTEP(IPv4Address("192.168.49.3"), IPv4Address(str(vtep2)), "66:aa:bb:cc:dd:ee"))
    ]
    h.set_mode("Never")  # VXLAN off
    h.sync()
    assert h.kernel.get_link("vxlan.calico") is None
    assert h.res.require(Node, "node1").spec.ipv4_vxlan_tunnel_addr is None


def test_firewall_sets_follow_the_cluster(h: Harness) -> None:
    h.set_mode("Always")
    h.add_node("node2", "192.168.49.3/24")
    wep = WEP_DOC
    h.res.apply(load_documents(wep, "wep.yaml"))
    h.sync()
    fw = h.firewall
    assert fw.node_ips == {"192.168.49.2", "192.168.49.3"}
    assert fw.pools == ({"10.244.0.0/16"}, {"10.244.0.0/16"})
    assert fw.workloads == {("cali1234567890a", "10.244.3.7")}
    assert fw.resyncs == 1
    assert "tortie_nft_spoofed_total 2" in h.agent.board.metrics_text()


def test_links_are_dumped_only_while_a_workload_interface_waits(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tortie.agent.managers import workloads

    configured: list[str] = []
    monkeypatch.setattr(
        workloads, "configure_workload_interface", lambda name: configured.append(name) or []
    )
    dumps: list[int] = []
    real_list_links = h.kernel.list_links

    def counting_list_links() -> list[Link]:
        dumps.append(1)
        return real_list_links()

    monkeypatch.setattr(h.kernel, "list_links", counting_list_links)
    h.set_mode("Always")
    h.res.apply(load_documents(WEP_DOC, "wep.yaml"))
    h.sync()  # the interface is not there yet: dumped, nothing configured
    assert configured == [] and dumps
    h.kernel.add_link("cali1234567890a")
    h.agent.state.dirty = True
    h.agent.run_once()
    assert configured == ["cali1234567890a"]
    h.agent.state.dirty = True
    h.agent.run_once()  # the route table re-reads links once after an interface update
    # Configured: further passes (new blocks elsewhere, say) do not dump the links.
    dumps.clear()
    for _ in range(3):
        h.agent.state.dirty = True
        h.agent.run_once()
    assert dumps == []
    # A periodic resync forgets what was configured, so it is checked (and dumped) again.
    h.now += h.cfg.resync_interval * 1.2
    h.agent.run_once()
    assert dumps and configured == ["cali1234567890a"] * 2


def test_an_endpoint_on_a_foreign_interface_is_ignored(
    h: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 17 item 7: an endpoint applied by hand with interfaceName eth0 (the node's uplink)
    gets no /32 on it, no anti-spoofing entry, no workload sysctls; it is reported, once."""
    from tortie.agent.managers import workloads

    configured: list[str] = []
    monkeypatch.setattr(
        workloads, "configure_workload_interface", lambda name: configured.append(name) or []
    )
    h.set_mode("Always")
    h.res.apply(load_documents(WEP_DOC, "wep.yaml"))
    h.kernel.add_link("cali1234567890a")
    bad = WEP_DOC.replace("pod1", "pod2").replace("cali1234567890a", "eth0")
    h.res.apply(load_documents(bad.replace("10.244.3.7", "10.244.3.8"), "bad.yaml"))
    with caplog.at_level("WARNING", logger="tortie.agent.managers.workloads"):
        h.sync()
        for _ in range(3):
            h.agent.state.dirty = True
            h.agent.run_once()
    routes = h.routes()
    assert "10.244.3.8/32" not in routes
    assert routes["10.244.3.7/32"] == "dev cali1234567890a"
    assert h.firewall.workloads == {("cali1234567890a", "10.244.3.7")}
    assert configured == ["cali1234567890a"]
    warnings = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert len(warnings) == 1 and "default/node1-k8s-pod2-eth0" in warnings[0]
    status = h.agent.status()
    assert list(status["ignored_endpoints"]) == ["default/node1-k8s-pod2-eth0"]  # type: ignore[call-overload]
    assert "tortie_workloads_ignored 1" in h.agent.board.metrics_text()
    assert h.agent.board.get().converged  # not a failure to retry: nothing to do


def test_status_says_while_the_datastore_is_away_and_when_it_is_back(
    h: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by the fault suite (etcd stopped under a lab): a running agent whose datastore
    went away kept ``in_sync: true`` and ``detail: ok`` in its status, and ``tortie node
    status`` said nothing, while every pod ADD on the node failed. The syncer's status, and
    since when, is in the status file; ``node status`` explains it. The dataplane stays."""
    from tortie.ctl.main import main
    from tortie.datastore.syncer import StatusChanged, SyncStatus

    wall = [1000.0]
    h.agent._wallclock = lambda: wall[0]
    h.set_mode("Always")
    h.add_node("node2", "192.168.49.3/24")
    h.agent.on_sync_event(StatusChanged(SyncStatus.RESYNC, ""))
    h.sync()
    h.agent.on_sync_event(StatusChanged(SyncStatus.IN_SYNC, ""))
    h.agent.run_once()
    routes = h.routes()
    assert h.agent.status()["datastore"] == {"status": "in-sync", "detail": "", "since": 1000.0}

    wall[0] = 1010.0
    down = "datastore etcd://127.0.0.1:2379 is unavailable: connection refused"
    h.agent.on_sync_event(StatusChanged(SyncStatus.WAIT_FOR_DATASTORE, down))
    h.agent.run_once()
    status = h.agent.status()
    assert status["datastore"] == {"status": "wait-for-datastore", "detail": down, "since": 1010.0}
    assert h.routes() == routes  # fail static: the kernel as it was
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "status.json").write_text(json.dumps({**status, "pid": os.getpid()}))
    assert main(["node", "status", "--name", "node1", "--state-dir", str(state_dir)]) == 0
    out = capsys.readouterr().out
    assert f"Datastore unavailable since {time.strftime('%H:%M:%S', time.localtime(1010))}" in out
    assert down in out and "try again later" in out

    wall[0] = 1011.0
    h.agent.on_sync_event(StatusChanged(SyncStatus.RESYNC, ""))
    h.sync()
    h.agent.on_sync_event(StatusChanged(SyncStatus.IN_SYNC, ""))
    h.agent.run_once()
    status = h.agent.status()
    assert status["datastore"] == {"status": "in-sync", "detail": "", "since": 1011.0}
    (state_dir / "status.json").write_text(json.dumps({**status, "pid": os.getpid()}))
    assert main(["node", "status", "--name", "node1", "--state-dir", str(state_dir)]) == 0
    assert "Datastore" not in capsys.readouterr().out
