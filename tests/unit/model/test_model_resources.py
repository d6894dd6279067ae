"""ObjectMeta, IPAMConfiguration, Node, BGPConfiguration, BGPPeer, WorkloadEndpoint."""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from typing import Any

import pytest

from tortie.model.errors import ModelError, ValidationError
from tortie.model.resources import (
    BGPConfiguration,
    BGPPeer,
    IPAMConfiguration,
    IPPool,
    Node,
    ObjectMeta,
    Resource,
    WorkloadEndpoint,
    parse_workload_endpoint_name,
    workload_endpoint_name,
)
from tortie.model.selector import Selector

pytestmark = pytest.mark.unit

V3 = "projectcalico.org/v3"


def doc(kind: str, spec: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"apiVersion": V3, "kind": kind, "metadata": {"name": "x", **meta}}
    if spec is not None:
        out["spec"] = spec
    return out


def error(cls: type[Resource], document: dict[str, Any]) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        cls.from_document(document)
    assert "\n" not in info.value.message
    return info.value


def round_trips(res: Resource) -> None:
    again = type(res).from_document(res.to_document())
    assert again == res
    assert again.to_document() == res.to_document()


# --------------------------------------------------------------------------------------------
# Metadata and the document envelope


def test_object_meta_defaults_and_fields() -> None:
    meta = ObjectMeta(name="a")
    assert (meta.namespace, meta.labels, meta.annotations) == (None, {}, {})
    assert (meta.resource_version, meta.uid, meta.creation_timestamp) == (None, None, None)
    full = IPPool.from_document(
        {
            "apiVersion": V3,
            "kind": "IPPool",
            "metadata": {
                "name": "p",
                "labels": {"tier": "gold"},
                "annotations": {"example.com/note": "any text at all"},
                "resourceVersion": "12",
                "uid": "0b5c0f0e-1111-2222-3333-444455556666",
                "creationTimestamp": "2024-01-02T03:04:05Z",
            },
            "spec": {"cidr": "10.0.0.0/16"},
        }
    )
    assert full.metadata.labels == {"tier": "gold"}
    assert full.metadata.resource_version == "12"
    assert full.metadata.creation_timestamp == "2024-01-02T03:04:05Z"
    assert full.to_document()["metadata"] == {
        "name": "p",
        "labels": {"tier": "gold"},
        "annotations": {"example.com/note": "any text at all"},
        "resourceVersion": "12",
        "uid": "0b5c0f0e-1111-2222-3333-444455556666",
        "creationTimestamp": "2024-01-02T03:04:05Z",
    }
    round_trips(full)


def test_unquoted_resource_version_is_text() -> None:
    res = BGPConfiguration.from_document(doc("BGPConfiguration", resourceVersion=7))
    assert res.metadata.resource_version == "7"


@pytest.mark.parametrize(
    ("meta", "field", "message"),
    [
        ({"name": "Bad_Name"}, "metadata.name", "'Bad_Name' is not a valid name"),
        ({"name": 5}, "metadata.name", "expected a string, got 5"),
        ({"labels": {"k": "a b"}}, "metadata.labels", "value 'a b' of label 'k' is not valid"),
        ({"labels": {"k": True}}, "metadata.labels.k", "expected a string, got true"),
        ({"annotations": {"bad key": "v"}}, "metadata.annotations", "label key 'bad key'"),
        ({"namespace": "default"}, "metadata.namespace", "BGPConfiguration is not namespaced"),
        ({"generation": 3}, "metadata.generation", "unknown field"),
        ({"resourceversion": "3"}, "metadata.resourceversion", "did you mean resourceVersion?"),
    ],
)
def test_invalid_metadata(meta: dict[str, Any], field: str, message: str) -> None:
    err = error(BGPConfiguration, doc("BGPConfiguration", **meta))
    assert err.field == field
    assert message in err.message


