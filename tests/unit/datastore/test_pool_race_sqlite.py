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

pytestmark = pytest.mark.unit

ROUNDS = 10


def test_overlapping_applies_at_once_one_wins_every_round(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/race.db"
    store = open_datastore(url, create=True)  # created here: the racing applies only write
    store.close()
    outcomes = pool_race.race(url, tmp_path, fillers=150, rounds=ROUNDS)
    assert [o.problem for o in outcomes if o.problem] == []
