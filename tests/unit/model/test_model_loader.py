"""Loading and dumping manifests: YAML streams, JSON, lists, errors, real Calico examples."""

from __future__ import annotations

import json

import pytest
import yaml

from tortie.model.errors import ValidationError
from tortie.model.loader import dump_documents, load_documents, parse_document
from tortie.model.resources import (
    BGPConfiguration,
    BGPPeer,
    IPAMConfiguration,
    IPPool,
    Node,
    WorkloadEndpoint,
)

pytestmark = pytest.mark.unit

# Manifests in the exact form Calico's documentation shows them.
DEFAULT_IPV4_POOL = """\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: default-ipv4-ippool
spec:
  cidr: 192.168.0.0/16
  ipipMode: Always
  natOutgoing: true
  nodeSelector: all()
"""

DOCS_POOL = """\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: my.ippool-1
spec:
  cidr: 10.1.0.0/16
  ipipMode: CrossSubnet
  natOutgoing: true
  disabled: false
  nodeSelector: all()
  allowedUses:
    - Workload
    - Tunnel
"""

BGP_PEER = """\
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata:
  name: some.name
spec:
  node: rack1-host1
  peerIP: 192.168.1.1
  asNumber: 63400
"""

BGP_CONFIG = """\
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata:
  name: default
spec:
  logSeverityScreen: Info
  nodeToNodeMeshEnabled: false
  asNumber: 63400
"""

IPAM_CONFIG = """\
apiVersion: projectcalico.org/v3
kind: IPAMConfiguration
metadata:
  name: default
spec:
  strictAffinity: false
  maxBlocksPerHost: 4
"""

NODE = """\
apiVersion: projectcalico.org/v3
kind: Node
metadata:
  name: node-hostname
spec:
  bgp:
    asNumber: 64512
    ipv4Address: 10.244.0.1/24
    ipv6Address: 2001:db8:85a3::8a2e:370:7334/120
    ipv4IPIPTunnelAddr: 192.168.0.1
"""

RR_PEER = """\
kind: BGPPeer
apiVersion: projectcalico.org/v3
metadata:
  name: peer-with-route-reflectors
spec:
  nodeSelector: all()
  peerSelector: route-reflector == 'true'
"""

WEP = """\
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata:
  name: node1-k8s-my--nginx--b1337a-eth0
  namespace: default
  labels:
    app: frontend
    projectcalico.org/namespace: default
    projectcalico.org/orchestrator: k8s
spec:
  node: node1
  orchestrator: k8s
  endpoint: eth0
  containerID: 1337495556942031415926535
  pod: my-nginx-b1337a
  endpoint: eth0
  interfaceName: cali0ef24ba
  mac: ca:fe:1d:52:bb:e9
  ipNetworks:
  - 192.168.0.0/32
  profiles:
  - profile1
"""


@pytest.mark.parametrize(
    ("text", "cls"),
    [
        (DEFAULT_IPV4_POOL, IPPool),
        (DOCS_POOL, IPPool),
        (BGP_PEER, BGPPeer),
        (BGP_CONFIG, BGPConfiguration),
        (IPAM_CONFIG, IPAMConfiguration),
        (NODE, Node),
        (RR_PEER, BGPPeer),
    ],
)
def test_calico_manifests_parse_and_round_trip(text: str, cls: type) -> None:
    (res,) = load_documents(text, "calico.yaml")
    assert isinstance(res, cls)
    original = yaml.safe_load(text)
    produced = res.to_document()
    # Everything the user wrote comes back unchanged; only defaults are added.
    for section in ("metadata", "spec"):
        for key, value in original[section].items():
            assert produced[section][key] == value, key
    for fmt in ("yaml", "json"):
        assert load_documents(dump_documents([res], fmt), "again") == [res]  # type: ignore[arg-type]


def test_default_pool_values() -> None:
    (pool,) = load_documents(DEFAULT_IPV4_POOL, "p.yaml")
    assert isinstance(pool, IPPool)
    assert pool.spec.ipip_mode == "Always"
    assert pool.spec.nat_outgoing is True
    assert pool.spec.block_size == 26
    assert pool.to_document() == {
        "apiVersion": "projectcalico.org/v3",
        "kind": "IPPool",
        "metadata": {"name": "default-ipv4-ippool"},
        "spec": {
            "cidr": "192.168.0.0/16",
            "blockSize": 26,
            "ipipMode": "Always",
            "vxlanMode": "Never",
            "natOutgoing": True,
            "disabled": False,
            "nodeSelector": "all()",
            "allowedUses": ["Workload", "Tunnel"],
        },
    }