def test_missing_metadata_name() -> None:
    d = doc("BGPConfiguration")
    del d["metadata"]["name"]
    assert error(BGPConfiguration, d).field == "metadata.name"
    del d["metadata"]
    err = error(BGPConfiguration, d)
    assert (err.field, err.message) == ("metadata", "required field is missing")


def test_envelope_errors() -> None:
    d = doc("IPPool", {"cidr": "10.0.0.0/16"})
    del d["apiVersion"]
    err = error(IPPool, d)
    assert (err.field, err.message) == (
        "apiVersion",
        "required field is missing (use projectcalico.org/v3)",
    )
    d["apiVersion"] = "crd.projectcalico.org/v1"
    err = error(IPPool, d)
    assert err.field == "apiVersion"
    assert err.message == (
        "'crd.projectcalico.org/v1' is not supported; tortie reads projectcalico.org/v3 resources"
    )
    d["apiVersion"] = V3
    d["kind"] = "BGPPeer"
    err = error(IPPool, d)
    assert (err.field, err.message) == ("kind", "expected IPPool, got 'BGPPeer'")
    del d["kind"]
    assert error(IPPool, d).field == "kind"
    err = error(IPPool, {**doc("IPPool", {"cidr": "10.0.0.0/16"}), "status": {}})
    assert (err.field, err.message) == (
        "status",
        "unknown field (known fields: apiVersion, kind, metadata, spec)",
    )
    with pytest.raises(ValidationError, match="expected a mapping"):
        IPPool.from_document(["not", "a", "mapping"])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Resource.from_document(d)


def test_resource_helpers() -> None:
    pool = IPPool.from_document(doc("IPPool", {"cidr": "10.0.0.0/16"}))
    assert (pool.name, pool.namespace, pool.identity) == ("x", None, ("IPPool", None, "x"))
    with pytest.raises(Exception, match="frozen"):
        pool.metadata = ObjectMeta(name="y")  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# IPAMConfiguration


def test_ipam_configuration_defaults() -> None:
    cfg = IPAMConfiguration.from_document(doc("IPAMConfiguration", name="default"))
    assert cfg.spec.strict_affinity is False
    assert cfg.spec.max_blocks_per_host == 20
    assert cfg.spec.block_limit == 20
    assert cfg.to_document()["spec"] == {"strictAffinity": False, "maxBlocksPerHost": 20}
    unlimited = cfg.with_spec(max_blocks_per_host=0)
    assert unlimited.spec.block_limit is None
    round_trips(unlimited)


def test_ipam_configuration_errors() -> None:
    err = error(IPAMConfiguration, doc("IPAMConfiguration", {}, name="other"))
    assert err.field == "metadata.name"
    assert "singleton and must be named 'default'" in err.message
    err = error(
        IPAMConfiguration, doc("IPAMConfiguration", {"maxBlocksPerHost": -1}, name="default")
    )
    assert (err.field, err.message) == ("spec.maxBlocksPerHost", "-1 is out of range: must be >= 0")
    err = error(
        IPAMConfiguration, doc("IPAMConfiguration", {"strictAffinity": "yes"}, name="default")
    )
    assert err.field == "spec.strictAffinity"
    err = error(
        IPAMConfiguration, doc("IPAMConfiguration", {"autoAllocateBlocks": True}, name="default")
    )
    assert "not supported by tortie" in err.message


# --------------------------------------------------------------------------------------------
# Node


