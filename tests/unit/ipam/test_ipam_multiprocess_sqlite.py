"""Several nodes x several processes assigning and releasing at once on one SQLite file.

Each process churns (assign 1-2 addresses per pod handle, release by handle or by address)
on a pool small enough to run out, so exhaustion and borrowing both happen. Then: no address
held twice, every address in its node's blocks unless borrowed (and a node only borrows at
its block limit), each release returned exactly what was assigned, ``check`` clean with the
pods' endpoints written, and nothing left after releasing everything.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tortie.ipam import loadgen

pytestmark = pytest.mark.unit


def test_concurrent_nodes_and_processes_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ipam.db"
    outcome = loadgen.run_churn(
        url, nodes=["node-a", "node-b", "node-c"], workers_per_node=3, operations=120
    )
    assert outcome.violations == []
    assert outcome.exhausted > 0, "the pool never ran out: the test is too gentle"
    assert outcome.borrowed > 0, "no process borrowed: the test is too gentle"
    assert sum(r.released for r in outcome.results) > 0
    assert loadgen.settle(url, outcome) == []
