"""ADD and CHECK against the real kernel, through the installed plugin process and the agent's
CNI server: Calico's wiring, the datastore after each step, and every failure undone."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from cni_lab import MTU, CniLab, cni_lab, ip_json, sh, sysctl

from tortie.datastore.resources import ResourceStore
from tortie.ipam.client import IPAM
from tortie.model.cniwire import Code


@pytest.fixture
def lab() -> Iterator[CniLab]:
    with cni_lab() as the_lab:
        yield the_lab


def test_add_wires_the_pod_the_calico_way(lab: CniLab) -> None:
    pod_ns = lab.netns("p1")
    result = lab.add("c1", pod_ns, "web-0")
    cali = lab.cali("c1", "web-0")
    (ip,) = lab.handle_ips("c1")

    # Host side: the veth, its MAC, MTU, state, sysctls and the /32 route.
    (link,) = ip_json(lab.node_ns, "link", "show", "dev", cali)
    assert link["address"] == "ee:ee:ee:ee:ee:ee"
    assert link["mtu"] == MTU and "UP" in link["flags"]
    assert link.get("link_netnsid") is not None
    for key, want in (
        ("conf/{}/proxy_arp", "1"),
        ("neigh/{}/proxy_delay", "0"),
        ("conf/{}/forwarding", "1"),
        ("conf/{}/route_localnet", "1"),
    ):
        assert sysctl(lab.node_ns, "net/ipv4/" + key.format(cali)) == want, key
    (route,) = ip_json(lab.node_ns, "route", "show", f"{ip}/32")
    assert route["dev"] == cali and route["scope"] == "link"

    # Pod side: eth0 with the /32, the link route to the gateway, the default route.
    (eth0,) = ip_json(pod_ns, "link", "show", "dev", "eth0")
    assert eth0["mtu"] == MTU and "UP" in eth0["flags"]
    assert lab.pod_addresses(pod_ns) == [f"{ip}/32"]
    routes = {(r["dst"], r.get("gateway"), r.get("scope")) for r in ip_json(pod_ns, "route")}
    assert ("169.254.1.1", None, "link") in routes
    assert ("default", "169.254.1.1", None) in routes

    # The result, the endpoint, IPAM.
    assert result["cniVersion"] == "1.0.0"
    assert result["interfaces"][0] == {"name": cali, "mac": "ee:ee:ee:ee:ee:ee"}
    assert result["interfaces"][1] == {
        "name": "eth0",
        "mac": eth0["address"],
        "sandbox": f"/run/netns/{pod_ns}",
    }
    assert result["ips"] == [{"address": f"{ip}/32", "gateway": "169.254.1.1", "interface": 1}]
    (wep,) = lab.endpoints()
    assert wep.metadata.name == "node--1-k8s-web--0-eth0"
    assert (wep.spec.container_id, wep.spec.pod, wep.spec.interface_name) == ("c1", "web-0", cali)
    assert wep.spec.mac == eth0["address"] and wep.spec.ip_networks == [f"{ip}/32"]
    assert lab.ipam_problems() == []


def test_two_pods_reach_each_other(lab: CniLab) -> None:
    a, b = lab.netns("pa"), lab.netns("pb")
    lab.add("ca", a, "a")
    lab.add("cb", b, "b")
    (ip_b,) = lab.handle_ips("cb")
    out = sh("ip", "netns", "exec", a, "ping", "-c", "2", "-i", "0.2", "-W", "2", ip_b)
    assert " 0% packet loss" in out


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_results_in_every_version(lab: CniLab, version: str) -> None:
    ns = lab.netns("pv")
    result = lab.add("cv", ns, "v", config=lab.config(version))
    assert result["cniVersion"] == version
    assert ("version" in result["ips"][0]) == version.startswith("0.")
    assert ("mtu" in result["interfaces"][1]) == (version == "1.1.0")
    assert lab.plugin("DEL", "cv", ns, "v", config=lab.config(version)).status == 0
    lab.assert_clean()


def test_container_id_naming_without_pod_args(lab: CniLab) -> None:
    ns = lab.netns("pc")
    lab.add("0123456789abcdef", ns)
    assert lab.host_links() == [lab.cali("0123456789abcdef", None)]
    (wep,) = lab.endpoints()
    assert wep.spec.orchestrator == "cni"


def test_config_mtu_beats_the_agents(lab: CniLab) -> None:
    ns = lab.netns("pm")
    lab.add("cm", ns, "m", config=lab.config(mtu=1400))
    assert ip_json(ns, "link", "show", "dev", "eth0")[0]["mtu"] == 1400
    assert ip_json(lab.node_ns, "link", "show", "dev", lab.cali("cm", "m"))[0]["mtu"] == 1400


def test_static_ip_from_runtime_config(lab: CniLab) -> None:
    ns = lab.netns("ps")
    cfg = lab.config(runtimeConfig={"IPs": ["10.244.7.7/32"]})
    result = lab.add("cs", ns, "s", config=cfg)
    assert result["ips"][0]["address"] == "10.244.7.7/32"
    assert lab.pod_addresses(ns) == ["10.244.7.7/32"]


# -- CHECK --------------------------------------------------------------------------------------


def test_check_passes_then_finds_each_breakage(lab: CniLab) -> None:
    ns = lab.netns("pk")
    result = lab.add("ck", ns, "k")
    cfg = lab.config(prevResult=result)
    assert lab.plugin("CHECK", "ck", ns, "k", config=cfg).status == 0
    cali = lab.cali("ck", "k")
    (ip,) = lab.handle_ips("ck")

    breakages = [
        (
            [
                "ip",
                "netns",
                "exec",
                lab.node_ns,
                "sysctl",
                "-qw",
                f"net.ipv4.conf.{cali}.proxy_arp=0",
            ],
            [
                "ip",
                "netns",
                "exec",
                lab.node_ns,
                "sysctl",
                "-qw",
                f"net.ipv4.conf.{cali}.proxy_arp=1",
            ],
            "proxy_arp",
        ),
        (
            ["ip", "-n", ns, "route", "del", "default"],
            ["ip", "-n", ns, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0"],
            "default via",
        ),
        (
            ["ip", "-n", lab.node_ns, "route", "del", f"{ip}/32"],
            ["ip", "-n", lab.node_ns, "route", "add", f"{ip}/32", "dev", cali, "scope", "link"],
            f"routes {ip}",
        ),
        (
            ["ip", "-n", ns, "addr", "del", f"{ip}/32", "dev", "eth0"],
            ["ip", "-n", ns, "addr", "add", f"{ip}/32", "dev", "eth0"],
            f"does not have {ip}/32",
        ),
    ]
    for breaking, fixing, words in breakages:
        sh(*breaking)
        out = lab.plugin("CHECK", "ck", ns, "k", config=cfg)
        assert out.status == 1 and out.doc["code"] == Code.CHECK_FAILED, out.stdout
        assert words in out.doc["details"], out.doc
        sh(*fixing)
        if "addr" in breaking:  # re-adding the address drops routes through eth0... restore
            sh("ip", "-n", ns, "route", "replace", "169.254.1.1", "dev", "eth0", "scope", "link")
            sh("ip", "-n", ns, "route", "replace", "default", "via", "169.254.1.1", "dev", "eth0")
        assert lab.plugin("CHECK", "ck", ns, "k", config=cfg).status == 0


def test_check_after_del_fails(lab: CniLab) -> None:
    ns = lab.netns("pd")
    result = lab.add("cd", ns, "d")
    assert lab.plugin("DEL", "cd", ns, "d").status == 0
    out = lab.plugin("CHECK", "cd", ns, "d", config=lab.config(prevResult=result))
    assert out.status == 1 and out.doc["code"] == Code.CHECK_FAILED


# -- ADD failures leave nothing behind -------------------------------------------------------


def test_add_into_missing_netns(lab: CniLab) -> None:
    out = lab.plugin("ADD", "cx", f"{lab.prefix}nosuch", "x")
    assert out.status == 1 and out.doc["code"] == Code.UNKNOWN_CONTAINER
    lab.assert_clean()


def test_add_when_the_pod_has_a_foreign_eth0(lab: CniLab) -> None:
    ns = lab.netns("pf")
    sh("ip", "-n", ns, "link", "add", "eth0", "type", "bridge")
    out = lab.plugin("ADD", "cf", ns, "f")
    assert out.status == 1 and out.doc["code"] == Code.INTERFACE_EXISTS, out.stdout
    assert "already has an interface eth0: a bridge" in out.doc["msg"]
    lab.assert_clean()
    assert [link["ifname"] for link in ip_json(ns, "link")] == ["lo", "eth0"]  # not ours: kept


def test_add_failing_after_the_wiring_is_undone(
    lab: CniLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tortie.datastore.api import UnavailableError

    def down(*_: object) -> None:
        raise UnavailableError(lab.url, "disk on fire (test)")

    assert lab.server is not None
    monkeypatch.setattr(lab.server.handler.endpoints.resources, "apply", down)
    ns = lab.netns("pu")
    out = lab.plugin("ADD", "cu", ns, "u")
    assert out.status == 1 and out.doc["code"] == Code.TRY_AGAIN_LATER
    lab.assert_clean()
    assert [link["ifname"] for link in ip_json(ns, "link")] == ["lo"]
    # The runtime's DEL after a failed ADD is harmless.
    assert lab.plugin("DEL", "cu", ns, "u").status == 0


def test_add_with_the_pool_exhausted() -> None:
    with cni_lab(pool="10.244.0.0/30", block=30) as lab:
        namespaces = [lab.netns(f"p{i}") for i in range(5)]
        for i in range(4):
            lab.add(f"c{i}", namespaces[i], f"p{i}")
        out = lab.plugin("ADD", "c4", namespaces[4], "p4")
        assert out.status == 1 and out.doc["code"] == Code.NO_ADDRESS
        assert len(lab.host_links()) == 4 and lab.handle_ips("c4") == []
        assert [link["ifname"] for link in ip_json(namespaces[4], "link")] == ["lo"]


def test_add_with_the_datastore_down(lab: CniLab, start_etcd: Any) -> None:
    """etcd stops under a running agent: ADD is 'try again later' and leaves nothing."""
    start_etcd.start()
    store = lab.open_store(f"{start_etcd.url}?timeout=1")
    ResourceStore(store).apply([lab.pool_resource()])
    server = lab.serve(store, "etcd.sock")
    cfg = lab.config(agent_socket=server.socket_path, datastore=store.url)
    ns = lab.netns("pz")
    start_etcd.stop()
    out = lab.plugin("ADD", "cz", ns, "z", config=cfg)
    assert out.status == 1 and out.doc["code"] == Code.TRY_AGAIN_LATER, out.stdout
    assert "unavailable" in out.doc["msg"]
    assert lab.host_links() == [] and lab.host_routes() == {}
    assert [link["ifname"] for link in ip_json(ns, "link")] == ["lo"]
    # Back up: the runtime retries "try again later" (kubelet backs off for seconds). The agent's
    # etcd channel reconnects within its backoff (at most 2 s: _CHANNEL_OPTIONS in
    # datastore/etcd.py), so a retry within a few seconds succeeds; one that comes before the
    # reconnect is "try again later" again and leaves nothing behind. Then DEL cleans up.
    start_etcd.start()
    deadline = time.monotonic() + 5.0
    while (out := lab.plugin("ADD", "cz", ns, "z", config=cfg)).status != 0:
        assert out.doc["code"] == Code.TRY_AGAIN_LATER, out.stdout
        assert lab.host_links() == [], "a failed retry left a link"
        assert time.monotonic() < deadline, f"no reconnect within 5 s: {out.stdout}"
        time.sleep(0.25)
    assert len(lab.host_links()) == 1
    assert lab.plugin("DEL", "cz", ns, "z", config=cfg).status == 0
    assert lab.host_links() == []
    assert IPAM(store).addresses_for_handle("k8s-pod-network.cz") == []


def test_agent_not_running(lab: CniLab) -> None:
    ns = lab.netns("pn")
    cfg = lab.config(agent_socket=str(lab.tmp / "nobody.sock"))
    out = lab.plugin("ADD", "cn", ns, "n", config=cfg)
    assert out.status == 1 and out.doc["code"] == Code.TRY_AGAIN_LATER
    assert "tortie node run" in out.doc["details"] and "nobody.sock" in out.doc["msg"]
    lab.assert_clean()
