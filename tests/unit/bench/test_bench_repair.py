"""bench/repair.py's result: parsed by bench/run.py, rendered by bench/report.py and by itself."""

from __future__ import annotations

import json

from benchmods import load

run = load("run")
report = load("report")
repair = load("repair")

RESULT = {
    "rounds": 3,
    "flap_s": 2.0,
    "idle_s": 10.0,
    "routes": 3,
    "flap_routes_ms": {"median": 8.4, "min": 7.5, "max": 9.3, "n": 3},
    "flap_default_ms": {"median": 10.9, "min": 10.3, "max": 11.5, "n": 3},
    "delete_ms": {"median": 11.9, "min": 11.7, "max": 12.2, "n": 3},
    "idle_cpu_pct_on": {"median": 0.246, "min": 0.226, "max": 0.266, "n": 3},
    "idle_cpu_pct_off": {"median": 0.249, "min": 0.233, "max": 0.264, "n": 3},
    "idle_ratio": {"median": 0.99, "min": 0.97, "max": 1.01, "n": 3},
    "off_wait_s": 5.0,
    "off_delete_back_s": None,
    "failures": [],
    "target_s": 1.0,
}


def test_run_parses_the_last_json_line() -> None:
    text = "repair, 3 rounds ...\n  uplink flap ...\n" + json.dumps(RESULT) + "\n"
    assert run.parse_repair(text) == RESULT
    assert "repair" in run.control_benches(smoke=True)
    assert "--json" in run.control_benches(smoke=False)["repair"]


def test_report_section() -> None:
    md = report.render_control({"repair": {"command": "x", "ok": True, "result": RESULT}})
    assert "### Repair after kernel changes" in md
    assert "| uplink flap: every agent route back | 8.4 (7.5-9.3) | <= 1 s: met |" in md
    assert "not back after 5.0 s" in md
    assert "ratio 0.99 (0.97-1.01)" in md


def test_a_slow_repair_misses_the_target() -> None:
    slow = {**RESULT, "delete_ms": {"median": 900.0, "min": 800.0, "max": 1500.0, "n": 3}}
    md = report.render_control({"repair": {"command": "x", "ok": True, "result": slow}})
    assert "<= 1 s: MISSED" in md
    assert "target: repaired within 1 s: MISSED" in repair.report(slow)
    assert "target: repaired within 1 s: met" in repair.report(RESULT)
