"""The multi-process IPAM test on etcd (the SQLite run is in tests/unit/ipam).

Several nodes x several processes assign and release at once through one private etcd, on a
pool small enough to run out: no address held twice, addresses inside their node's blocks
unless borrowed, releases exact, ``check`` clean afterwards, nothing left at the end.
"""

from __future__ import annotations

from typing import Any

import pytest

from tortie.ipam import loadgen

pytestmark = pytest.mark.interop


def test_concurrent_nodes_and_processes_on_etcd(start_etcd: Any) -> None:
    start_etcd.start()
    url = start_etcd.url
    outcome = loadgen.run_churn(
        url, nodes=["node-a", "node-b", "node-c"], workers_per_node=3, operations=120
    )
    assert outcome.violations == []
    assert outcome.exhausted > 0
    assert outcome.borrowed > 0
    assert loadgen.settle(url, outcome) == []
