"""The conformance suite (tests/unit/datastore/datastore_conformance.py) on a real etcd."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tortie.datastore.api import Datastore, Delete
from tortie.datastore.etcd import EtcdDatastore
from tortie.datastore.factory import open_datastore

# The suite lives with the unit tests (one suite, three backends).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "datastore"))
from datastore_conformance import DatastoreConformance

pytestmark = pytest.mark.interop


def wipe(store: Datastore) -> None:
    """Delete every key (in chunks: etcd allows 128 ops per transaction by default)."""
    keys = [kv.key for kv in store.list("").items]
    for i in range(0, len(keys), 100):
        store.txn([], [Delete(k) for k in keys[i : i + 100]])


class TestEtcdConformance(DatastoreConformance):
    @pytest.fixture
    def store_url(self, etcd_url: str) -> str:
        return etcd_url

    @pytest.fixture
    def store(self, etcd_url: str) -> Iterator[Datastore]:
        s = open_datastore(etcd_url)
        assert isinstance(s, EtcdDatastore)
        wipe(s)
        yield s
        s.close()