def test_bgp_config_mesh_disabled() -> None:
    (cfg,) = load_documents(BGP_CONFIG, "b.yaml")
    assert isinstance(cfg, BGPConfiguration)
    assert cfg.spec.node_to_node_mesh_enabled is False
    assert cfg.spec.as_number == 63400


def test_workload_endpoint_from_docs_with_duplicate_key_is_rejected() -> None:
    # Calico's own WorkloadEndpoint example repeats "endpoint:"; tortie refuses duplicates.
    with pytest.raises(ValidationError) as info:
        load_documents(WEP, "wep.yaml")
    assert "duplicate key 'endpoint'" in info.value.message
    assert info.value.line == 16


def test_workload_endpoint_manifest() -> None:
    text = WEP.replace("  endpoint: eth0\n  interfaceName", "  interfaceName").replace(
        "containerID: 1337495556942031415926535", "containerID: '1337495556942031415926535'"
    )
    (wep,) = load_documents(text, "wep.yaml")
    assert isinstance(wep, WorkloadEndpoint)
    assert wep.spec.pod == "my-nginx-b1337a"
    assert load_documents(dump_documents([wep]), "x") == [wep]


# --------------------------------------------------------------------------------------------
# Streams and list shapes


def test_multi_document_stream_with_empty_documents() -> None:
    text = "---\n" + DEFAULT_IPV4_POOL + "---\n---\n# only a comment\n---\n" + BGP_PEER + "---\n"
    resources = load_documents(text, "all.yaml")
    assert [r.KIND for r in resources] == ["IPPool", "BGPPeer"]


def test_empty_input() -> None:
    assert load_documents("", "empty.yaml") == []
    assert load_documents("---\n---\n", "empty.yaml") == []


def test_json_document_and_json_list() -> None:
    (pool,) = load_documents(DEFAULT_IPV4_POOL, "p")
    text = json.dumps(pool.to_document(), indent="\t")  # tabs: not valid YAML indentation
    assert load_documents(text, "p.json") == [pool]
    many = json.dumps([pool.to_document(), pool.with_metadata(name="b").to_document()])
    assert [r.name for r in load_documents(many, "p.json")] == ["default-ipv4-ippool", "b"]


def test_yaml_sequence_of_resources() -> None:
    seq = yaml.safe_dump([yaml.safe_load(DEFAULT_IPV4_POOL), yaml.safe_load(BGP_PEER)])
    assert [r.KIND for r in load_documents(seq, "s.yaml")] == ["IPPool", "BGPPeer"]


def test_calicoctl_typed_list() -> None:
    text = """\
apiVersion: projectcalico.org/v3
kind: IPPoolList
metadata:
  resourceVersion: "1234"
items:
- apiVersion: projectcalico.org/v3
  kind: IPPool
  metadata:
    name: a
  spec:
    cidr: 10.1.0.0/16
- metadata:
    name: b
  spec:
    cidr: 10.2.0.0/16
"""
    pools = load_documents(text, "l.yaml")
    assert [p.name for p in pools] == ["a", "b"]
    assert all(isinstance(p, IPPool) for p in pools)


def test_generic_list() -> None:
    text = yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "List",
            "items": [yaml.safe_load(BGP_PEER), yaml.safe_load(IPAM_CONFIG)],
        }
    )
    assert [r.KIND for r in load_documents(text, "l.yaml")] == ["BGPPeer", "IPAMConfiguration"]


def test_list_errors() -> None:
    base = {"apiVersion": "projectcalico.org/v3", "kind": "IPPoolList"}
    cases = [
        ({**base, "items": 3}, "items", "expected a list of resources, got 3"),
        ({**base, "items": [], "extra": 1}, "extra", "unknown field"),
        ({**base, "apiVersion": "v1", "items": []}, "apiVersion", "'v1' is not supported"),
        (
            {**base, "items": [yaml.safe_load(BGP_PEER)]},
            "kind",
            "an item of a IPPoolList must be a IPPool, got 'BGPPeer'",
        ),
    ]
    for document, field, message in cases:
        with pytest.raises(ValidationError) as info:
            load_documents(yaml.safe_dump(document), "l.yaml")
        assert info.value.field == field
        assert message in info.value.message
    with pytest.raises(ValidationError) as info:
        load_documents(
            yaml.safe_dump(
                {**base, "items": [{"metadata": {"name": "a"}, "spec": {"cidr": "1.2.3.4/8"}}]}
            ),
            "l.yaml",
        )
    assert str(info.value).startswith("l.yaml: document 1, item 1 (IPPool a): spec.cidr: ")


# --------------------------------------------------------------------------------------------
# Errors name the source, document and field