def test_node_full() -> None:
    node = Node.from_document(
        {
            "apiVersion": V3,
            "kind": "Node",
            "metadata": {"name": "node-1", "labels": {"rack": "r1"}},
            "spec": {
                "bgp": {
                    "ipv4Address": "192.168.49.2/24",
                    "ipv6Address": "FD00::2/64",
                    "asNumber": 64513,
                    "ipv4IPIPTunnelAddr": "10.244.1.0",
                    "routeReflectorClusterID": "224.0.0.1",
                },
                "ipv4VXLANTunnelAddr": "10.244.1.1",
                "vxlanTunnelMACAddr": "66:CF:23:DF:22:07",
                "orchRefs": [{"nodeName": "node-1", "orchestrator": "k8s"}],
                "addresses": [
                    {"address": "192.168.49.2/24", "type": "CalicoNodeIP"},
                    {"address": "192.168.49.2", "type": "InternalIP"},
                ],
            },
            "status": {"podCIDRs": ["10.244.1.0/24"]},
        }
    )
    bgp = node.spec.bgp
    assert bgp is not None
    assert bgp.ipv6_address == "fd00::2/64"
    assert bgp.ipv4_interface == ipaddress.IPv4Interface("192.168.49.2/24")
    assert bgp.ipv6_interface == ipaddress.IPv6Interface("fd00::2/64")
    assert node.spec.vxlan_tunnel_mac_addr == "66:cf:23:df:22:07"
    assert node.metadata.labels == {"rack": "r1"}
    assert list(node.to_document()) == ["apiVersion", "kind", "metadata", "spec", "status"]
    round_trips(node)


def test_node_defaults() -> None:
    node = Node.from_document(doc("Node"))
    assert node.spec.bgp is None
    assert node.spec.ipv4_vxlan_tunnel_addr is None
    assert (node.spec.orch_refs, node.spec.addresses, node.status) == ([], [], None)
    assert node.to_document()["spec"] == {}
    empty_bgp = Node.from_document(doc("Node", {"bgp": {}}))
    assert empty_bgp.spec.bgp is not None
    assert empty_bgp.spec.bgp.ipv4_interface is None
    round_trips(empty_bgp)


def test_node_asdot_as_number() -> None:
    node = Node.from_document(doc("Node", {"bgp": {"asNumber": "1.10"}}))
    assert node.spec.bgp is not None and node.spec.bgp.as_number == 65546


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        ({"bgp": {"ipv4Address": "fd00::1/64"}}, "spec.bgp.ipv4Address", "expected IPv4"),
        ({"bgp": {"ipv4Address": "192.168.49.300/24"}}, "spec.bgp.ipv4Address", "not a valid"),
        ({"bgp": {"ipv6Address": "10.0.0.1/24"}}, "spec.bgp.ipv6Address", "expected IPv6"),
        (
            {"bgp": {"asNumber": 0}},
            "spec.bgp.asNumber",
            "0 is out of range: AS numbers are 1..4294967295",
        ),
        ({"bgp": {"asNumber": 4294967296}}, "spec.bgp.asNumber", "out of range"),
        (
            {"bgp": {"ipv4IPIPTunnelAddr": "10.0.0.1/32"}},
            "spec.bgp.ipv4IPIPTunnelAddr",
            "not a valid IPv4 address",
        ),
        (
            {"bgp": {"routeReflectorClusterID": "1"}},
            "spec.bgp.routeReflectorClusterID",
            "not a valid IPv4",
        ),
        (
            {"bgp": {"routeReflectorClusterID": "fd00::1"}},
            "spec.bgp.routeReflectorClusterID",
            "expected IPv4",
        ),
        ({"ipv4VXLANTunnelAddr": "fd00::1"}, "spec.ipv4VXLANTunnelAddr", "expected IPv4"),
        ({"vxlanTunnelMACAddr": "66:cf:23"}, "spec.vxlanTunnelMACAddr", "not a MAC address"),
        ({"addresses": [{"address": "x"}]}, "spec.addresses[0].address", "not a valid IP address"),
        (
            {"addresses": [{"address": "1.2.3.4", "typ": "x"}]},
            "spec.addresses[0].typ",
            "did you mean type?",
        ),
        (
            {"orchRefs": [{"nodeName": "n"}]},
            "spec.orchRefs[0].orchestrator",
            "required field is missing",
        ),
        ({"wireguard": {}}, "spec.wireguard", "not supported by tortie"),
        (
            {"bgp": {"ipv4address": "1.2.3.4/24"}},
            "spec.bgp.ipv4address",
            "did you mean ipv4Address?",
        ),
    ],
)
def test_node_errors(spec: dict[str, Any], field: str, message: str) -> None:
    err = error(Node, doc("Node", spec))
    assert err.field == field
    assert message in err.message


