"""Overlapping IPPools applied at once on SQLite: exactly one wins, every round (issue 17/3).

Two processes run ``tortie apply`` together, released by a barrier, each with 150 pools of
its own and one contested pool (10.50.0.0/16 against 10.50.1.0/24): before the pool guard,
both were stored in most rounds. See tests/pool_race.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import pool_race
from tortie.datastore.factory import open_datastore
from tortie.datastore.resources import ResourceStore
from tortie.model.resources import BGPConfiguration, IPPool

pytestmark = pytest.mark.unit

ROUNDS = 10


def _prepare(url: str) -> None:
    store = open_datastore(url)
    try:
        ResourceStore(store).apply([BGPConfiguration.from_document(_BGP)])
    finally:
        store.close()


_BGP = {
    "apiVersion": "projectcalico.org/v3",
    "kind": "BGPConfiguration",
    "metadata": {"name": "default"},
}


def _pools(url: str) -> list[str]:
    store = open_datastore(url)
    try:
        return [p.name for p in ResourceStore(store).list(IPPool)]
    finally:
        store.close()


def test_overlapping_applies_at_once_one_wins_every_round(tmp_path: Path) -> None:
    urls = [f"sqlite:///{tmp_path}/round-{n}.db" for n in range(ROUNDS)]
    for url in urls:
        _prepare(url)
    outcomes = pool_race.race(urls, tmp_path, fillers=150, stored_pools=_pools)
    assert [o.problem for o in outcomes if o.problem] == []
