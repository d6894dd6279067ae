"""DEL in every case runtimes produce, GC and STATUS, against the real kernel."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cni_lab import CniLab, cni_lab, ip_json, sh

from tortie.model.cniwire import Code


@pytest.fixture
def lab() -> Iterator[CniLab]:
    with cni_lab() as the_lab:
        yield the_lab


def test_del_removes_interface_address_and_endpoint(lab: CniLab) -> None:
    ns = lab.netns("p1")
    result = lab.add("c1", ns, "web")
    out = lab.plugin("DEL", "c1", ns, "web", config=lab.config(prevResult=result))
    assert (out.status, out.stdout) == (0, "")
    lab.assert_clean()
    assert [link["ifname"] for link in ip_json(ns, "link")] == ["lo"]


def test_del_twice_like_containerd(lab: CniLab) -> None:
    """containerd's second DEL has an empty CNI_NETNS and no prevResult."""
    ns = lab.netns("p2")
    result = lab.add("c2", ns, "web")
    assert lab.plugin("DEL", "c2", ns, "web", config=lab.config(prevResult=result)).status == 0
    out = lab.plugin("DEL", "c2", "", "web")
    assert (out.status, out.stdout) == (0, ""), out.stderr
    lab.assert_clean()


def test_del_with_only_an_empty_netns(lab: CniLab) -> None:
    """No first DEL with the namespace: the host side is still found and removed."""
    ns = lab.netns("p3")
    lab.add("c3", ns, "web")
    assert lab.plugin("DEL", "c3", "", "web").status == 0
    lab.assert_clean()
    assert [link["ifname"] for link in ip_json(ns, "link")] == ["lo"]


def test_del_without_add(lab: CniLab) -> None:
    ns = lab.netns("p4")
    assert lab.plugin("DEL", "never", ns, "ghost").status == 0
    assert lab.plugin("DEL", "never", None, None).status == 0
    lab.assert_clean()


def test_del_after_the_netns_is_gone(lab: CniLab) -> None:
    ns = lab.netns("p5")
    lab.add("c5", ns, "web")
    sh("ip", "netns", "del", ns)
    lab.namespaces.remove(ns)
    out = lab.plugin("DEL", "c5", ns, "web")
    assert out.status == 0, out.stdout
    lab.assert_clean()


def test_del_after_a_failed_add(lab: CniLab) -> None:
    ns = lab.netns("p6")
    sh("ip", "-n", ns, "link", "add", "eth0", "type", "bridge")  # makes ADD fail
    assert lab.plugin("ADD", "c6", ns, "web").status == 1
    assert lab.plugin("DEL", "c6", ns, "web").status == 0
    assert lab.plugin("DEL", "c6", "", "web").status == 0
    lab.assert_clean()
    assert [link["ifname"] for link in ip_json(ns, "link")] == ["lo", "eth0"]


def test_late_del_of_an_old_sandbox_spares_the_live_pod(lab: CniLab) -> None:
    """Same pod name, new sandbox (new container ID): the host interface has the same name.
    The old sandbox's DEL must not touch the live pod's interface, route or endpoint."""
    old_ns, new_ns = lab.netns("old"), lab.netns("new")
    lab.add("old-id", old_ns, "web-0")
    lab.add("new-id", new_ns, "web-0")  # replaces the host veth (Calico does the same)
    (live_ip,) = lab.handle_ips("new-id")
    cali = lab.cali("new-id", "web-0")
    for netns in (old_ns, ""):
        assert lab.plugin("DEL", "old-id", netns, "web-0").status == 0
        assert lab.host_links() == [cali]
        assert lab.host_routes() == {live_ip: cali}
        assert lab.pod_addresses(new_ns) == [f"{live_ip}/32"]
        (wep,) = lab.endpoints()
        assert wep.spec.container_id == "new-id"
        assert lab.handle_ips("old-id") == [] and lab.handle_ips("new-id") == [live_ip]
    assert lab.ipam_problems() == []
    assert lab.plugin("DEL", "new-id", new_ns, "web-0").status == 0
    lab.assert_clean()


# -- GC ------------------------------------------------------------------------------------------


def test_gc_removes_attachments_the_runtime_no_longer_lists(lab: CniLab) -> None:
    namespaces = [lab.netns(f"g{i}") for i in range(3)]
    for i, ns in enumerate(namespaces):
        lab.add(f"g{i}", ns, f"gc-{i}")
    cfg = lab.config("1.1.0")
    cfg["cni.dev/attachments"] = [{"containerID": "g0", "ifname": "eth0"}]
    cfg["cni.dev/valid-attachments"] = [{"containerID": "g1", "ifname": "eth0"}]
    out = lab.plugin("GC", "", None, None, config=cfg)
    assert (out.status, out.stdout) == (0, ""), out.stderr
    assert lab.host_links() == sorted([lab.cali("g0", "gc-0"), lab.cali("g1", "gc-1")])
    assert lab.handle_ips("g2") == [] and lab.handle_ips("g0") and lab.handle_ips("g1")
    assert sorted(w.spec.container_id or "" for w in lab.endpoints()) == ["g0", "g1"]
    assert [link["ifname"] for link in ip_json(namespaces[2], "link")] == ["lo"]
    assert lab.ipam_problems() == []
    cfg["cni.dev/attachments"] = cfg["cni.dev/valid-attachments"] = []
    assert lab.plugin("GC", "", None, None, config=cfg).status == 0
    lab.assert_clean()


def test_gc_needs_version_1_1(lab: CniLab) -> None:
    cfg = lab.config("1.0.0")
    cfg["cni.dev/valid-attachments"] = []
    out = lab.plugin("GC", "", None, None, config=cfg)
    assert out.status == 1 and out.doc["code"] == Code.INCOMPATIBLE_VERSION


# -- STATUS --------------------------------------------------------------------------------------


def test_status(lab: CniLab) -> None:
    out = lab.plugin("STATUS", "", None, None, config=lab.config("1.1.0"))
    assert (out.status, out.stdout) == (0, "")
    assert lab.server is not None
    lab.server.stop()
    out = lab.plugin("STATUS", "", None, None, config=lab.config("1.1.0"))
    assert out.status == 1 and out.doc["code"] == Code.PLUGIN_NOT_AVAILABLE
    assert "tortie node run" in out.doc["details"]


def test_status_when_the_pool_is_full() -> None:
    with cni_lab(pool="10.244.0.0/30", block=30) as lab:
        for i in range(4):
            lab.add(f"s{i}", lab.netns(f"s{i}"), f"s{i}")
        out = lab.plugin("STATUS", "", None, None, config=lab.config("1.1.0"))
        assert out.status == 1 and out.doc["code"] == Code.PLUGIN_NOT_AVAILABLE
        assert "free" in out.doc["msg"]
        assert lab.plugin("DEL", "s0", "", "s0").status == 0
        assert lab.plugin("STATUS", "", None, None, config=lab.config("1.1.0")).status == 0