# --------------------------------------------------------------------------------------------
# BGPConfiguration


def test_bgp_configuration_defaults() -> None:
    cfg = BGPConfiguration.from_document(doc("BGPConfiguration", name="default"))
    spec = cfg.spec
    assert spec.as_number == 64512
    assert spec.node_to_node_mesh_enabled is True
    assert spec.log_severity_screen == "Info"
    assert spec.listen_port == 179
    round_trips(cfg)


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        ({"asNumber": 0}, "spec.asNumber", "0 is out of range"),
        ({"asNumber": "x"}, "spec.asNumber", "is not an AS number"),
        ({"listenPort": 0}, "spec.listenPort", "0 is out of range: must be >= 1"),
        ({"listenPort": 70000}, "spec.listenPort", "must be <= 65535"),
        ({"logSeverityScreen": "info"}, "spec.logSeverityScreen", "(did you mean Info?)"),
        (
            {"nodeToNodeMeshEnabled": "false"},
            "spec.nodeToNodeMeshEnabled",
            "expected true or false",
        ),
        (
            {"serviceClusterIPs": [{"cidr": "10.96.0.0/12"}]},
            "spec.serviceClusterIPs",
            "not supported by tortie",
        ),
    ],
)
def test_bgp_configuration_errors(spec: dict[str, Any], field: str, message: str) -> None:
    err = error(BGPConfiguration, doc("BGPConfiguration", spec, name="default"))
    assert err.field == field
    assert message in err.message


# --------------------------------------------------------------------------------------------
# BGPPeer


def test_bgp_peer_global_with_ip() -> None:
    peer = BGPPeer.from_document(doc("BGPPeer", {"peerIP": "192.168.1.1", "asNumber": 63400}))
    spec = peer.spec
    assert (spec.node, spec.node_selector, spec.peer_selector, spec.password) == (None,) * 4
    assert (spec.keepalive_time, spec.hold_time, spec.keepalive, spec.hold) == (None,) * 4
    assert spec.peer_address == ipaddress.ip_address("192.168.1.1")
    assert spec.peer_port is None
    assert spec.parsed_node_selector is None
    round_trips(peer)


@pytest.mark.parametrize(
    ("text", "normal", "port"),
    [
        ("10.0.0.1:1179", "10.0.0.1:1179", 1179),
        ("FD00::1", "fd00::1", None),
        ("[FD00::1]:179", "[fd00::1]:179", 179),
        ("[fd00::1]", "fd00::1", None),
    ],
)
def test_bgp_peer_ip_forms(text: str, normal: str, port: int | None) -> None:
    peer = BGPPeer.from_document(doc("BGPPeer", {"peerIP": text, "asNumber": 1}))
    assert peer.spec.peer_ip == normal
    assert peer.spec.peer_port == port
    round_trips(peer)


def test_bgp_peer_selectors_password_and_timers() -> None:
    peer = BGPPeer.from_document(
        doc(
            "BGPPeer",
            {
                "nodeSelector": "!has(route-reflector)",
                "peerSelector": "has(route-reflector)",
                "password": {"secretKeyRef": {"name": "bgp-secrets", "key": "rr-password"}},
                "keepaliveTime": "20s",
                "holdTime": "1m30s",
            },
        )
    )
    spec = peer.spec
    assert spec.parsed_peer_selector == Selector.parse("has(route-reflector)")
    assert spec.parsed_node_selector is not None
    assert spec.password is not None and spec.password.secret_key_ref is not None
    assert spec.password.secret_key_ref.key == "rr-password"
    assert (spec.keepalive, spec.hold) == (timedelta(seconds=20), timedelta(seconds=90))
    round_trips(peer)


