"""bench/cli.py and its hooks in bench/run.py and report.py (no processes are timed here)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from benchmods import load

cli = load("cli")
run = load("run")
report = load("report")

ROW = {
    "key": "get_sqlite",
    "label": "tortie get ippools (SQLite)",
    "backend": "sqlite",
    "runs": 15,
    "wall_ms": 181.0,
    "wall_min_ms": 170.2,
    "wall_max_ms": 260.9,
    "cpu_ms": 178.0,
    "target_ms": 150,
    "met": False,
    "command": "tortie --datastore sqlite:///$TMP/cli.db get ippools",
}


def test_cases_cover_the_issue_targets() -> None:
    cases = {c.key: c for c in cli.cases("sqlite:///x.db", "etcd://127.0.0.1:1")}
    assert cases["version"].target_s == 0.15 and cases["get_sqlite"].target_s == 0.15
    for key in ("assign_etcd", "release_etcd", "get_etcd"):
        assert cases[key].target_s == 0.4 and "etcd://127.0.0.1:1" in cases[key].argv
    assert cases["release_etcd"].argv[-1] == cases["assign_etcd"].argv[-1]  # the same handle


def test_children_get_bytecode_and_no_inherited_datastore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.setenv("TORTIE_DATASTORE", "sqlite:///elsewhere.db")
    env = cli.child_env(tmp_path / "pyc")
    assert "PYTHONDONTWRITEBYTECODE" not in env and "TORTIE_DATASTORE" not in env
    assert env["PYTHONPYCACHEPREFIX"] == str(tmp_path / "pyc")
    assert cli.tortie_command()[0] == sys.executable


def test_render_and_parse_round_trip() -> None:
    text = cli.render([ROW], ["python", "tortie"]) + "\n" + json.dumps(ROW) + "\n"
    assert "181 (170-261)" in text and "<= 150 ms MISSED" in text
    assert run.parse_cli(text) == [ROW]


def test_run_and_report_hooks() -> None:
    assert run.control_benches(smoke=True)["cli"][:3] == ["bench/cli.py", "--rounds", "2"]
    assert "--json" in run.control_benches(smoke=False)["cli"]
    text = report.render_control(
        {"cli": {"command": "c", "ok": True, "seconds": 30, "rows": [ROW, {**ROW, "met": True}]}}
    )
    assert "### CLI commands as whole processes" in text
    assert "| `tortie get ippools (SQLite)` | 181 (170-261) | 178 | <= 150 ms: FAIL |" in text
    assert "<= 150 ms: PASS |" in text
