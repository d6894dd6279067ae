"""tc filters on a clsact qdisc: what attaching them costs in packets (the kernel's facts).

Two namespaces joined by a veth pair (10.66.0.1 <-> 10.66.0.2), a flood of echoes across it
while the sender's device changes. The programs are bpf/ipip.c's ipip_decap: it passes every
packet that is not IPIP on to the rest of the hook, so a filter costs nothing by itself. These
are the facts tortie.dataplane.tc's hazard and the IPIP switching test rely on
(docs/bpf-attach.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dp_lab import Flood, Lab, build_bpf, lab, sh

from tortie.dataplane import tc
from tortie.dataplane.bpfsys import prog_id

GRAFTS = 30  # clsact add + delete cycles: each one is a moment with the device's queues off


@dataclass
class Pair:
    lab: Lab
    a: str
    b: str
    progs: tuple[Path, Path]  # ipip_decap loaded twice: two program ids to swap between

    def tx_dropped(self) -> int:
        out = sh("ip", "netns", "exec", self.a, "cat", "/sys/class/net/xa/statistics/tx_dropped")
        return int(out)


@pytest.fixture
def pair() -> Iterator[Pair]:
    obj = build_bpf()
    with lab() as the_lab:
        a, b = the_lab.netns("a"), the_lab.netns("b")
        the_lab.ip(a, "link", "add", "xa", "type", "veth", "peer", "name", "xb", "netns", b)
        the_lab.ip(a, "addr", "add", "10.66.0.1/24", "dev", "xa")
        the_lab.ip(b, "addr", "add", "10.66.0.2/24", "dev", "xb")
        the_lab.ip(a, "link", "set", "xa", "up")
        the_lab.ip(b, "link", "set", "xb", "up")
        pins = the_lab.bpffs("a")
        progs = []
        for copy in ("one", "two"):
            sh("bpftool", "prog", "loadall", str(obj), str(pins / copy), "type", "classifier",
               "pinmaps", str(pins / copy / "maps"))  # fmt: skip
            progs.append(pins / copy / "ipip_decap")
        yield Pair(the_lab, a, b, (progs[0], progs[1]))


def flood_while(pair: Pair, change: object) -> tuple[list[int], int, Flood]:
    """Flood a -> b at 1 kHz while ``change()`` runs; (unanswered echoes, tx_dropped delta)."""
    before = pair.tx_dropped()
    flood = Flood(pair.a, "10.66.0.2", interval=0.001)
    try:
        change()  # type: ignore[operator]
    finally:
        lost = flood.stop()
    return lost, pair.tx_dropped() - before, flood


def test_grafting_a_clsact_qdisc_drops_what_the_device_sends(pair: Pair) -> None:
    """The kernel's fact behind tortie.dataplane.tc's hazard: adding or deleting the clsact
    qdisc of a device that is up drops the packets it sends in that moment (``qdisc_graft``
    deactivates the transmit queues); each loss is in the device's tx_dropped. If this test
    starts failing, a kernel stopped doing it: tc.py's hazard and docs/bpf-attach.md can go."""

    def graft() -> None:
        for _ in range(GRAFTS):
            sh("ip", "netns", "exec", pair.a, "tc", "qdisc", "add", "dev", "xa", "clsact")
            sh("ip", "netns", "exec", pair.a, "tc", "qdisc", "del", "dev", "xa", "clsact")

    lost, dropped, flood = flood_while(pair, graft)
    assert lost, f"{len(flood.sent)} echoes, none lost across {2 * GRAFTS} grafts"
    assert len(lost) <= dropped, (lost, dropped)


def test_filters_on_an_existing_clsact_qdisc_drop_nothing(pair: Pair) -> None:
    """What tortie does on a device that has the qdisc: attach, swap the program in place
    (``tc filter replace``), remove, again and again under the flood: every echo answered.
    Only the first attachment adds the qdisc, and says so."""
    first = tc.ensure_bpf_filter("xa", "egress", str(pair.progs[0]), prog_id(pair.progs[0]), pair.a)
    assert first == ["added the clsact qdisc to xa", "attached ipip_decap to xa egress"]

    def churn() -> None:
        for i in range(GRAFTS):
            prog = pair.progs[(i + 1) % 2]
            changes = tc.ensure_bpf_filter("xa", "egress", str(prog), prog_id(prog), pair.a)
            assert changes == ["attached ipip_decap to xa egress"]
            if i % 3 == 2:
                assert tc.remove_bpf_filter("xa", "egress", pair.a)

    lost, dropped, flood = flood_while(pair, churn)
    assert len(flood.answered) >= 100, len(flood.answered)
    assert (lost, dropped) == ([], 0)