def test_bgp_peer_plain_text_password() -> None:
    short = BGPPeer.from_document(
        doc("BGPPeer", {"peerIP": "10.0.0.1", "asNumber": 1, "password": "s3cret"})
    )
    long = BGPPeer.from_document(
        doc("BGPPeer", {"peerIP": "10.0.0.1", "asNumber": 1, "password": {"value": "s3cret"}})
    )
    assert short == long
    assert short.spec.password is not None and short.spec.password.value == "s3cret"
    assert "s3cret" not in repr(short)
    assert short.to_document()["spec"]["password"] == {"value": "s3cret"}
    round_trips(short)


def test_bgp_peer_hold_time_zero_disables_keepalives() -> None:
    peer = BGPPeer.from_document(
        doc(
            "BGPPeer", {"peerIP": "10.0.0.1", "asNumber": 1, "holdTime": "0", "keepaliveTime": "5s"}
        )
    )
    assert peer.spec.hold == timedelta(0)


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        ({"asNumber": 1}, "spec", "one of peerIP or peerSelector is required"),
        (
            {"peerIP": "10.0.0.1", "peerSelector": "all()", "asNumber": 1},
            "spec.peerSelector",
            "cannot be used together with peerIP",
        ),
        ({"peerIP": "10.0.0.1"}, "spec.asNumber", "required with peerIP"),
        (
            {"peerSelector": "all()", "asNumber": 1},
            "spec.asNumber",
            "must not be set with peerSelector",
        ),
        (
            {"peerIP": "10.0.0.1", "asNumber": 1, "node": "a", "nodeSelector": "all()"},
            "spec.nodeSelector",
            "cannot be used together with node",
        ),
        (
            {"peerIP": "10.0.0.1", "asNumber": 0},
            "spec.asNumber",
            "0 is out of range: AS numbers are 1..4294967295",
        ),
        ({"peerIP": "10.0.0.1", "asNumber": 4294967296}, "spec.asNumber", "out of range"),
        ({"peerIP": "10.0.0.1", "asNumber": 1.5}, "spec.asNumber", "quote asdot AS numbers"),
        ({"peerIP": "10.0.0.300", "asNumber": 1}, "spec.peerIP", "not a valid IP address"),
        ({"peerIP": "10.0.0.1:0", "asNumber": 1}, "spec.peerIP", "port must be 1..65535"),
        ({"peerIP": "10.0.0.1:http", "asNumber": 1}, "spec.peerIP", "port must be 1..65535"),
        ({"peerIP": "[fd00::1]179", "asNumber": 1}, "spec.peerIP", "write [IPv6]:port"),
        (
            {"peerSelector": "has(", "nodeSelector": "all()"},
            "spec.peerSelector",
            "invalid selector 'has(' at column 5",
        ),
        (
            {"peerIP": "10.0.0.1", "asNumber": 1, "nodeSelector": "a = 'b'"},
            "spec.nodeSelector",
            "column 3",
        ),
        (
            {"peerIP": "10.0.0.1", "asNumber": 1, "node": "Node_1"},
            "spec.node",
            "not a valid node name",
        ),
        (
            {"peerIP": "10.0.0.1", "asNumber": 1, "keepaliveTime": "20"},
            "spec.keepaliveTime",
            "'20' is not a duration",
        ),
        (
            {"peerIP": "10.0.0.1", "asNumber": 1, "keepaliveTime": "1.5s"},
            "spec.keepaliveTime",
            "not a whole number of seconds",
        ),
        (
            {"peerIP": "10.0.0.1", "asNumber": 1, "keepaliveTime": "0s"},
            "spec.keepaliveTime",
            "out of range: keepaliveTime is 1s..65535s",
        ),
        ({"peerIP": "10.0.0.1", "asNumber": 1, "holdTime": "-3s"}, "spec.holdTime", "out of range"),
        (
            {"peerIP": "10.0.0.1", "asNumber": 1, "holdTime": "2s"},
            "spec.holdTime",
            "holdTime is 0 (no keepalives) or at least 3s",
        ),
        ({"peerIP": "10.0.0.1", "asNumber": 1, "holdTime": "20h"}, "spec.holdTime", "out of range"),
        (
            {"peerIP": "10.0.0.1", "asNumber": 1, "keepaliveTime": "30s", "holdTime": "30s"},
            "spec.keepaliveTime",
            "30s must be shorter than holdTime (30s)",
        ),
        (
            {"peerIP": "10.0.0.1", "asNumber": 1, "password": {}},
            "spec.password",
            "give exactly one of secretKeyRef or value",
        ),
        (
            {
                "peerIP": "10.0.0.1",
                "asNumber": 1,
                "password": {"value": "x", "secretKeyRef": {"name": "a", "key": "b"}},
            },
            "spec.password",
            "exactly one",
        ),
        (
            {"peerIP": "10.0.0.1", "asNumber": 1, "password": ""},
            "spec.password.value",
            "the password is empty",
        ),
        (
            {"peerIP": "10.0.0.1", "asNumber": 1, "password": {"secretKeyRef": {"name": "a"}}},
            "spec.password.secretKeyRef.key",
            "required field is missing",
        ),
        (
            {"peerIP": "10.0.0.1", "asNumber": 1, "keepOriginalNextHop": True},
            "spec.keepOriginalNextHop",
            "not supported by tortie",
        ),
        ({"peerIp": "10.0.0.1", "asNumber": 1}, "spec.peerIp", "did you mean peerIP?"),
    ],
)
def test_bgp_peer_errors(spec: dict[str, Any], field: str, message: str) -> None:
    err = error(BGPPeer, doc("BGPPeer", spec))
    assert err.field == field, str(err)
    assert message in err.message, str(err)


