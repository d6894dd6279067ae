"""The pure parts of bench/dataplane.py: path plan, statistics, iperf3 parsing, and the
request/response client and echo server (over loopback, no lab)."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

import pytest
from benchmods import load

dataplane = load("dataplane")
report = load("report")


def test_mode_labs_have_no_nat_outgoing_but_the_conntrack_lab() -> None:
    """Pod to pod is never NATed; natOutgoing would only add conntrack (measured apart)."""
    for key, plan in dataplane.LABS.items():
        nat_off = "--no-nat-outgoing" in plan.up_args
        assert nat_off == (key not in ("ref", "nat")), key
    by_key = {p.key: p for p in dataplane.plan_paths(("ipip",))}
    assert by_key["ipip-nat"].lab == "nat" and by_key["ipip-nat"].ideal == "ideal"
    assert by_key["ipip-nat"].key not in report.TARGETS  # shown, not judged


def test_plan_has_references_first_and_cross_references_only_with_crosssubnet() -> None:
    keys = [p.key for p in dataplane.plan_paths(("bgp", "ipip"))]
    assert keys == ["underlay", "ideal", "bgp", "ipip", "ipip-nat"]
    every = dataplane.plan_paths(dataplane.MODES)
    keys = [p.key for p in every]
    assert keys[:4] == ["underlay", "ideal", "underlay-x", "ideal-x"]
    assert {"cs-same", "cs-cross", "vxlan"} <= set(keys)
    by_key = {p.key: p for p in every}
    assert (by_key["cs-cross"].ideal, by_key["cs-cross"].underlay) == ("ideal-x", "underlay-x")
    assert (by_key["bgp"].ideal, by_key["bgp"].underlay) == ("ideal", "underlay")
    assert by_key["ideal"].underlay == "underlay" and by_key["ideal"].ideal is None
    # Every path's references are measured too, and every lab it names is planned.
    for p in every:
        assert p.lab in dataplane.LABS
        for ref in (p.ideal, p.underlay):
            assert ref is None or ref in by_key


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(SystemExit, match="unknown mode"):
        dataplane.plan_paths(("bgp", "wireguard"))


def test_rotation_moves_every_path_through_every_position() -> None:
    items = ["a", "b", "c"]
    assert dataplane.rotated(items, 0) == ["a", "b", "c"]
    assert dataplane.rotated(items, 1) == ["b", "c", "a"]
    assert dataplane.rotated(items, 4) == ["b", "c", "a"]
    assert dataplane.rotated([], 3) == []


def test_nearest_rank_percentiles() -> None:
    values = list(range(1, 101))
    assert dataplane.nearest_rank(values, 0.50) == 50
    assert dataplane.nearest_rank(values, 0.99) == 99
    assert dataplane.nearest_rank([7.0], 0.99) == 7.0
    with pytest.raises(ValueError):
        dataplane.nearest_rank([], 0.5)


def test_rtt_summary_in_microseconds() -> None:
    s = dataplane.rtt_summary([20_000, 10_000, 30_000, 1_000_000])
    assert s["n"] == 4
    assert s["p50_us"] == 20.0
    assert s["p99_us"] == 1000.0
    assert s["min_us"] == 10.0


def test_parse_iperf_reads_the_receiver_side() -> None:
    report = {
        "end": {
            "sum_sent": {"bits_per_second": 9.9e9, "retransmits": 3},
            "sum_received": {"bits_per_second": 9.5e9, "bytes": 2_375_000_000},
            "cpu_utilization_percent": {"host_total": 51.23, "remote_total": 40.0},
        }
    }
    got = dataplane.parse_iperf(report)
    assert got == {
        "gbits": 9.5,
        "bytes": 2_375_000_000,
        "retransmits": 3,
        "cpu_sender": 51.2,
        "cpu_receiver": 40.0,
    }
    with pytest.raises(RuntimeError, match="unable to connect"):
        dataplane.parse_iperf({"error": "unable to connect to server"})


def test_listening_reads_the_process_namespace_table() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert not dataplane.listening(os.getpid(), port)
        s.listen(1)
        assert dataplane.listening(os.getpid(), port)


def test_rr_client_and_server_over_loopback(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = threading.Thread(target=dataplane.rr_server, args=("127.0.0.1", port), daemon=True)
    server.start()
    assert dataplane.rr_client("127.0.0.1", port, count=300, warmup=20) == 0
    server.join(5)
    assert not server.is_alive()  # the server exits when the client closes
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 300
    assert 0 < summary["min_us"] <= summary["p50_us"] <= summary["p99_us"] <= summary["max_us"]


def test_command_line_names_the_settings() -> None:
    args = dataplane.parse_args(["--rounds", "2", "--seconds", "1.5", "--modes", "bgp"])
    assert dataplane.command_line(args) == (
        ".venv/bin/python bench/dataplane.py --rounds 2 --seconds 1.5 --round-trips 1000 "
        "--modes bgp"
    )
    default = dataplane.parse_args([])
    assert "--modes" not in dataplane.command_line(default)


def test_descendants_and_rss_of_this_process() -> None:
    assert dataplane.rss_kib(os.getpid()) > 0
    assert dataplane.rss_kib(2**22 + 12345) == 0  # no such process
    assert isinstance(dataplane.descendants(os.getpid()), list)


def test_cpu_busy_seconds_counts_work_not_idle_or_steal(tmp_path: Path) -> None:
    hz = os.sysconf("SC_CLK_TCK")
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text(f"cpu  {hz} {hz} {2 * hz} 999999 777 {hz} {3 * hz} 55555 0 0\ncpu0 1 2 3\n")
    assert dataplane.cpu_busy_seconds(str(stat)) == pytest.approx(8.0)
    # The live file parses too, and time only moves forward.
    first = dataplane.cpu_busy_seconds()
    assert 0 < first <= dataplane.cpu_busy_seconds()


def test_cpu_per_gb() -> None:
    assert dataplane.cpu_per_gb(3.0, 6 * 10**9) == {"cpu_busy_s": 3.0, "cpu_s_per_gb": 0.5}
    assert dataplane.cpu_per_gb(3.0, 0) == {}  # nothing moved: no figure, not a division
