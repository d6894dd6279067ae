"""``tortie trace --capture`` in real labs: the predictions agree with the wire, per mode.

Each test builds a lab (real agents, the real CNI plugin) under a private TORTIE_LAB_ROOT,
waits until its pods reach each other (BGP has distributed the routes), then runs ``tortie
trace SRC DST --capture -o json`` and requires no difference between the predicted packet and
the captured one at any wire: IPIP (outer+inner on the underlay, inner only at the pod), BGP
mode (plain pod addresses), CrossSubnet (plain within a subnet, IPIP through the router across
subnets) and VXLAN (UDP 4789, VNI 4096). One more test proves that a wrong prediction *is*
reported, and every test checks that no tcpdump of ours survives. Labs are always torn down.
Traffic flows only between addresses inside the labs' namespaces.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from lab_e2e import LabCli, lab_cli, ping, unique_name

from tortie.ctl import trace as trace_cli
from tortie.lab.ops import Lab
from tortie.lab.procs import pids_with_token
from tortie.trace.capture import new_probe, run_capture
from tortie.trace.model import PROTO_IPIP, Header
from tortie.trace.places import lab_env
from tortie.trace.run import trace
from tortie.trace.wire import capture_points


@pytest.fixture
def cli() -> Iterator[LabCli]:
    with lab_cli() as c:
        yield c


def wait_until(what: str, ok: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def up(cli: LabCli, *args: str) -> Lab:
    name = unique_name("tr")
    cli.run("up", "--name", name, "-q", *args, timeout=120)
    lab = cli.open(name)
    pods = [p.name for p in lab.topology.pods]
    wait_until(
        "every pod reaches every other pod",
        lambda: all(ping(lab, a, b) for a in pods for b in pods if a != b),
    )
    return lab


def traced(
    cli: LabCli, lab: Lab, src: str, dst: str, capsys: pytest.CaptureFixture[str]
) -> dict[str, Any]:
    """``tortie trace --lab L SRC DST --capture -o json``, through the CLI's own handler."""
    parser = argparse.ArgumentParser(prog="tortie")
    trace_cli.register(parser.add_subparsers(dest="command"))
    argv = ["trace", "--lab", lab.state.name, "--root", str(cli.root), src, dst]
    args = parser.parse_args([*argv, "--capture", "-o", "json"])
    capsys.readouterr()
    status = args.func(args)
    data: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert data["differences"] == [], json.dumps(data["capture"], indent=1)
    assert status == 0
    assert data["delivered"] is True
    no_tcpdump_left(lab)
    return data


def no_tcpdump_left(lab: Lab) -> None:
    left = [
        pid
        for pid in pids_with_token(lab.state.token)
        if Path(f"/proc/{pid}/comm").read_text().strip() == "tcpdump"
    ]
    assert not left, f"tcpdump still running: {left}"


def point(data: dict[str, Any], label: str) -> dict[str, Any]:
    place, dev = label.split()
    return next(p for p in data["capture"]["points"] if (p["place"], p["dev"]) == (place, dev))


def shape(data: dict[str, Any], label: str, direction: str = "request") -> str:
    entry = point(data, label)[direction]
    assert entry["captured"], f"nothing captured at {label} ({direction})"
    return str(entry["predicted"]["shape"])


def test_ipip(cli: LabCli, capsys: pytest.CaptureFixture[str]) -> None:
    lab = up(cli, "--nodes", "2", "--mode", "ipip")
    data = traced(cli, lab, "pod1", "pod2", capsys)
    labels = [f"{p['place']} {p['dev']}" for p in data["capture"]["points"]]
    assert labels == ["pod1 eth0", "node1 eth0", "node2 eth0", "pod2 eth0"]
    assert [shape(data, x) for x in labels] == ["plain", "IPIP", "IPIP", "plain"]
    assert shape(data, "node2 eth0", "reply") == "IPIP"
    outer = point(data, "node1 eth0")["request"]["predicted"]["outer"]
    assert (outer["src"], outer["dst"], outer["proto"]) == ("192.168.49.2", "192.168.49.3", "ipip")


def test_bgp_mode(cli: LabCli, capsys: pytest.CaptureFixture[str]) -> None:
    lab = up(cli, "--nodes", "2", "--mode", "bgp")
    data = traced(cli, lab, "pod1", "pod2", capsys)
    assert shape(data, "node1 eth0") == "plain" and shape(data, "node2 eth0") == "plain"
    # A node as the source: the kernel's choice of address, then the same wire.
    traced(cli, lab, "node1", "pod2", capsys)
    # A wrong prediction is reported: claim IPIP where BGP mode sends plain packets.
    result = trace(lab, "pod1", "pod2")
    points = capture_points([result.request, result.reply])
    wrong = next(p for p in points if p.label == "node1 eth0")
    plain = wrong.predicted["request"]
    wrong.predicted["request"] = plain.encapsulated(
        Header("192.168.49.2", "192.168.49.3", PROTO_IPIP)
    )
    assert result.src.place is not None
    probe = new_probe(result.src.place, result.dst.address, None)
    report = run_capture(points, probe, lab_env(lab), delivered=True)
    assert len(report.differences) == 1, report.differences
    assert report.differences[0].startswith("node1 eth0 request: predicted IPIP")
    assert "saw plain" in report.differences[0]
    no_tcpdump_left(lab)
    assert replace(result, capture=report).differences == report.differences


def test_crosssubnet_same_and_different_subnet(
    cli: LabCli, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    lab = up(cli, "--nodes", "3", "--subnets", "2", "--mode", "crosssubnet")
    same = traced(cli, lab, "pod1", "pod2", capsys)
    assert shape(same, "node1 eth0") == "plain" and shape(same, "node2 eth0") == "plain"
    across = traced(cli, lab, "pod1", "pod3", capsys)
    assert shape(across, "node1 eth0") == "IPIP"
    assert shape(across, "router eth0") == "IPIP" and shape(across, "router eth1") == "IPIP"
    assert shape(across, "node3 eth0") == "IPIP" and shape(across, "pod3 eth0") == "plain"
    # natOutgoing: a pod to another node's address is masqueraded, the reply un-NATed.
    nat = traced(cli, lab, "pod1", "node3", capsys)
    assert nat["request"]["masquerade"]["newSrc"] == "192.168.49.2"
    # The same lab, drawn.
    for suffix in ("svg", "dot"):
        target = tmp_path / f"lab.{suffix}"
        cli.run("diagram", "--name", lab.state.name, "-o", str(target))
        text = target.read_text()
        assert "node3" in text and "via 192.168.50.2 dev tunl0" in text


def test_vxlan(cli: LabCli, capsys: pytest.CaptureFixture[str]) -> None:
    lab = up(cli, "--nodes", "2", "--mode", "vxlan")
    data = traced(cli, lab, "pod1", "pod2", capsys)
    assert shape(data, "node1 eth0") == "VXLAN" and shape(data, "node2 eth0", "reply") == "VXLAN"
    outer = point(data, "node1 eth0")["request"]["predicted"]["outer"]
    assert (outer["proto"], outer["dport"], outer["vni"]) == ("udp", 4789, 4096)
    assert shape(data, "pod2 eth0") == "plain"