def test_empty_peer_selectors_mean_unset() -> None:
    peer = BGPPeer.from_document(
        doc(
            "BGPPeer",
            {"peerIP": "10.0.0.1", "asNumber": 1, "nodeSelector": "", "peerSelector": " "},
        )
    )
    assert (peer.spec.node_selector, peer.spec.peer_selector) == (None, None)


# --------------------------------------------------------------------------------------------
# WorkloadEndpoint


def wep_doc(name: str = "node--1-k8s-web--0-eth0", **spec: Any) -> dict[str, Any]:
    base = {
        "orchestrator": "k8s",
        "node": "node-1",
        "pod": "web-0",
        "endpoint": "eth0",
        "containerID": "abc123",
        "interfaceName": "cali1234567890a",
        "mac": "EE:EE:EE:EE:EE:EE",
        "ipNetworks": ["10.244.1.5/32", "fd00::5"],
        "profiles": ["kns.default", "ksa.default.default"],
        "serviceAccountName": "default",
    }
    return {
        "apiVersion": V3,
        "kind": "WorkloadEndpoint",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
        "spec": {**base, **spec},
    }


def test_workload_endpoint_full() -> None:
    wep = WorkloadEndpoint.from_document(wep_doc())
    spec = wep.spec
    assert spec.ip_networks == ["10.244.1.5/32", "fd00::5/128"]
    assert spec.mac == "ee:ee:ee:ee:ee:ee"
    assert spec.networks == [
        ipaddress.ip_network("10.244.1.5/32"),
        ipaddress.ip_network("fd00::5/128"),
    ]
    assert spec.container_id == "abc123"
    assert wep.identity == ("WorkloadEndpoint", "default", "node--1-k8s-web--0-eth0")
    round_trips(wep)


