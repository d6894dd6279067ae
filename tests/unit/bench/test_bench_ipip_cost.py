"""bench/ipip_cost.py's arithmetic and report, without a guest."""

from __future__ import annotations

from typing import Any

import pytest
from benchmods import load

ipip_cost = load("ipip_cost")
report = load("report")


def transfers(paths: list[str], rounds: int) -> list[dict[str, Any]]:
    return [
        {"path": p, "round": r, "bytes": 10_000_000, "seconds": 0.5, "uplink_packets": 160}
        for r in range(rounds)
        for p in paths
    ]


def test_markers_are_read_in_order_from_qemu_log() -> None:
    log = "qemu: noise\nTORTIE-INSN 100 7\nother\nTORTIE-INSN 250 9\nTORTIE-INSN 3 4 5\n"
    assert ipip_cost.parse_markers(log) == [(100, 7), (250, 9)]


def test_counts_per_mb_come_from_the_markers_around_each_transfer() -> None:
    runs = transfers(["ideal", "bpf"], 1)
    # check pair, then ideal: +6M insns, +30M copies; bpf: +7M insns, +30M copies (10 MB each)
    marks = [(0, 0), (5, 0), (10, 100), (6_000_010, 30_000_100), (7_000_000, 30_000_100)]
    marks.append((14_000_000, 60_000_100))
    counted = ipip_cost.per_run_counts(runs, marks)
    assert [c["insn_per_mb"] for c in counted] == [600_000.0, 700_000.0]
    assert [c["copy_per_mb"] for c in counted] == [3_000_000.0, 3_000_000.0]
    assert counted[0]["mbit_s"] == pytest.approx(160.0)


def test_a_missing_plugin_is_an_error_not_a_figure() -> None:
    with pytest.raises(ipip_cost.CostBenchError, match="0 markers for 2 transfers"):
        ipip_cost.per_run_counts(transfers(["ideal", "bpf"], 1), [])


def test_ratios_pair_each_path_with_ideal_of_the_same_round() -> None:
    counted = []
    ideal = {0: 1.0, 1: 2.0}  # the ideal path's cost doubles in round 1 ...
    for r in (0, 1):
        counted.append({"path": "ideal", "round": r, "insn_per_mb": ideal[r], "copy_per_mb": 1.0,
                        "mbit_s": 1.0})  # fmt: skip
        # ... and kernel's with it: paired, its ratio is 1.5 both times (unpaired: 1.0-3.0)
        counted.append({"path": "kernel", "round": r, "insn_per_mb": 1.5 * ideal[r],
                        "copy_per_mb": 1.0, "mbit_s": None})  # fmt: skip
    rows = {r["path"]: r for r in ipip_cost.summarize(counted)}
    assert list(rows) == ["ideal", "kernel"]
    assert rows["kernel"]["insn_ratio"] == {"median": 1.5, "min": 1.5, "max": 1.5, "n": 2}
    # all instructions: (1.5 + 1) / (1 + 1) and (3 + 1) / (2 + 1)
    assert rows["kernel"]["all_ratio"]["min"] == pytest.approx(1.25)
    assert rows["kernel"]["all_ratio"]["max"] == pytest.approx(4 / 3)
    assert rows["kernel"]["mbit_s"] is None
    assert rows["kernel"]["module_ratio"] is None  # only the tc-BPF paths are put against it


def test_tc_bpf_paths_are_also_put_against_the_ipip_module_of_the_same_round() -> None:
    counted = [
        {"path": p, "round": r, "insn_per_mb": cost * (r + 1), "copy_per_mb": 0.0, "mbit_s": 1.0}
        for r in (0, 1)
        for p, cost in (
            ("ideal", 1.0),
            ("kernel", 1.25),
            ("bpf", 1.125),
            ("bpf-tc", 1.25),
            ("bpf-compat", 1.25),
        )
    ]
    rows = {r["path"]: r for r in ipip_cost.summarize(counted)}
    assert rows["bpf"]["module_ratio"] == {"median": 0.9, "min": 0.9, "max": 0.9, "n": 2}
    assert rows["bpf-compat"]["module_ratio"]["median"] == 1.0
    # tcx links against tc filters: only the bpf row, paired by round.
    assert rows["bpf"]["tc_ratio"] == {"median": 0.9, "min": 0.9, "max": 0.9, "n": 2}
    assert rows["bpf-tc"]["tc_ratio"] is None and rows["ideal"]["tc_ratio"] is None
    text = report.render_ipip_cost(
        {"command": "c", "rounds": 2, "bytes": 1e6, "kernel": "6.12", "seconds": 1,
         "rows": list(rows.values())}
    )  # fmt: skip
    assert "tcx links against tc filters (`bpf` / `bpf-tc`" in text
    assert "): 0.900 (0.900-0.900)." in text


def test_render_shows_every_path_and_says_what_the_counts_are_not() -> None:
    counted = ipip_cost.per_run_counts(
        transfers(["ideal", "kernel"], 1),
        [
            (0, 0),
            (1, 0),
            (0, 0),
            (6_000_000, 30_000_000),
            (6_000_000, 30_000_000),
            (13_500_000, 60_000_000),
        ],
    )
    text = report.render_ipip_cost(
        {
            "command": "cmd",
            "rounds": 1,
            "bytes": 10_000_000,
            "kernel": "6.12",
            "seconds": 60,
            "rows": ipip_cost.summarize(counted),
        }
    )
    assert "| ideal pod path (hand-wired, native) | 0.600 (0.600-0.600) | n/a |" in text
    assert "| 0.750 (0.750-0.750) | 1.250 (1.250-1.250) | n/a | 3.000 (3.000-3.000) |" in text
    assert "do not predict throughput" in text
    assert "| 62.5 (62.5-62.5) | 160 (160-160) |" in text  # 10 MB in 160 skbs, in 0.5 s
    assert report.render_ipip_cost({"failed": "no guest"}) == "Not measured: no guest"


def test_parse_args_needs_the_reference_path() -> None:
    with pytest.raises(SystemExit):
        ipip_cost.parse_args(["--paths", "kernel,bpf"])
    assert ipip_cost.parse_args([]).paths == ipip_cost.PATHS
