"""``tortie lab`` argument handling that needs no root: parsing, --dry-run, listing, errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tortie.ctl import lab
from tortie.lab.errors import LabNotFoundError, LabOptionError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tortie")
    p.add_argument("--datastore")
    sub = p.add_subparsers(dest="command")
    lab.register(sub)
    return p


def run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


def test_up_options_parse() -> None:
    argv = "lab up --name x --nodes 3 --subnets 2 --mode bgp --pods-per-node 2"
    argv += " --route-reflectors 1 --wire-pods manual"
    args = parser().parse_args(argv.split())
    assert (args.name, args.nodes, args.subnets, args.mode) == ("x", 3, 2, "bgp")
    assert (args.pods_per_node, args.route_reflectors, args.wire_pods) == (2, 1, "manual")
    assert args.lab_datastore is None and not args.tor and not args.agents
    assert args.nat_outgoing is True
    assert parser().parse_args(["lab", "up", "--no-nat-outgoing"]).nat_outgoing is False


def test_exec_takes_everything_after_the_separator() -> None:
    args = parser().parse_args(["lab", "exec", "node1", "--", "ip", "-o", "route", "--x"])
    assert args.target == "node1"
    assert args.command in (["--", "ip", "-o", "route", "--x"], ["ip", "-o", "route", "--x"])


def test_dry_run_prints_the_plan(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["lab", "up", "--dry-run", "--nodes", "2", "--subnets", "2"]) == 0
    out = capsys.readouterr().out
    assert "ip netns add tl1-n2" in out
    assert "ip -n tl1-p1 route add default via 169.254.1.1 dev eth0" in out


def test_bad_option_is_a_lab_error() -> None:
    with pytest.raises(LabOptionError, match="--subnets 3 needs at least as many nodes"):
        run(["lab", "up", "--dry-run", "--nodes", "2", "--subnets", "3"])


def test_list_and_status_without_labs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(tmp_path / "labs")
    assert run(["lab", "list", "--root", root]) == 0
    assert "no labs under" in capsys.readouterr().out
    with pytest.raises(LabNotFoundError, match="tortie lab up"):
        run(["lab", "status", "--root", root])
