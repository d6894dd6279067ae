"""Stored resources read as documents (``tortie get``): what ResourceStore reads, same errors.

The fast path (no pydantic) is taken for what tortie writes; everything else goes through the
models, so a corrupt entry is still reported with its key, and a valid entry that tortie did
not write (etcdctl, sqlite3, an older tortie) still shows as the model reads it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tortie.datastore.api import Datastore, KeyValue, Put
from tortie.datastore.documents import (
    CorruptResourceError,
    ResourceNotFoundError,
    document_of,
    get_document,
    list_documents,
    require_document,
)
from tortie.datastore.memory import MemoryDatastore
from tortie.datastore.resources import ResourceStore
from tortie.datastore.sqlite import SqliteDatastore
from tortie.model.kinds import KIND_CLASSES
from tortie.model.resources import Resource

pytestmark = pytest.mark.unit

V3 = "projectcalico.org/v3"


def res(kind: str, name: str, spec: dict[str, Any] | None, **meta: Any) -> Resource:
    doc: dict[str, Any] = {"apiVersion": V3, "kind": kind, "metadata": {"name": name, **meta}}
    if spec is not None:
        doc["spec"] = spec
    return KIND_CLASSES[kind].from_document(doc)


RESOURCES = [
    res(
        "IPPool", "a", {"cidr": "10.244.0.0/16", "ipipMode": "Always"}, labels={"z": "1", "a": "2"}
    ),
    res("IPPool", "b", {"cidr": "fd00:10::/48", "vxlanMode": "Always"}),
    res("IPAMConfiguration", "default", {"strictAffinity": True}),
    res("Node", "node1", {"bgp": {"ipv4Address": "192.168.49.2/24", "asNumber": "1.10"}}),
    res("BGPConfiguration", "default", None),
    res("BGPPeer", "tor", {"peerIP": "192.168.49.1", "asNumber": 64513, "password": "s3cret"}),
    res(
        "WorkloadEndpoint",
        "node1-k8s-web--0-eth0",
        {"node": "node1", "pod": "web-0", "interfaceName": "cali1", "ipNetworks": ["10.0.0.1"]},
        namespace="ns1",
    ),
]


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Datastore]:
    ds: Datastore
    ds = (
        MemoryDatastore()
        if request.param == "memory"
        else SqliteDatastore(tmp_path / "t.db", create=True)
    )
    try:
        yield ds
    finally:
        ds.close()


def test_documents_are_what_the_resource_store_reads(store: Datastore) -> None:
    rs = ResourceStore(store)
    rs.apply(RESOURCES)
    for kind, cls in KIND_CLASSES.items():
        expected = [r.to_document() for r in rs.list(cls)]
        got = list_documents(store, kind)
        assert json.dumps(got) == json.dumps(expected)  # the same, in the same key order
    wep = RESOURCES[-1]
    assert list_documents(store, "WorkloadEndpoint", "ns1") == [
        rs.require(type(wep), wep.metadata.name, "ns1").to_document()
    ]
    assert list_documents(store, "WorkloadEndpoint", "other") == []
    assert (
        get_document(store, "IPPool", "a") == rs.require(KIND_CLASSES["IPPool"], "a").to_document()
    )
    assert get_document(store, "IPPool", "zzz") is None
    with pytest.raises(ResourceNotFoundError, match="IPPool 'zzz' does not exist"):
        require_document(store, "IPPool", "zzz")


def _put(store: Datastore, key: str, value: str) -> None:
    assert store.txn([], [Put(key, value)]).succeeded


def test_a_valid_entry_tortie_did_not_write_is_shown_as_the_model_reads_it(
    store: Datastore,
) -> None:
    # etcdctl put / sqlite3: defaults left out, an asdot AS number, no uid.
    _put(store, "/tortie/v3/ippools/hand", json.dumps(
        {"apiVersion": V3, "kind": "IPPool", "metadata": {"name": "hand"},
         "spec": {"cidr": "10.9.0.0/16"}}
    ))  # fmt: skip
    _put(store, "/tortie/v3/bgpconfigurations/default", json.dumps(
        {"apiVersion": V3, "kind": "BGPConfiguration", "metadata": {"name": "default"},
         "spec": {"asNumber": "1.10"}}
    ))  # fmt: skip
    rs = ResourceStore(store)
    for kind, name in (("IPPool", "hand"), ("BGPConfiguration", "default")):
        expected = rs.require(KIND_CLASSES[kind], name).to_document()
        assert json.dumps(require_document(store, kind, name)) == json.dumps(expected)
    assert require_document(store, "IPPool", "hand")["spec"]["blockSize"] == 26


CORRUPT = [
    pytest.param("{not json", "Expecting property name", id="not-json"),
    pytest.param("", "Expecting value", id="empty"),
    pytest.param("[1, 2]", "expected a mapping", id="a-list"),
    pytest.param("[" * 100_000 + "]" * 100_000, "JSON nested too deep to read", id="deep"),
    pytest.param(
        '{"apiVersion":"projectcalico.org/v3","kind":"IPPool","metadata":{"name":"p"},'
        '"spec":{"cidr":"10.9.0.0/16","blockSize":99}}',
        "spec.blockSize: 99 is out of range",
        id="out-of-range",
    ),
    pytest.param(
        '{"apiVersion":"projectcalico.org/v3","kind":"IPPool","metadata":{"name":"p"},'
        '"spec":{"cidr":"10.9.0.0/16","fromTheFuture":true}}',
        "spec.fromTheFuture: unknown field",
        id="newer-tortie",
    ),
    pytest.param(
        '{"apiVersion":"projectcalico.org/v3","kind":"Node","metadata":{"name":"p"},"spec":{}}',
        "expected IPPool, got 'Node'",
        id="other-kind",
    ),
]


@pytest.mark.parametrize(("value", "detail"), CORRUPT)
def test_a_corrupt_entry_is_reported_with_its_key(
    store: Datastore, value: str, detail: str
) -> None:
    rs = ResourceStore(store)
    rs.apply([RESOURCES[0]])
    key = "/tortie/v3/ippools/p"
    _put(store, key, value)
    with pytest.raises(CorruptResourceError) as listed:
        list_documents(store, "IPPool")
    with pytest.raises(CorruptResourceError) as got:
        require_document(store, "IPPool", "p")
    with pytest.raises(CorruptResourceError) as model:
        rs.list(KIND_CLASSES["IPPool"])
    for err in (listed.value, got.value):
        assert err.key == key
        assert str(err) == str(model.value)  # the model's words, with the key
        assert str(err).startswith(f"{key}: stored resource is unreadable (")
        assert detail in str(err)


def test_document_of_names_the_key_it_was_given() -> None:
    kv = KeyValue("/tortie/v3/ippools/x", "null", 3, 3)
    with pytest.raises(CorruptResourceError, match=r"^/tortie/v3/ippools/x: stored resource"):
        document_of("IPPool", kv)
