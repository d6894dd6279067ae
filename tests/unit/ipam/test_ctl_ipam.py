"""``tortie ipam ...`` end to end, in-process, over a temporary SQLite datastore."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from tortie.ctl import ipam as ctl_ipam
from tortie.ctl.main import main
from tortie.datastore.factory import open_datastore
from tortie.datastore.resources import ResourceStore
from tortie.model.resources import IPPool, Node

pytestmark = pytest.mark.unit

HEADER = "| GROUPING |     CIDR    | IPS TOTAL | IPS IN USE |  IPS FREE |"


@pytest.fixture
def ds(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/tortie.db"
    store = open_datastore(url, create=True)
    pool = IPPool.from_document(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "IPPool",
            "metadata": {"name": "p"},
            "spec": {"cidr": "10.0.0.0/24", "blockSize": 28, "ipipMode": "Always"},
        }
    )
    nodes = [
        Node.from_document(
            {"apiVersion": "projectcalico.org/v3", "kind": "Node", "metadata": {"name": n}}
        )
        for n in ("n1", "n2")
    ]
    ResourceStore(store).apply([pool, *nodes])
    store.close()
    return url


def run(ds: str, *args: str) -> int:
    return main(["--datastore", ds, "ipam", *args])


def out_of(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().out.splitlines()


def test_assign_text_and_json(ds: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(ds, "assign", "--node", "n1", "--handle", "h1", "--count", "2") == 0
    first = out_of(capsys)
    assert len(first) == 2
    assert all(line.startswith("10.0.0.") for line in first)
    assert run(ds, "assign", "--node", "n1", "--handle", "h2", "-o", "json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["node"] == "n1"
    assert doc["handle"] == "h2"
    [a] = doc["allocations"]
    assert doc["ips"] == [a["ip"]]
    assert a["block"].endswith("/28")
    assert isinstance(a["sequence"], int)


def test_assign_specific_ip_pool_and_attrs(ds: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--node", "n1", "--handle", "h", "--ip", "10.0.0.9", "--pool", "10.0.0.0/24"]
    assert run(ds, "assign", *args, "--attr", "pod=web", "--attr", "namespace=prod") == 0
    assert out_of(capsys) == ["10.0.0.9"]
    assert run(ds, "show", "--ip", "10.0.0.9") == 0
    shown = out_of(capsys)
    assert shown[0] == "IP 10.0.0.9 is in use"
    assert "Handle: h" in shown
    assert "  pod: web" in shown
    assert "  namespace: prod" in shown
    assert run(ds, "show", "--ip", "10.0.0.10") == 0
    assert out_of(capsys) == ["IP 10.0.0.10 is not assigned"]


def test_show_columns_blocks_and_borrowed(ds: str, capsys: pytest.CaptureFixture[str]) -> None:
    run(ds, "configure", "--max-blocks-per-host", "1")
    run(ds, "assign", "--node", "n1", "--handle", "a", "--count", "16")
    run(ds, "assign", "--node", "n2", "--handle", "b", "--count", "3")
    run(ds, "assign", "--node", "n1", "--handle", "c")  # borrowed from n2's block
    capsys.readouterr()
    assert run(ds, "show") == 0
    table = out_of(capsys)
    assert table[1] == HEADER
    assert table[3] == "| IP Pool  | 10.0.0.0/24 |       256 | 20 (8%)    | 236 (92%) |"
    assert len(table) == 5
    assert run(ds, "show", "--show-blocks") == 0
    rows = [r for r in out_of(capsys) if r.startswith("| Block")]
    assert len(rows) == 2
    assert any("| 16 (100%)  | 0 (0%)" in r for r in rows)
    assert run(ds, "show", "--show-borrowed") == 0
    borrowed = out_of(capsys)
    assert [c.strip() for c in borrowed[1].split("|")[1:-1]] == [
        "IP",
        "BORROWING-NODE",
        "BLOCK",
        "BLOCK OWNER",
        "TYPE",
        "ALLOCATED-TO",
    ]
    [row] = [r for r in borrowed if r.startswith("| 10.")]
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[1] == "n1"
    assert cells[3] == "n2"
    assert cells[5] == "c"


def test_check_exit_status_report_and_release_from_report(
    ds: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(ds, "assign", "--node", "n1", "--handle", "kept")
    capsys.readouterr()
    assert run(ds, "check") == 0
    assert out_of(capsys)[-1] == "found 0 problems"
    run(ds, "assign", "--node", "n1", "--handle", "leak", "--attr", "pod=gone")
    capsys.readouterr()
    report = tmp_path / "report.json"
    assert run(ds, "check", "-o", str(report)) == 3
    lines = out_of(capsys)
    assert lines[-1] == "found 1 problems"
    assert any(line.startswith("  [leaked-address]") for line in lines)
    doc = json.loads(report.read_text())
    assert doc["problemCount"] == 1
    assert run(ds, "release", "--from-report", str(report)) == 0
    lines = out_of(capsys)
    assert lines[0].startswith("released 10.0.0.")
    assert lines[-1].startswith("released 1 address(es)")
    assert run(ds, "check") == 0
    capsys.readouterr()
    assert run(ds, "release", "--from-report", str(report)) == 0  # stale now: nothing
    assert out_of(capsys)[-1].startswith("released 0 address(es)")


def test_release_by_handle_and_ip(ds: str, capsys: pytest.CaptureFixture[str]) -> None:
    run(ds, "assign", "--node", "n1", "--handle", "h", "--count", "2")
    a, b = out_of(capsys)
    assert run(ds, "release", "--ip", a) == 0
    assert out_of(capsys) == [f"released {a}", "released 1 address(es)"]
    assert run(ds, "release", "--handle", "h") == 0
    assert out_of(capsys) == [f"released {b}", "released 1 address(es)"]
    assert run(ds, "release", "--handle", "h") == 0  # unknown handle: fine
    assert out_of(capsys) == ["released 0 address(es)"]


def test_gc_with_grace(ds: str, capsys: pytest.CaptureFixture[str]) -> None:
    run(ds, "assign", "--node", "n1", "--handle", "leak", "--attr", "pod=gone")
    capsys.readouterr()
    assert run(ds, "gc") == 0  # default 15m: too young
    assert "1 within the grace period" in out_of(capsys)[-1]
    assert run(ds, "gc", "--grace", "0s") == 0
    lines = out_of(capsys)
    assert lines[0].startswith("released 10.0.0.")


def test_configure(ds: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(ds, "configure") == 0
    assert out_of(capsys) == ["StrictAffinity: false", "MaxBlocksPerHost: 20"]
    assert run(ds, "configure", "--strict-affinity", "true", "--max-blocks-per-host", "4") == 0
    assert out_of(capsys) == ["StrictAffinity: true", "MaxBlocksPerHost: 4"]
    assert run(ds, "configure", "--max-blocks-per-host", "0") == 0
    assert out_of(capsys) == ["StrictAffinity: true", "MaxBlocksPerHost: 0"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["assign", "--node", "n1", "--handle", "h", "--attr", "novalue"], "KEY=VALUE"),
        (["assign", "--node", "n1", "--handle", "h", "--count", "300"], "the pools are full"),
        (["assign", "--node", "n1", "--handle", "h", "--pool", "10.9.0.0/16"], "does not exist"),
        (["assign", "--node", "n1", "--handle", "h", "--ip", "192.168.0.1"], "not in any"),
        (["gc", "--grace", "soon"], "not a duration"),
        (["configure", "--max-blocks-per-host", "-1"], "0 (no limit) or more"),
        (["release", "--from-report", "/nonexistent/r.json"], "cannot read report"),
    ],
)
def test_user_errors_exit_1_with_a_message(
    ds: str, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert run(ds, *args) == 1
    assert message in capsys.readouterr().err


def test_release_needs_exactly_one_selector(ds: str) -> None:
    with pytest.raises(SystemExit) as err:
        run(ds, "release", "--handle", "a", "--ip", "10.0.0.1")
    assert err.value.code == 2


def test_register_on_a_parser_of_our_own() -> None:
    parser = argparse.ArgumentParser()
    ctl_ipam.register(parser.add_subparsers())
    args = parser.parse_args(["ipam", "check", "-o", "r.json"])
    assert args.func is not None
    assert args.output == "r.json"


@pytest.mark.parametrize(
    ("text", "seconds"), [("900", 900.0), ("30s", 30.0), ("15m", 900.0), ("1.5h", 5400.0)]
)
def test_durations(text: str, seconds: float) -> None:
    assert ctl_ipam.parse_duration(text) == seconds
