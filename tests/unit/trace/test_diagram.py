"""``lab diagram``: the picture gathered from recorded namespaces, the DOT text, the output."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

import pytest
from test_trace_recordings import CROSSSUBNET, VXLAN
from test_trace_replay import lab_of, replay

from tortie.ctl import lab as lab_cli
from tortie.lab.errors import LabError
from tortie.trace.diagram import (
    COLOUR_IPIP,
    COLOUR_NATIVE,
    COLOUR_VXLAN,
    gather,
    output_format,
    to_dot,
    write_diagram,
)
from tortie.trace.kernel import KernelView


def picture_of(recording: dict[str, Any]) -> str:
    return to_dot(gather(lab_of(recording), KernelView(replay(recording))))


def test_crosssubnet_picture_from_the_live_state() -> None:
    picture = gather(lab_of(CROSSSUBNET), KernelView(replay(CROSSSUBNET)))
    assert [s.network for s in picture.subnets] == ["192.168.49.0/24", "192.168.50.0/24"]
    assert [s.router_leg for s in picture.subnets] == [
        "eth0 192.168.49.1/24",
        "eth1 192.168.50.1/24",
    ]
    node1 = picture.nodes[0]
    assert ("eth0", "192.168.49.2/24") in node1.addresses
    assert node1.blocks == ("10.244.202.64/26",)
    assert any("tc-BPF placeholder" in t for t in node1.tunnels)
    # `ip -j route show proto 80` leaves out the protocol it filtered on.
    described = [r.describe() for r in node1.routes]
    assert "10.244.106.192/26 via 192.168.50.2 dev tunl0 onlink" in described
    assert "10.244.165.64/26 via 192.168.49.3 dev eth0" in described
    # The pod's own /32 shows as the cali edge, not among the node's routes.
    assert not any("cali" in d for d in described)
    pod1 = node1.pods[0]
    assert pod1.addresses == ("10.244.202.65/32",)
    assert pod1.host_ifname == "calice0906292e2"
    assert pod1.default_route.startswith("default via 169.254.1.1 dev eth0")


def test_dot_text() -> None:
    dot = picture_of(CROSSSUBNET)
    assert dot.startswith("graph lab {") and dot.rstrip().endswith("}")
    assert "subgraph cluster_subnet1" in dot and "subgraph cluster_subnet2" in dot
    assert 'router -- "bridge_2" [label="eth1 192.168.50.1/24"];' in dot
    assert '"node1" -- "pod1" [label="calice0906292e2"];' in dot
    assert f'<font color="{COLOUR_IPIP}">10.244.106.192/26 via 192.168.50.2 dev tunl0 onlink' in dot
    assert f'<font color="{COLOUR_NATIVE}">10.244.165.64/26 via 192.168.49.3 dev eth0' in dot
    assert dot == picture_of(CROSSSUBNET)  # stable: two drawings of one lab are equal


def test_vxlan_picture() -> None:
    dot = picture_of(VXLAN)
    assert "vxlan.calico: VXLAN VNI 4096, UDP 4789, local 192.168.49.2" in dot
    assert (
        f'<font color="{COLOUR_VXLAN}">10.244.165.64/26 via 10.244.165.64 dev vxlan.calico' in dot
    )


def test_output_formats(tmp_path: Path) -> None:
    assert output_format(Path("x.svg")) == "svg" and output_format(Path("x.PNG")) == "png"
    with pytest.raises(LabError, match=r"\.svg, \.png or \.dot"):
        output_format(Path("x.pdf"))
    target = tmp_path / "lab.dot"
    write_diagram("graph lab {}\n", target)
    assert target.read_text() == "graph lab {}\n"


def test_lab_diagram_subcommand() -> None:
    parser = argparse.ArgumentParser(prog="tortie")
    lab_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["lab", "diagram", "--name", "x", "-o", "lab.svg"])
    assert (args.name, args.output, args.func) == ("x", Path("lab.svg"), lab_cli._diagram)
    with pytest.raises(SystemExit):
        parser.parse_args(["lab", "diagram"])  # -o is required


def test_svg_through_graphviz(tmp_path: Path) -> None:
    if shutil.which("dot") is None:
        pytest.skip("graphviz's dot is not installed (apt-get install graphviz)")
    target = tmp_path / "lab.svg"
    write_diagram(picture_of(CROSSSUBNET), target)
    svg = target.read_text()
    assert "<svg" in svg and "node1" in svg and "10.244.106.192/26" in svg


def test_graphviz_errors_are_lab_errors(tmp_path: Path) -> None:
    if shutil.which("dot") is None:
        pytest.skip("graphviz's dot is not installed (apt-get install graphviz)")
    with pytest.raises(LabError, match="dot -Tsvg failed"):
        write_diagram("this is not dot", tmp_path / "bad.svg")