def test_workload_endpoint_defaults() -> None:
    d = wep_doc()
    for key in (
        "orchestrator",
        "endpoint",
        "mac",
        "ipNetworks",
        "profiles",
        "serviceAccountName",
        "containerID",
    ):
        del d["spec"][key]
    del d["metadata"]["namespace"]
    wep = WorkloadEndpoint.from_document(d)
    assert wep.metadata.namespace == "default"
    assert (wep.spec.orchestrator, wep.spec.endpoint) == ("k8s", "eth0")
    assert (wep.spec.ip_networks, wep.spec.profiles, wep.spec.mac) == ([], [], None)
    assert wep.spec.workload is None


def test_workload_endpoint_other_orchestrators() -> None:
    cni = wep_doc("node--1-cni-abc123-eth0", orchestrator="cni")
    assert WorkloadEndpoint.from_document(cni).spec.identifier == ("containerID", "abc123")
    lib = wep_doc("node--1-libnetwork-libnetwork-eth0", orchestrator="libnetwork")
    assert WorkloadEndpoint.from_document(lib).spec.identifier[1] == "libnetwork"
    other = wep_doc("node--1-mesos-job--7-eth0", orchestrator="mesos", workload="job-7")
    assert WorkloadEndpoint.from_document(other).spec.identifier == ("workload", "job-7")


@pytest.mark.parametrize(
    ("d", "field", "message"),
    [
        (
            wep_doc("wrong-name"),
            "metadata.name",
            "Calico names this endpoint 'node--1-k8s-web--0-eth0'",
        ),
        (wep_doc(pod=None), "spec.pod", "required for orchestrator 'k8s'"),
        (
            wep_doc(interfaceName="cali1234567890abc"),
            "spec.interfaceName",
            "not a valid interface name",
        ),
        (wep_doc(mac="nope"), "spec.mac", "not a MAC address"),
        (
            wep_doc(ipNetworks=["10.244.1.5/32", "10.244.1.5/24"]),
            "spec.ipNetworks[1]",
            "host bits set",
        ),
        (wep_doc(ipNetworks=["x"]), "spec.ipNetworks[0]", "not a valid IP address"),
        (wep_doc(node="Node_1"), "spec.node", "not a valid node name"),
        (wep_doc(pod="-web"), "spec", "must not begin or end with '-'"),
        (wep_doc(ports=[]), "spec.ports", "not supported by tortie"),
        (wep_doc(containerId="x"), "spec.containerId", "did you mean containerID?"),
    ],
)
def test_workload_endpoint_errors(d: dict[str, Any], field: str, message: str) -> None:
    if d["spec"].get("pod", "") is None:
        del d["spec"]["pod"]
    err = error(WorkloadEndpoint, d)
    assert err.field == field, str(err)
    assert message in err.message, str(err)


def test_workload_endpoint_missing_interface_name() -> None:
    d = wep_doc()
    del d["spec"]["interfaceName"]
    err = error(WorkloadEndpoint, d)
    assert (err.field, err.message) == ("spec.interfaceName", "required field is missing")


@pytest.mark.parametrize(
    ("parts", "name"),
    [
        (("node1", "k8s", "pod", "eth0"), "node1-k8s-pod-eth0"),
        (("node-1", "k8s", "web-0", "eth0"), "node--1-k8s-web--0-eth0"),
        (("a.b-c", "cni", "x--y", "e-1"), "a.b--c-cni-x----y-e--1"),
    ],
)
def test_workload_endpoint_names(parts: tuple[str, str, str, str], name: str) -> None:
    assert workload_endpoint_name(*parts) == name
    assert parse_workload_endpoint_name(name) == parts


def test_workload_endpoint_name_errors() -> None:
    with pytest.raises(ModelError, match="pod must not begin or end with '-'"):
        workload_endpoint_name("n", "k8s", "web-", "eth0")
    with pytest.raises(ModelError, match="endpoint is empty"):
        workload_endpoint_name("n", "k8s", "web", "")
    for bad in ("a-b-c", "a-b-c-d-e", "a--b"):
        with pytest.raises(ModelError, match="not a workload endpoint name"):
            parse_workload_endpoint_name(bad)
