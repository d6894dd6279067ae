"""The conformance suite (datastore_conformance.py) on the memory and SQLite backends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from datastore_conformance import DatastoreConformance

from tortie.datastore.api import Datastore
from tortie.datastore.memory import MemoryDatastore
from tortie.datastore.sqlite import SqliteDatastore

pytestmark = pytest.mark.unit


class TestMemoryConformance(DatastoreConformance):
    @pytest.fixture
    def store(self) -> Iterator[Datastore]:
        s = MemoryDatastore()
        yield s
        s.close()

    @pytest.fixture
    def store_url(self) -> str:
        return "memory://"

    def test_fresh_store_is_at_revision_one(self, store: Datastore) -> None:
        assert store.revision() == 1


class TestSqliteConformance(DatastoreConformance):
    @pytest.fixture
    def store_url(self, tmp_path: Path) -> str:
        return f"sqlite://{tmp_path}/store.db"

    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[Datastore]:
        s = SqliteDatastore(tmp_path / "store.db", create=True)
        yield s
        s.close()

    def test_fresh_store_is_at_revision_one(self, store: Datastore) -> None:
        assert store.revision() == 1
