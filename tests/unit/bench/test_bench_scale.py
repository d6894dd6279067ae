"""The scale model (bench/scale.py): the exact formulas, and that tortie's real IPAM, route
calculation and peering code agree with them on small simulated clusters."""

from __future__ import annotations

import argparse

import pytest
from benchmods import load

scale = load("scale")


def test_blocks_for_counts_the_tunnel_address() -> None:
    assert scale.blocks_for(30) == 1
    assert scale.blocks_for(63) == 1
    assert scale.blocks_for(64) == 2  # 64 pods + the tunnel address do not fit one /26
    assert scale.blocks_for(64, tunnel=False) == 1
    assert scale.blocks_for(110) == 2
    assert scale.blocks_for(0) == 1  # the tunnel address alone claims a block


def test_formula_routes_counts_other_nodes_blocks() -> None:
    count = scale.formula_routes([30, 110, 0], node=0)
    assert (count.remote_blocks, count.remote_hosts, count.blackholes, count.workloads) == (
        3,
        0,
        1,
        30,
    )
    assert count.remote == 3
    assert count.total == 3 + 1 + 30


def test_formula_even_ample_and_short_pool() -> None:
    assert scale.formula_even(100, 30)["remote_max"] == 99
    assert scale.formula_even(100, 110)["remote_max"] == 198
    short = scale.formula_even(20, 30, pool_blocks=16)
    # 4 nodes without a block borrow 31 addresses each: /32s on every other node.
    assert short["borrowed"] == 4 * 31
    assert short["owners"] == 16
    assert short["remote_min"] == 16 + 124 - 31
    assert short["remote_max"] == 15 + 124
    assert not short["exhausted"]
    assert scale.formula_even(2200, 30, pool_blocks=1024)["exhausted"]
    with pytest.raises(ValueError):
        scale.formula_even(20, 110, pool_blocks=16)


def test_formula_sessions() -> None:
    s = scale.formula_sessions(5000)
    assert s["mesh_per_node"] == 4999
    assert s["mesh_total"] == 5000 * 4999 // 2
    assert (s["rr_client"], s["rr_reflector"]) == (2, 4999)
    assert s["rr_total"] == 2 * 4998 + 1


def test_skewed_spread_keeps_the_total_and_the_cap() -> None:
    pods = scale.skewed(50, 30, seed=3)
    assert sum(pods) == 50 * 30
    assert max(pods) <= scale.MAX_PODS
    assert min(pods) < 30 < max(pods)


def test_short_pool_has_fewer_blocks_than_nodes_but_enough_addresses() -> None:
    pool, blocks = scale.short_pool(100, 30)
    assert pool.endswith("/20") and blocks == 64
    assert blocks < 100 and blocks * 64 >= 100 * 31


@pytest.mark.parametrize("key", ["even", "skewed", "full", "borrow"])
def test_simulation_with_the_real_ipam_agrees_with_the_formula(key: str) -> None:
    # 12 nodes: the short pool has 8 blocks, so 4 nodes borrow.
    scenario = next(s for s in scale.scenarios(12) if s.key == key)
    result = scale.run_scenario(scenario, 12)
    assert result["formula_agrees"], result
    assert result["failed"] == 0
    if key == "borrow":
        assert result["borrowed"] == 4 * 31
        assert result["remote_hosts_max"] == 4 * 31


def test_strict_affinity_leaves_pods_without_address_and_borrows_nothing() -> None:
    strict = next(s for s in scale.scenarios(12) if s.key == "strict")
    result = scale.run_scenario(strict, 12)
    assert result["borrowed"] == 0
    assert result["failed"] > 0
    assert result["pods_placed"] < sum(strict.pods)
    assert result["remote_hosts_max"] == 0


def test_churn_leaves_more_blocks_than_an_even_spread() -> None:
    scen = {s.key: s for s in scale.scenarios(6)}
    even = scale.run_scenario(scen["even"], 6)
    churned = scale.run_scenario(scen["churn"], 6)
    assert churned["pods_placed"] == even["pods_placed"] == 6 * 30
    assert churned["blocks"] > even["blocks"]


def test_sessions_by_the_peering_code_match_the_formula() -> None:
    for n in (3, 7):
        got = scale.sessions(n)
        want = scale.formula_sessions(n)
        assert got == {k: want[k] for k in got}


def test_by_size_marks_simulated_and_formula_rows() -> None:
    rows = scale.by_size((4,), (50,), log=lambda _: None)
    assert [r["how"] for r in rows] == ["simulated", "formula"]
    assert rows[0]["routes_30"]["formula_agrees"]
    assert rows[0]["routes_110"]["formula_agrees"]
    assert rows[0]["sessions_formula_agrees"]
    assert rows[1]["routes_30"]["remote"] == 49


def test_run_returns_everything_the_report_needs() -> None:
    args = argparse.Namespace(sizes=(3,), formula_sizes=(10,), scenario_nodes=4)
    result = scale.run(args, log=lambda _: None)
    assert result["command"].startswith(".venv/bin/python bench/scale.py --sizes 3 ")
    assert {s["key"] for s in result["scenarios"]} == {
        "even",
        "skewed",
        "full",
        "churn",
        "borrow",
        "strict",
        "maxblocks",
    }
    assert result["default_pool"]["blocks"] == 1024


def test_compare_exact_within_tolerance_and_differs() -> None:
    formula = {"remote_min": 100, "remote_max": 110, "borrowed": 1000}
    same = {"remote_min": 100, "remote_max": 110, "borrowed": 1000}
    assert scale.compare(formula, same, 0.0) == {
        "formula_agrees": True,
        "formula_exact": True,
        "formula_delta_borrowed": 0,
    }
    near = {"remote_min": 101, "remote_max": 112, "borrowed": 1003}
    got = scale.compare(formula, near, 0.02)
    assert got["formula_agrees"] and not got["formula_exact"]
    assert got["formula_delta_borrowed"] == 3
    assert not scale.compare(formula, near, 0.0)["formula_agrees"]