def test_error_names_document_and_resource() -> None:
    text = (
        DEFAULT_IPV4_POOL
        + "---\n"
        + DEFAULT_IPV4_POOL.replace("default-ipv4-ippool", "pool-b").replace(
            "ipipMode: Always", "blockSize: 33"
        )
    )
    with pytest.raises(ValidationError) as info:
        load_documents(text, "pools.yaml")
    assert str(info.value) == (
        "pools.yaml: document 2 (IPPool pool-b): spec.blockSize: "
        "33 is out of range: IPv4 block sizes are 20..32"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "- 3\n",
            "<stdin>: document 1, item 1: expected a mapping with apiVersion, kind, metadata "
            "and spec, got 3",
        ),
        (
            "just text\n",
            "<stdin>: document 1: expected a mapping with apiVersion, kind, metadata and spec, "
            "got 'just text'",
        ),
        (
            "apiVersion: projectcalico.org/v3\nmetadata: {name: a}\n",
            "<stdin>: document 1: kind: required field is missing",
        ),
        (
            "apiVersion: projectcalico.org/v3\nkind: IPPol\nmetadata: {name: a}\n",
            "<stdin>: document 1: kind: 'IPPol' is not a known kind (known: BGPConfiguration, "
            "BGPPeer, IPAMConfiguration, IPPool, Node, WorkloadEndpoint); did you mean IPPool?",
        ),
        (
            "apiVersion: projectcalico.org/v3\nkind: ippools\nmetadata: {name: a}\n",
            "did you mean IPPool?",
        ),
        ("apiVersion: projectcalico.org/v3\nkind: 7\n", "kind: 7 is not a known kind"),
        (
            "kind: IPPool\nmetadata: {name: a}\nspec: {cidr: 10.0.0.0/8}\n",
            "<stdin>: document 1 (IPPool a): apiVersion: required field is missing "
            "(use projectcalico.org/v3)",
        ),
        (
            "apiVersion: v1\nkind: IPPool\nmetadata: {name: a}\nspec: {cidr: 10.0.0.0/8}\n",
            "<stdin>: document 1 (IPPool a): apiVersion: 'v1' is not supported",
        ),
        (
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: a}\n"
            "spec: {cidr: 10.0.0.0/8, ipipmode: Always}\n",
            "<stdin>: document 1 (IPPool a): spec.ipipmode: unknown field (did you mean ipipMode?)",
        ),
    ],
)
def test_document_errors(text: str, expected: str) -> None:
    with pytest.raises(ValidationError) as info:
        load_documents(text, "<stdin>")
    assert expected in str(info.value)


def test_malformed_yaml_names_the_line() -> None:
    text = (
        DEFAULT_IPV4_POOL + "---\napiVersion: projectcalico.org/v3\nkind: IPPool\n  metadata: x\n"
    )
    with pytest.raises(ValidationError) as info:
        load_documents(text, "bad.yaml")
    err = info.value
    assert (err.source, err.document, err.line, err.column) == ("bad.yaml", 2, 13, 11)
    # libyaml (the loader's parser when PyYAML has it) words it differently from PyYAML's
    # Python parser; the place is the same.
    problem = "in this context" if yaml.__with_libyaml__ else "here"
    assert str(err) == (
        "bad.yaml: document 2, line 13, column 11: "
        f"invalid YAML: mapping values are not allowed {problem}"
    )


def test_malformed_json_names_the_line() -> None:
    # Neither JSON nor YAML: the JSON parser's complaint is the one shown.
    with pytest.raises(ValidationError) as info:
        load_documents(
            '{\n  "apiVersion": "projectcalico.org/v3",\n  "kind": "IPPool"\n', "bad.json"
        )
    assert (info.value.line, info.value.column) == (4, 1)
    assert str(info.value) == "bad.json: line 4, column 1: invalid JSON: Expecting ',' delimiter"


def test_json_like_yaml_flow_is_read_as_yaml() -> None:
    # YAML is a superset of JSON and calicoctl reads both with a YAML parser.
    text = (
        "{apiVersion: projectcalico.org/v3, kind: IPPool, metadata: {name: a},"
        " spec: {cidr: 10.0.0.0/8,}}"
    )
    (pool,) = load_documents(text, "flow.yaml")
    assert isinstance(pool, IPPool)


def test_duplicate_keys_are_errors() -> None:
    with pytest.raises(ValidationError, match="duplicate key 'cidr'"):
        load_documents(
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: a}\n"
            "spec:\n  cidr: 10.0.0.0/16\n  cidr: 10.1.0.0/16\n",
            "d.yaml",
        )
    with pytest.raises(ValidationError, match="invalid JSON: duplicate key 'kind'"):
        load_documents('{"kind": "IPPool", "kind": "Node"}', "d.json")


