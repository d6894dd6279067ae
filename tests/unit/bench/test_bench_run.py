"""bench/run.py: parsing the other benches' output, settings, and what counts as broken."""

from __future__ import annotations

import pytest
from benchmods import load

run = load("run")

ROUTES = (
    """\
scenario                         runs  median ms    min ms    max ms  writes  target
cold 1,000 routes                   5       49.6      22.1      64.6    1000{pad}
cold 10,000 routes                  5      394.1     305.2     594.8   10000  <= 3 s ok
one change among 10,000             5        0.3       0.3       0.3       1{pad}
no-op resync of 10,000              5      361.6     195.2     462.4       0  <= 1 s ok
"""
).format(pad="  ")  # the real output has trailing blanks where there is no target

IPAM = """\
# tortie IPAM bench: 500 assignments per process, 2 CPUs
| backend | processes | layout | assignments/s |
|---|---|---|---|
| sqlite | 1 | one node | 453 |
| sqlite | 8 | 8 nodes | 323 |
| etcd | 8 | one node | 66 |
"""

CNI = """\
tortie CNI plugin + agent CNI server, 100 pods sequential, 5 rounds of 10 concurrent ADDs (2 CPUs)
  VERSION (process floor)  p50   92.8 ms
  ADD   p50  118.8 ms   p99  382.6 ms   max  656.1 ms
  DEL   p50   56.5 ms   p99  118.6 ms   max  132.4 ms
  10 concurrent ADDs: 50/50 succeeded, 20.3 pods/s (median of 5 rounds; min 16.4)
targets: MISSED: ADD p50 118.8 ms > 100 ms; ADD p99 382.6 ms > 250 ms
"""

BGP = """\
{"nodes": 3, "topology": "mesh", "start_to_converged_s": 2.23, "samples": 4}
some log line
{"level": "agent", "nodes": 3, "topology": "rr", "lab_up_s": 9.0}
"""


def test_parse_routes() -> None:
    rows = run.parse_routes(ROUTES)
    assert [r["scenario"] for r in rows] == [
        "cold 1,000 routes",
        "cold 10,000 routes",
        "one change among 10,000",
        "no-op resync of 10,000",
    ]
    assert rows[1] == {
        "scenario": "cold 10,000 routes",
        "runs": 5,
        "median_ms": 394.1,
        "min_ms": 305.2,
        "max_ms": 594.8,
        "writes": 10000,
        "target": "<= 3 s ok",
    }
    with pytest.raises(ValueError):
        run.parse_routes("Traceback (most recent call last):\n")


def test_parse_and_merge_ipam() -> None:
    first = run.parse_ipam(IPAM)
    assert first[0] == ("sqlite", 1, "one node", 453.0)
    second = run.parse_ipam(IPAM.replace("| 453 |", "| 500 |"))
    merged = run.merge_ipam([first, second])
    assert merged[0] == {
        "backend": "sqlite",
        "processes": 1,
        "layout": "one node",
        "rates": [453.0, 500.0],
    }
    assert len(merged) == 3
    with pytest.raises(ValueError):
        run.parse_ipam("| backend | processes | layout | assignments/s |\n")


def test_parse_cni() -> None:
    got = run.parse_cni(CNI)
    assert got["pods"] == 100 and got["rounds"] == 5
    assert (got["add_p50_ms"], got["add_p99_ms"], got["add_max_ms"]) == (118.8, 382.6, 656.1)
    assert (got["del_p50_ms"], got["del_p99_ms"]) == (56.5, 118.6)
    assert got["concurrent_ok"] == "50/50"
    assert (got["concurrent_pods_s"], got["concurrent_pods_s_min"]) == (20.3, 16.4)
    assert got["version_p50_ms"] == 92.8
    assert got["targets"].startswith("MISSED")
    with pytest.raises(ValueError, match=r"lacks: .*del"):
        run.parse_cni(CNI.replace("DEL", "XXX"))


def test_parse_bgp_keeps_json_lines() -> None:
    rows = run.parse_bgp(BGP)
    assert [r["nodes"] for r in rows] == [3, 3]
    assert rows[1]["level"] == "agent"
    with pytest.raises(ValueError):
        run.parse_bgp("nothing here\n")


def test_control_bench_settings() -> None:
    full = run.control_benches(smoke=False)
    assert full["routes"] == ["bench/routes.py", "--runs", "5"]
    assert "--agent-nodes" in full["bgp"] and "--json" in full["bgp"]
    assert "10,20" in full["bgp"]
    smoke = run.control_benches(smoke=True, bgp_agent_level=False)
    assert "--agent-nodes" not in smoke["bgp"]
    assert smoke["ipam"][-2:] == ["--count", "20"]
    assert run.shown(full["routes"]) == ".venv/bin/python bench/routes.py --runs 5"


def test_smoke_settings_are_small() -> None:
    assert run.dataplane_argv(True) == ["--rounds", "1", "--seconds", "1", "--round-trips", "200"]
    assert "--rounds" in run.dataplane_argv(False)
    assert run.scale_argv(True)[:2] == ["--sizes", "5,10"]


def test_problems_are_breakage_not_missed_targets() -> None:
    ok = {
        "dataplane": {"errors": [], "samples": {}},
        "control": {"cni": {"ok": True, "targets": "MISSED: ADD p50"}},
        "scale": {
            "sizes": [{"nodes": 5, "routes_30": {"formula_agrees": True}, "routes_110": {}}],
            "scenarios": [{"key": "even"}],
        },
    }
    assert run.problems_of(ok) == []
    broken = {
        "dataplane": {
            "failed": "lab up failed",
            "errors": [{"round": 0, "path": "ipip", "test": "tput1", "error": "iperf3 exited 1"}],
        },
        "control": {"routes": {"ok": False, "error": "exit 1"}},
        "scale": {
            "sizes": [{"nodes": 5, "routes_30": {"formula_agrees": False}, "routes_110": {}}],
            "scenarios": [{"key": "skewed", "formula_agrees": False}],
        },
    }
    problems = run.problems_of(broken)
    assert "dataplane: ipip tput1 iperf3 exited 1" in problems
    assert "dataplane: lab up failed" in problems
    assert "control routes: exit 1" in problems
    assert any("differ at 5 nodes" in p for p in problems)
    assert any("scenario skewed" in p for p in problems)


def test_parse_args() -> None:
    args = run.parse_args(["--smoke", "--only", "scale,control"])
    assert args.smoke and args.only == ("scale", "control")
    with pytest.raises(SystemExit):
        run.parse_args(["--only", "gpu"])
