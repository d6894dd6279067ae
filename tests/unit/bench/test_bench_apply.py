"""bench/apply.py: its inputs are what it says, its rows reach run.py and the report."""

from __future__ import annotations

import json

from benchmods import load

from tortie.model.loader import load_documents
from tortie.model.resources import IPPool, Node
from tortie.model.validation import MAX_RESOURCE_BYTES, check_pools

bench = load("apply")
run = load("run")
report = load("report")

ROWS = [
    {"scenario": "5,000 pools", "runs": 5, "median_s": 1.7, "min_s": 1.6, "max_s": 2.1,
     "target_s": 5.0, "met": True},
    {"scenario": "5,000 pools again (replace)", "runs": 5, "median_s": 2.0, "min_s": 1.9,
     "max_s": 2.2, "target_s": None, "met": None},
    {"scenario": "100k labels", "runs": 5, "median_s": 2.4, "min_s": 2.3, "max_s": 2.6,
     "target_s": 2.0, "met": False},
]  # fmt: skip


def test_inputs_are_valid_and_of_the_stated_size() -> None:
    pools = load_documents(bench.pools_yaml(300), "pools.yaml")
    assert len(pools) == 300 and all(isinstance(p, IPPool) for p in pools)
    check_pools([p for p in pools if isinstance(p, IPPool)], [])  # disjoint: apply succeeds
    (node,) = load_documents(bench.labels_yaml(1000), "labels.yaml")
    assert isinstance(node, Node) and len(node.metadata.labels) == 1000
    # 100k labels stay under the stored-resource limit (~13 bytes of JSON each).
    assert 100_000 * len(json.dumps({"k186a0": "v"})) < MAX_RESOURCE_BYTES


def test_table_marks_missed_targets() -> None:
    text = bench.table(ROWS)
    assert "<= 5.0 s" in text and "<= 2.0 s MISSED" in text


def test_run_parses_and_reports_apply() -> None:
    lines = "inputs: 1 and 2 bytes\n" + "\n".join(json.dumps(r) for r in ROWS) + "\n"
    rows = run.parse_apply(lines)
    assert rows == ROWS
    assert run.control_benches(smoke=True)["apply"] == ["bench/apply.py", "--runs", "1", "--json"]
    assert "--json" in run.control_benches(smoke=False)["apply"]
    part = {"command": "x", "ok": True, "seconds": 30, "rows": rows}
    text = report.render_control({"apply": part})
    assert "| 5,000 pools | 5 | 1.70 (1.60-2.10) | <= 5.0 s PASS |" in text
    assert "| 100k labels | 5 | 2.40 (2.30-2.60) | <= 2.0 s FAIL |" in text
    assert "| 5,000 pools again (replace) | 5 | 2.00 (1.90-2.20) |  |" in text
