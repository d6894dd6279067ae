"""bench/report.py: statistics, paired ratios, target verdicts, and the rendering of
results.md and results.png from a synthetic result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from benchmods import load

report = load("report")
dataplane = load("dataplane")


def test_spread_ignores_failed_runs() -> None:
    s = report.spread([3.0, None, 1.0, 2.0])
    assert (s.median, s.low, s.high, s.n) == (2.0, 1.0, 3.0, 3)
    assert report.spread([None, None]) is None
    assert report.fmt(None) == "n/a"
    assert s.fmt(1) == "2.0 (1.0-3.0)"
    assert report.Spread(0.97, 0.9, 1.0, 3).fmt(0, 100) == "97 (90-100)"
    assert report.Spread(5.0, 5.0, 5.0, 1).fmt(1) == "5.0"  # one run: no range


def test_paired_ratios_pair_rounds_and_skip_failures() -> None:
    assert report.paired_ratios([9.0, None, 8.0], [10.0, 10.0, 0.0]) == [0.9]
    assert report.paired_ratios([1.0, 2.0], [2.0, 4.0]) == [0.5, 0.5]


def _tput(*gbits: float | None) -> list[dict[str, float] | None]:
    return [None if g is None else {"gbits": g, "retransmits": 0} for g in gbits]


def _rr(*p50: float) -> list[dict[str, float]]:
    return [{"p50_us": v, "p99_us": 3 * v} for v in p50]


def synthetic_dataplane() -> dict[str, Any]:
    paths = [
        p.__dict__
        for p in dataplane.plan_paths(("bgp", "ipip", "vxlan"))  # underlay, ideal, 3 modes
    ]
    samples = {
        "underlay": {"tput1": _tput(10, 12, 11), "tput4": _tput(12, 12, 12), "rr": _rr(10, 10, 10)},
        "ideal": {"tput1": _tput(9, 10, 10), "tput4": _tput(11, 11, 11), "rr": _rr(12, 12, 12)},
        # BGP: 98 % of ideal in every round, latency 1.05x: passes.
        "bgp": {"tput1": _tput(8.82, 9.8, 9.8), "tput4": _tput(11, 11, 11), "rr": _rr(12.6)},
        # IPIP: 85 % (fails 90 %); one failed 4-stream run; latency 1.5x (fails 1.3x).
        "ipip": {"tput1": _tput(7.65, 8.5, 8.5), "tput4": _tput(None, 11, 11), "rr": _rr(18)},
        "vxlan": {"tput1": _tput(8, 8, 8), "tput4": _tput(9, 9, 9), "rr": _rr(30, 30, 30)},
    }
    return {
        "command": ".venv/bin/python bench/dataplane.py --rounds 3",
        "settings": {"rounds": 3, "seconds": 4, "round_trips": 2000},
        "paths": paths,
        "samples": samples,
        "labs": {
            "ref": {"command": "tortie lab up --name x-ref", "up_s": 1.0, "mtu": {"ideal": 1500}}
        },
        "memory": {
            "bgp": [
                {
                    "node": "node1",
                    "agent_mib": 57.0,
                    "speaker_mib": 45.0,
                    "agent_cpu_pct": 1.25,
                    "speaker_cpu_pct": 0.5,
                }
            ],
            "vxlan": [{"node": "node1", "agent_mib": 50.0, "speaker_mib": 0.0}],  # no CPU figure
        },
        "errors": [],
        "seconds": 100,
    }


def test_dataplane_figures_ratios_and_verdicts() -> None:
    rows = {r["key"]: r for r in report.dataplane_figures(synthetic_dataplane())}
    bgp, ipip, vxlan = rows["bgp"], rows["ipip"], rows["vxlan"]
    assert bgp["tput1_vs_ideal"].median == pytest.approx(0.98)
    assert bgp["tput1_ok"] is True and bgp["lat_ok"] is True
    assert ipip["tput1_ok"] is False and ipip["lat_ok"] is False
    assert ipip["tput4"].n == 2
    assert vxlan["tput1_ok"] is True and vxlan["lat_ok"] is None  # no latency target
    # Per round: 9/10, 10/12, 10/11; the median of the paired ratios.
    assert rows["ideal"]["tput1_vs_underlay"].median == pytest.approx(0.9)
    assert rows["ideal"]["target"] is None and rows["ideal"]["tput1_vs_ideal"] is None


def test_render_dataplane_and_headline() -> None:
    dp = synthetic_dataplane()
    text = report.render_dataplane(dp)
    assert "| BGP mode (native) | 9.80 (8.82-9.80) | 98 (98-98) % |" in text
    assert ">= 90% of ideal | FAIL / PASS |" in text
    assert "p50 <= 1.1x ideal | PASS |" in text
    assert "`tortie lab up --name x-ref`: up in 1.0 s; pod/node eth0 MTU: ideal 1500" in text
    assert "| bgp | 1 | 57.0 | 45.0 | 102.0 | 1.25 | 0.50 |" in text
    assert "| vxlan | 1 | 50.0 | 0.0 | 50.0 | n/a | n/a |" in text
    head = report.headline({"dataplane": dp})
    assert "| IPIP (tc-BPF) |" in head and "tput FAIL, p50 FAIL" in head
    assert "tput PASS, p50 PASS" in head


def test_cpu_per_byte_is_paired_with_the_ideal_path() -> None:
    dp = synthetic_dataplane()
    assert "**CPU per byte**" not in report.render_dataplane(dp)  # older runs: no table
    for key, cpu in (("ideal", (0.50, 0.40, 0.60)), ("ipip", (0.55, 0.48, 0.66))):
        for run, c in zip(dp["samples"][key]["tput1"], cpu, strict=True):
            assert run is not None
            run["cpu_s_per_gb"] = c
    rows = {r["key"]: r for r in report.dataplane_figures(dp)}
    # Per round 1.10, 1.20, 1.10: the median of the paired ratios, not a ratio of medians.
    assert rows["ipip"]["tput1_cpu_vs_ideal"].median == pytest.approx(1.10)
    assert rows["ipip"]["tput1_cpu_vs_ideal"].high == pytest.approx(1.20)
    assert rows["ipip"]["tput4_cpu_vs_ideal"] is None
    assert rows["ideal"]["tput1_cpu_vs_ideal"] is None  # a reference has no reference
    assert rows["bgp"]["tput1_cpu"] is None
    text = report.render_dataplane(dp)
    assert "**CPU per byte**" in text
    assert "| IPIP (tc-BPF) | 0.550 (0.480-0.660) | 1.10 (1.10-1.20)x | n/a | n/a |" in text
    head = report.headline({"dataplane": dp})
    assert "CPU per byte x ideal" in head
    assert "| 1.10 (1.10-1.20)x |" in head


def test_render_dataplane_lists_errors() -> None:
    dp = synthetic_dataplane()
    dp["errors"] = [{"round": 0, "path": "ipip", "test": "tput4", "error": "iperf3 exited 1"}]
    assert "**Errors** (1):" in report.render_dataplane(dp)


CONTROL: dict[str, Any] = {
    "cni": {
        "command": ".venv/bin/python bench/cni.py --pods 100 --rounds 5",
        "ok": True,
        "seconds": 36,
        "pods": 100,
        "rounds": 5,
        "version_p50_ms": 92.8,
        "add_p50_ms": 118.8,
        "add_p99_ms": 382.6,
        "add_max_ms": 656.1,
        "del_p50_ms": 56.5,
        "del_p99_ms": 118.6,
        "del_max_ms": 132.4,
        "concurrent_ok": "50/50",
        "concurrent_pods_s": 20.3,
        "concurrent_pods_s_min": 16.4,
    },
    "ipam": {
        "command": "x",
        "ok": True,
        "seconds": 80,
        "repeats": 2,
        "rows": [
            {"backend": "sqlite", "processes": 1, "layout": "one node", "rates": [453.0, 500.0]}
        ],
    },
    "routes": {"command": "y", "ok": False, "error": "exit 1: boom", "seconds": 1, "rows": []},
    "bgp": {
        "command": "z",
        "ok": True,
        "seconds": 90,
        "rows": [
            {
                "nodes": 10,
                "topology": "mesh",
                "start_to_converged_s": 4.61,
                "propagation_ms_p50": 23.4,
                "propagation_ms_p99": 45.3,
                "samples": 270,
                "sessions_per_node": "9..9",
                "learned_routes_per_node": "9..9",
                "rss_mib_exabgp_node": 45.7,
            },
            {
                "level": "agent",
                "nodes": 10,
                "topology": "rr",
                "lab_up_s": 35.0,
                "up_to_all_routes_s": 35.1,
                "announce_to_kernel_ms_p50": 41.6,
                "announce_to_kernel_ms_p99": 196.0,
                "claim_to_kernel_ms_p50": 122.6,
                "claim_to_kernel_ms_p99": 276.0,
                "samples": 18,
                "sessions_per_node": "2..9",
                "remote_routes_per_node": "10..11",
                "rss_mib_per_node": 94.1,
            },
        ],
    },
}


def test_render_control() -> None:
    text = report.render_control(CONTROL)
    assert "| ADD p50 / p99 / max | 118.8 / 382.6 / 656.1 ms (over 100 pods) |" in text
    assert "| sqlite | 1 | one node | 476 (453-500) |" in text
    assert "FAILED: exit 1: boom" in text
    assert "| 10 | full mesh | 4.61 s | 23.4 / 45.3 ms (270 samples) |" in text
    assert "| 10 | 2 reflectors | 35.0 s | 35.1 s | 41.6 / 196.0 ms |" in text


def synthetic_scale() -> dict[str, Any]:
    scale = load("scale")
    import argparse

    return scale.run(
        argparse.Namespace(sizes=(3,), formula_sizes=(40,), scenario_nodes=4), log=lambda _: None
    )


def test_render_scale() -> None:
    text = report.render_scale(synthetic_scale())
    assert "| 3 | simulated | 2 |" in text and "| yes |" in text
    assert "| 40 | formula | 39 |" in text
    assert "| even: 30 pods on every node |" in text and "1.0x" in text
    assert "| 2,200 | 1,024 |" in text and "| yes |" in text


def test_render_everything_and_plot(tmp_path: Path) -> None:
    results = {
        "command": ".venv/bin/python bench/run.py",
        "date": "2026-01-01 00:00 UTC",
        "seconds": 600,
        "machine": {"cpus": 2, "load_before": [1.0, 2.0, 3.0], "load_after": [2, 2, 2]},
        "dataplane": synthetic_dataplane(),
        "control": CONTROL,
        "scale": synthetic_scale(),
        "problems": ["control routes: exit 1: boom"],
    }
    text = report.render(results)
    for heading in (
        "## Headline",
        "## Dataplane",
        "## Control plane",
        "## Scale on paper",
        "## Problems in this run",
    ):
        assert heading in text
    assert "in 10.0 min" in text and "2 CPUs" in text
    png = tmp_path / "results.png"
    report.plot(results, str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_copes_with_missing_parts(tmp_path: Path) -> None:
    png = tmp_path / "empty.png"
    report.plot({"smoke": True}, str(png))
    assert png.stat().st_size > 0
    assert "smoke run" in report.render({"smoke": True})


def test_median_ci_uses_binomial_order_statistics() -> None:
    nine = [0.91, 0.85, 0.99, 0.88, 0.80, 0.95, 1.02, 0.87, 0.93]
    # n = 9: P(B(9, 1/2) < 2) = 10/512 <= 2.5 %, P(B < 3) = 46/512 > 2.5 %: 2nd and 8th.
    assert report.median_ci(nine) == (0.85, 0.99)
    assert report.median_ci(nine[:7]) == (min(nine[:7]), max(nine[:7]))  # n = 7: min-max
    assert report.median_ci([1.0]) is None
    # 20 values: P(B(20, 1/2) < 6) = 2.1 % <= 2.5 %, P(B < 7) = 5.8 %: 6th and 15th.
    twenty = [i / 20 for i in range(20)]
    assert report.median_ci(twenty) == (5 / 20, 14 / 20)


def test_a_verdict_inside_the_interval_is_within_noise() -> None:
    dp = synthetic_dataplane()
    # BGP mode: per round 0.88, 0.99, 1.03 of ideal (median 0.99 >= 0.97, CI 0.88-1.03).
    dp["samples"]["bgp"]["tput1"] = _tput(8.8, 9.9, 10.3)
    dp["samples"]["ideal"]["tput1"] = _tput(10, 10, 10)
    rows = {r["key"]: r for r in report.dataplane_figures(dp)}
    assert rows["bgp"]["tput1_ok"] is True and rows["bgp"]["tput1_sure"] is False
    assert report.verdict(True, False) == "PASS (within noise)"
    assert report.verdict(False, True) == "FAIL" and report.verdict(None, False) == "n/a"
    assert "tput PASS (within noise)" in report.headline({"dataplane": dp})
    dp["samples"]["bgp"]["tput1"] = _tput(9.8, 9.9, 10.3)  # all above 0.97: sure
    rows = {r["key"]: r for r in report.dataplane_figures(dp)}
    assert rows["bgp"]["tput1_sure"] is True
