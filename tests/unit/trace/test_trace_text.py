"""The trace as text and through its CLI parser (no root: the handler is not run)."""

from __future__ import annotations

import argparse
import re

from test_trace_recordings import CROSSSUBNET, IPIP
from test_trace_replay import lab_of, replay

from tortie.ctl import trace as trace_cli
from tortie.trace.run import trace
from tortie.trace.text import WIDTH, format_trace, path_text


def test_text_tells_the_seeds_story() -> None:
    text = format_trace(trace(lab_of(IPIP), "pod1", "pod2", runner=replay(IPIP)))
    flat = " ".join(text.split())  # long explanations wrap
    for expected in (
        "REQUEST: 10.244.202.65 > 10.244.165.65, ICMP echo request",
        "$ ip route get 10.244.165.65 from 10.244.202.65 iif calice0906292e2",
        "(matched route: 10.244.165.64/26 via 192.168.49.3 dev tunl0 proto 80 onlink)",
        "proxy_arp=1, MAC ee:ee:ee:ee:ee:ee",
        "tunl0 encapsulates",
        "IP 192.168.49.2 > 192.168.49.3: IP 10.244.202.65 > 10.244.165.65: ICMP echo",
        "ipip_decap",
        "=> request delivered",
        "REPLY: 10.244.165.65 > 10.244.202.65, ICMP echo reply",
        "=> reply delivered",
    ):
        assert expected in flat, expected
    # Explanations wrap; only verbatim kernel answers and commands may run long.
    for line in text.splitlines():
        if len(line) > WIDTH:
            assert line.strip().startswith(("$ ", "(matched", "local ")) or " dev " in line


def test_the_path_in_one_line() -> None:
    result = trace(lab_of(IPIP), "pod1", "pod2", runner=replay(IPIP))
    assert path_text(result.request) == (
        "pod1 -> eth0 => node1 calice0906292e2 -> tunl0 (IPIP) -> eth0 => "
        "node2 eth0 (IPIP decapsulated) -> calibd2348b4f67 => pod2 eth0"
    )
    nat = trace(lab_of(CROSSSUBNET), "pod1", "node3", runner=replay(CROSSSUBNET))
    assert path_text(nat.request) == (
        "pod1 -> eth0 => node1 calice0906292e2 (masquerade) -> eth0 => router eth0 -> eth1 => "
        "node3 eth0"
    )


def test_verbose_names_every_command() -> None:
    result = trace(lab_of(IPIP), "pod1", "pod2", runner=replay(IPIP))
    assert "checked:" not in format_trace(result)
    verbose = format_trace(result, verbose=True)
    assert "checked: nft -j list table inet tortie (in node1)" in verbose
    assert re.search(r"checked: bpftool -j map dump id \d+ \(in node2\)", verbose)


def test_masquerade_is_told() -> None:
    text = format_trace(trace(lab_of(CROSSSUBNET), "pod1", "node3", runner=replay(CROSSSUBNET)))
    text = " ".join(text.split())
    assert "masquerade: source becomes 192.168.49.2" in text
    assert "(masqueraded on node1: 10.244.202.65 -> 192.168.49.2)" in text
    assert "conntrack: a reply of the masqueraded connection" in text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tortie")
    trace_cli.register(parser.add_subparsers(dest="command"))
    return parser


def test_cli_arguments() -> None:
    args = _parser().parse_args(
        ["trace", "--lab", "x", "pod1", "10.244.0.5", "--capture", "-o", "json"]
    )
    assert (args.lab, args.src, args.dst, args.capture, args.output) == (
        "x",
        "pod1",
        "10.244.0.5",
        True,
        "json",
    )
    assert args.func is trace_cli._trace
    defaults = _parser().parse_args(["trace", "pod1", "pod2"])
    assert (defaults.lab, defaults.capture, defaults.output, defaults.verbose) == (
        None,
        False,
        "text",
        False,
    )
