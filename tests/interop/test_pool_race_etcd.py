"""Overlapping IPPools applied at once on a real etcd: exactly one wins, every round, and a
pool set larger than one transaction can still grow (issue 17, item 3).

The same race as tests/unit/datastore/test_pool_race_sqlite.py (tests/pool_race.py), with
120 pools of its own per file: an apply on etcd is one transaction of at most 128 ops, so
121 pools and the guard fit. Before the guard, an apply compared the revision of every
stored pool, so on etcd no pool could be added once about 128 existed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import pool_race
from conftest import EtcdProcess
from tortie.ctl.main import main
from tortie.datastore.factory import open_datastore
from tortie.datastore.resources import POOL_GUARD_KEY, ResourceStore
from tortie.model.resources import IPPool

pytestmark = pytest.mark.interop

ROUNDS = 10


@pytest.fixture
def etcd(start_etcd: EtcdProcess) -> str:
    start_etcd.start()
    return start_etcd.url


def test_overlapping_applies_at_once_one_wins_every_round(etcd: str, tmp_path: Path) -> None:
    outcomes = pool_race.race(etcd, tmp_path, fillers=120, rounds=ROUNDS)
    assert [o.problem for o in outcomes if o.problem] == []


def pools(first: int, count: int) -> str:
    return "---\n".join(
        f"apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: p{n}\n"
        f"spec:\n  cidr: 10.{100 + n // 256}.{n % 256}.0/24\n"
        for n in range(first, first + count)
    )


def test_more_pools_than_one_transaction_holds(
    etcd: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for batch in range(3):  # 300 pools in three applies of 100
        path = tmp_path / f"batch-{batch}.yaml"
        path.write_text(pools(100 * batch, 100))
        assert main(["--datastore", etcd, "apply", "-f", str(path)]) == 0, capsys.readouterr()
    capsys.readouterr()
    store = open_datastore(etcd)
    try:
        assert len(ResourceStore(store).list(IPPool)) == 300
        before = store.get(POOL_GUARD_KEY)
        assert before is not None
        assert main(["--datastore", etcd, "delete", "ippool", "p7"]) == 0
        after = store.get(POOL_GUARD_KEY)
        assert after is not None and after.mod_revision > before.mod_revision
    finally:
        store.close()
    overlap = tmp_path / "overlap.yaml"
    overlap.write_text(pools(0, 1).replace("name: p0", "name: wide").replace("/24", "/16"))
    assert main(["--datastore", etcd, "apply", "-f", str(overlap)]) == 1
    assert "overlaps IPPool" in capsys.readouterr().err