def test_yaml_merge_keys_still_work() -> None:
    text = """\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: a}
spec:
  <<: &common {cidr: 10.0.0.0/16, natOutgoing: true}
  natOutgoing: false
"""
    (pool,) = load_documents(text, "m.yaml")
    assert isinstance(pool, IPPool)
    assert pool.spec.nat_outgoing is False


def test_yaml_is_read_like_go_yaml() -> None:
    # Timestamps stay text; base-60 numbers are not numbers; octal/hex ints still are.
    text = """\
apiVersion: projectcalico.org/v3
kind: Node
metadata:
  name: n
  creationTimestamp: 2024-01-02T03:04:05Z
  labels: {time: "12.30"}
spec:
  vxlanTunnelMACAddr: 12:34:56:10:20:30
  bgp: {asNumber: 0x10}
"""
    (node,) = load_documents(text, "n.yaml")
    assert isinstance(node, Node)
    assert node.metadata.creation_timestamp == "2024-01-02T03:04:05Z"
    assert node.spec.vxlan_tunnel_mac_addr == "12:34:56:10:20:30"
    assert node.spec.bgp is not None and node.spec.bgp.as_number == 16


def test_yaml_booleans_in_labels_explain_quoting() -> None:
    text = (
        "apiVersion: projectcalico.org/v3\nkind: Node\nmetadata:\n  name: n\n  labels: {rr: yes}\n"
    )
    with pytest.raises(ValidationError) as info:
        load_documents(text, "n.yaml")
    assert info.value.field == "metadata.labels.rr"
    assert info.value.message == "expected a string, got true; quote it if it is meant as text"


def test_parse_document_directly() -> None:
    res = parse_document(yaml.safe_load(BGP_PEER))
    assert isinstance(res, BGPPeer)
    with pytest.raises(ValidationError) as info:
        parse_document(
            {
                "kind": "BGPPeer",
                "apiVersion": "projectcalico.org/v3",
                "metadata": {"name": "a"},
                "spec": {},
            },
            source="s",
            document=4,
        )
    assert str(info.value).startswith("s: document 4 (BGPPeer a): spec: ")


# --------------------------------------------------------------------------------------------
# Dumping


def test_dump_single_and_lists() -> None:
    (pool,) = load_documents(DEFAULT_IPV4_POOL, "p")
    (peer,) = load_documents(BGP_PEER, "p")
    single = yaml.safe_load(dump_documents([pool]))
    assert single["kind"] == "IPPool"
    assert list(single) == ["apiVersion", "kind", "metadata", "spec"]

    typed = yaml.safe_load(dump_documents([pool, pool.with_metadata(name="b")]))
    assert (typed["apiVersion"], typed["kind"], len(typed["items"])) == (
        "projectcalico.org/v3",
        "IPPoolList",
        2,
    )
    mixed = json.loads(dump_documents([pool, peer], "json"))
    assert mixed["kind"] == "List"

    forced = yaml.safe_load(dump_documents([pool], single=False))
    assert forced["kind"] == "IPPoolList"
    empty = yaml.safe_load(dump_documents([], "yaml", single=False, kind="ippools"))
    assert empty == {"apiVersion": "projectcalico.org/v3", "kind": "IPPoolList", "items": []}
    assert yaml.safe_load(dump_documents([]))["kind"] == "List"
    with pytest.raises(ValueError, match="exactly one"):
        dump_documents([pool, peer], single=True)
    with pytest.raises(ValueError, match="unknown format"):
        dump_documents([pool], "xml")  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_dump_round_trips_everything(fmt: str) -> None:
    text = "---\n".join(
        [DEFAULT_IPV4_POOL, DOCS_POOL, BGP_PEER, BGP_CONFIG, IPAM_CONFIG, NODE, RR_PEER]
    )
    resources = load_documents(text, "all.yaml")
    assert load_documents(dump_documents(resources, fmt), "dump") == resources  # type: ignore[arg-type]
    for res in resources:
        assert load_documents(dump_documents([res], fmt), "one") == [res]  # type: ignore[arg-type]


def test_dump_quotes_strings_that_yaml_would_misread() -> None:
    (node,) = load_documents(
        "apiVersion: projectcalico.org/v3\nkind: Node\nmetadata:\n  name: n\n"
        "  labels: {a: 'yes', b: 'true', c: '123', d: '1.5', e: 'null'}\n",
        "n.yaml",
    )
    text = dump_documents([node])
    assert load_documents(text, "again") == [node]
    assert yaml.safe_load(text)["metadata"]["labels"] == {
        "a": "yes",
        "b": "true",
        "c": "123",
        "d": "1.5",
        "e": "null",
    }
