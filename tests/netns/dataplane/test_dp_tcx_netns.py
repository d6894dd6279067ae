"""tcx links (kernel 6.6+) for pinned programs, and the listing of every tc hook's programs.

One namespace with a veth pair; the programs are bpf/ipip.c's (any tc program would do: none
of them sees a packet here). Skipped on kernels without tcx.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dp_lab import Lab, build_bpf, lab, sh

from tortie.dataplane import tc, tcx
from tortie.dataplane.bpfhooks import hook_programs


@dataclass
class Setup:
    lab: Lab
    ns: str
    pins: Path
    encap: Path
    decap: Path

    def ifindex(self, dev: str) -> int:
        return int(sh("ip", "netns", "exec", self.ns, "cat", f"/sys/class/net/{dev}/ifindex"))


@pytest.fixture
def setup() -> Iterator[Setup]:
    if not tcx.supported():
        pytest.skip("this kernel has no tcx (Linux 6.6+)")
    obj = build_bpf()
    with lab() as the_lab:
        ns = the_lab.netns("x")
        the_lab.ip(ns, "link", "add", "xa", "type", "veth", "peer", "name", "xb")
        pins = the_lab.bpffs("x")
        progs = pins / "progs"
        sh("bpftool", "prog", "loadall", str(obj), str(progs), "type", "classifier",
           "pinmaps", str(progs / "maps"))  # fmt: skip
        yield Setup(the_lab, ns, pins, progs / "ipip_encap", progs / "ipip_decap")


def test_a_link_is_made_once_and_its_program_swapped_in_place(setup: Setup) -> None:
    link = setup.pins / "link"
    xa = setup.ifindex("xa")
    made = tcx.ensure_link(link, setup.decap, xa, "ingress", setup.ns, dev="xa")
    assert made == "attached ipip_decap to xa ingress (tcx link)"
    info = tcx.pinned_link_info(link)
    assert info is not None and info.attached_to(xa, "ingress")
    assert tcx.ensure_link(link, setup.decap, xa, "ingress", setup.ns, dev="xa") is None
    swapped = tcx.ensure_link(link, setup.encap, xa, "ingress", setup.ns, dev="xa")
    assert swapped is not None and swapped.startswith("swapped program")
    after = tcx.pinned_link_info(link)
    assert after is not None and after.id == info.id  # the same link, a new program
    attached = tcx.query(xa, "ingress", setup.ns)
    assert [a.link_id for a in attached] == [info.id]
    assert tcx.query(xa, "egress", setup.ns) == []
    assert tcx.remove_link(link)
    assert not link.exists()
    assert tcx.query(xa, "ingress", setup.ns) == []
    assert not tcx.remove_link(link)


def test_a_link_whose_device_went_is_replaced_on_the_new_device(setup: Setup) -> None:
    link = setup.pins / "link"
    tcx.ensure_link(link, setup.decap, setup.ifindex("xa"), "ingress", setup.ns)
    setup.lab.ip(setup.ns, "link", "del", "xa")
    defunct = tcx.pinned_link_info(link)
    assert defunct is not None and defunct.ifindex == 0
    setup.lab.ip(setup.ns, "link", "add", "xa", "type", "veth", "peer", "name", "xb")
    xa = setup.ifindex("xa")
    assert tcx.ensure_link(link, setup.decap, xa, "ingress", setup.ns) is not None
    info = tcx.pinned_link_info(link)
    assert info is not None and info.attached_to(xa, "ingress")
    assert [a.link_id for a in tcx.query(xa, "ingress", setup.ns)] == [info.id]


def test_errors_say_what_and_where(setup: Setup) -> None:
    with pytest.raises(tcx.TcxError, match="no such device"):
        tcx.query(4242, "ingress", setup.ns)
    with pytest.raises(tcx.TcxError, match="no such device"):
        tcx.ensure_link(setup.pins / "link", setup.decap, 4242, "egress", setup.ns)
    assert not (setup.pins / "link").exists()


def test_listing_shows_tcx_and_tc_in_run_order(setup: Setup) -> None:
    tcx.ensure_link(setup.pins / "l1", setup.decap, setup.ifindex("xa"), "ingress", setup.ns)
    tc.ensure_bpf_filter("xa", "ingress", str(setup.encap), 0, setup.ns)
    tcx.ensure_link(setup.pins / "l2", setup.encap, setup.ifindex("xb"), "egress", setup.ns)
    found = [(p.dev, p.hook, p.attach, p.name) for p in hook_programs(setup.ns)]
    # Devices in ifindex order; on one hook, the order the kernel runs them (a stable sort).
    assert sorted(found, key=lambda f: f[0]) == [
        ("xa", "ingress", "tcx", "ipip_decap"),
        ("xa", "ingress", "tc", "ipip_encap"),
        ("xb", "egress", "tcx", "ipip_encap"),
    ]
    only = hook_programs(setup.ns, dev="xa", hook="ingress")
    assert [p.attach for p in only] == ["tcx", "tc"]
    assert only[1].pref == tc.TC_PREF and only[0].link_id > 0
    assert hook_programs(setup.ns, dev="xb", hook="ingress") == []


def test_tortie_node_bpf_prints_them(setup: Setup) -> None:
    """The operator's view, run in the node's namespace as the lab's trace runs it."""
    tcx.ensure_link(setup.pins / "l1", setup.decap, setup.ifindex("xa"), "ingress", setup.ns)

    def node_bpf(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["nsenter", f"--net=/run/netns/{setup.ns}", "--",
             sys.executable, "-m", "tortie.ctl.main", "node", "bpf", *args],
            capture_output=True, text=True, check=False,
        )  # fmt: skip

    text = node_bpf()
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].split() == ["DEV", "HOOK", "ATTACH", "PROG", "ID", "NAME"]
    assert lines[1].split()[:4] == ["xa", "ingress", "tcx", "link"]
    assert lines[1].split()[-1] == "ipip_decap"
    doc = json.loads(node_bpf("--dev", "xa", "--hook", "ingress", "-o", "json").stdout)
    assert [(d["attach"], d["name"]) for d in doc] == [("tcx", "ipip_decap")]
    assert json.loads(node_bpf("--dev", "xb", "-o", "json").stdout) == []
    missing = node_bpf("--dev", "nosuch0")
    assert missing.returncode == 1
    assert "no such device in this network namespace" in missing.stderr
