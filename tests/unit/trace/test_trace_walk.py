"""The trace's walk over recorded namespace answers: each mode's journey, and broken labs.

The recordings are real (test_trace_recordings); the broken labs are the same recordings with
one answer changed, so each test shows which single fact of the kernel the verdict rests on.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from test_trace_recordings import BGP, CROSSSUBNET, IPIP, VXLAN
from test_trace_replay import Replay, answer, lab_of, replay, with_answers

from tortie.lab.errors import LabError, UnknownTargetError
from tortie.trace.model import Hop, Journey, Packet
from tortie.trace.run import TraceResult, trace

POD1, POD2 = "10.244.202.65", "10.244.165.65"  # the recordings' pod addresses (IPAM's choice)
NODE1, NODE2 = "192.168.49.2", "192.168.49.3"


def run(recording: dict[str, Any], src: str = "pod1", dst: str = "pod2") -> TraceResult:
    return trace(lab_of(recording), src, dst, runner=replay(recording))


def places(journey: Journey) -> list[str]:
    return [h.place.name for h in journey.hops]


def hop(journey: Journey, name: str) -> Hop:
    return next(h for h in journey.hops if h.place.name == name)


def kinds(h: Hop) -> list[str]:
    return [s.kind for s in h.steps]


def leaves(journey: Journey, name: str) -> Packet:
    packet = hop(journey, name).leaves
    assert packet is not None
    return packet


# -- the four modes -----------------------------------------------------------------------------


def test_ipip_pod_to_pod_is_the_seeds_journey() -> None:
    result = run(IPIP)
    request, reply = result.request, result.reply
    assert request.outcome == "delivered" and reply is not None and reply.outcome == "delivered"
    assert places(request) == ["pod1", "node1", "node2", "pod2"]
    assert places(reply) == ["pod2", "node2", "node1", "pod1"]
    # pod1: default via 169.254.1.1, answered by proxy ARP on the cali side.
    arp = next(s for s in hop(request, "pod1").steps if s.kind == "arp")
    assert arp.verdict == "answered"
    assert arp.data["mac"] == "ee:ee:ee:ee:ee:ee" and arp.data["proxyArp"] == 1
    # node1: anti-spoofing, the kernel's route via tunl0, encapsulation, the outer lookup.
    n1 = hop(request, "node1")
    assert kinds(n1) == ["firewall", "route", "nat", "encap", "route", "l2"]
    assert n1.steps[0].verdict == "accept"
    assert (
        n1.steps[1].data["matched"] == "10.244.165.64/26 via 192.168.49.3 dev tunl0 proto 80 onlink"
    )
    assert n1.steps[1].data["command"] == (f"ip route get {POD2} from {POD1} iif calice0906292e2")
    wire = leaves(request, "node1")
    assert wire.shape() == "IPIP" and wire.outer is not None
    assert (wire.outer.src, wire.outer.dst, wire.outer.proto) == (NODE1, NODE2, "ipip")
    assert (wire.inner.src, wire.inner.dst) == (POD1, POD2)
    assert n1.out_dev == "eth0"
    # node2: the outer packet is local, the BPF allowlist has node1, then iif tunl0 -> cali.
    n2 = hop(request, "node2")
    decap = next(s for s in n2.steps if s.kind == "decap")
    assert decap.verdict == "ipip" and decap.data["allowlist"] == [NODE1]
    inner_route = [s for s in n2.steps if s.kind == "route"][-1]
    assert inner_route.data["command"] == f"ip route get {POD2} from {POD1} iif tunl0"
    assert leaves(request, "node2").shape() == "plain"
    assert hop(request, "pod2").arrives == leaves(request, "node2")
    # The reply is the mirror image, encapsulated node2 -> node1.
    back = leaves(reply, "node2")
    assert back.outer is not None and (back.outer.src, back.outer.dst) == (NODE2, NODE1)
    assert back.icmp == "echo reply"


def test_a_node_sends_from_the_address_its_kernel_chooses() -> None:
    # Towards a tunl0 route the kernel picks the tunnel address (why Calico allocates one).
    result = run(IPIP, "node1", "pod2")
    assert result.src.address == "10.244.202.64" and not result.src.explicit_address
    first = result.request.hops[0].steps[0]
    assert first.data["command"] == f"ip route get {POD2}"
    assert result.delivered


def test_bgp_mode_routes_the_pod_addresses_natively() -> None:
    lab = lab_of(BGP)  # no tunnel addresses in BGP mode: IPAM gave the pods other addresses
    pod1, pod2 = lab.address("pod1"), lab.address("pod2")
    result = run(BGP)
    assert result.delivered
    n1 = hop(result.request, "node1")
    assert "encap" not in kinds(n1)
    route = n1.steps[1]
    assert route.data["matched"] == f"10.244.165.64/26 via {NODE2} dev eth0 proto 80"
    wire = leaves(result.request, "node1")
    assert wire.shape() == "plain" and (wire.inner.src, wire.inner.dst) == (pod1, pod2)
    assert "decap" not in kinds(hop(result.request, "node2"))


def test_vxlan_uses_the_neighbour_and_fdb_entries() -> None:
    result = run(VXLAN)
    assert result.delivered
    n1 = hop(result.request, "node1")
    encap = next(s for s in n1.steps if s.kind == "encap")
    assert encap.verdict == "vxlan"
    wire = leaves(result.request, "node1")
    assert wire.shape() == "VXLAN" and wire.outer is not None
    assert (wire.outer.src, wire.outer.dst, wire.outer.dport, wire.outer.vni) == (
        NODE1,
        NODE2,
        4789,
        4096,
    )
    n2 = hop(result.request, "node2")
    allow = next(s for s in n2.steps if s.kind == "firewall")
    assert allow.verdict == "accept" and allow.data["set"] == "node_ips"
    decap = next(s for s in n2.steps if s.kind == "decap")
    assert decap.verdict == "vxlan" and decap.data["device"] == "vxlan.calico"
    inner_route = [s for s in n2.steps if s.kind == "route"][-1]
    assert inner_route.data["command"].endswith("iif vxlan.calico")


def test_crosssubnet_encapsulates_only_across_subnets() -> None:
    lab = lab_of(CROSSSUBNET)
    pod3 = lab.address("pod3")
    far = trace(lab, "pod1", "pod3", runner=replay(CROSSSUBNET))
    assert far.delivered
    assert places(far.request) == ["pod1", "node1", "router", "node3", "pod3"]
    wire = leaves(far.request, "router")
    assert wire.shape() == "IPIP" and wire.outer is not None
    assert (wire.outer.src, wire.outer.dst) == (NODE1, "192.168.50.2")
    assert wire.inner.dst == pod3
    near = trace(lab, "pod1", "pod2", runner=replay(CROSSSUBNET))
    assert near.delivered
    assert places(near.request) == ["pod1", "node1", "node2", "pod2"]
    assert leaves(near.request, "node1").shape() == "plain"


def test_nat_outgoing_masquerades_and_the_reply_is_unmasqueraded() -> None:
    result = run(CROSSSUBNET, "pod1", "node3")
    assert result.delivered
    masq = result.request.masquerade
    assert masq is not None and (masq.place, masq.original_src, masq.new_src) == (
        "node1",
        POD1,
        NODE1,
    )
    assert leaves(result.request, "node1").inner.src == NODE1
    reply = result.reply
    assert reply is not None
    undo = next(s for s in hop(reply, "node1").steps if s.kind == "nat")
    assert undo.verdict == "unmasquerade"
    assert reply.delivered is not None and reply.delivered.inner.dst == POD1


# -- broken labs: one answer changed --------------------------------------------------------


def _without_workload(recording: dict[str, Any], node: str) -> dict[str, Any]:
    key = f"{node} nft -j list table inet tortie"
    table = answer(recording, key)
    for item in table["nftables"]:
        if item.get("set", {}).get("name") == "workload_src":
            item["set"]["elem"] = []
    return with_answers(recording, {key: (True, table)})


def test_anti_spoofing_drops_an_unknown_source() -> None:
    result = run(_without_workload(IPIP, "node1"))
    assert result.request.outcome == "dropped" and result.reply is None
    last = result.request.hops[-1]
    assert last.place.name == "node1" and last.steps[-1].verdict == "drop"
    assert "anti-spoofing" in result.request.reason


def test_decapsulation_drops_a_source_missing_from_the_bpf_allowlist() -> None:
    dump = next(k for k in IPIP["commands"] if k.startswith("node2 bpftool -j map dump"))
    broken = with_answers(IPIP, {dump: (True, [])})
    result = run(broken)
    assert result.request.outcome == "dropped"
    decap = next(s for s in result.request.hops[-1].steps if s.kind == "decap")
    assert decap.verdict == "drop" and decap.data["member"] is False


def _attached_by_tcx(recording: dict[str, Any]) -> dict[str, Any]:
    """The recording as a kernel 6.6+ lab shows it: ``tc filter show`` lists nothing (tortie's
    programs are tcx links), ``tortie node bpf`` lists them."""
    out = copy.deepcopy(recording)
    for key in [k for k in out["commands"] if " tc -j filter show dev " in k]:
        place, rest = key.split(" ", 1)
        dev, hook = rest.split()[-2:]
        programs = [
            {"dev": dev, "hook": hook, "attach": "tcx", "prog_id": e["options"]["prog"]["id"],
             "name": e["options"]["prog"]["name"], "link_id": 7, "pref": 0}
            for e in out["commands"][key][1]
            if "options" in e
        ]  # fmt: skip
        out["commands"][key] = (True, [])
        node_bpf = f"{place} tortie node bpf --dev {dev} --hook {hook} -o json"
        out["commands"][node_bpf] = (True, programs)
    return out


def test_programs_attached_as_tcx_links_are_found_by_tortie_node_bpf() -> None:
    tcx_lab = _attached_by_tcx(IPIP)
    runner = replay(tcx_lab)
    result = trace(lab_of(tcx_lab), "pod1", "pod2", runner=runner)
    assert result.delivered and result.reply is not None and result.reply.outcome == "delivered"
    encap = next(s for s in hop(result.request, "node1").steps if s.kind == "encap")
    asked = [" ".join(e.argv) for e in encap.evidence]
    assert asked == [
        "tc -j filter show dev tunl0 egress",
        "tortie node bpf --dev tunl0 --hook egress -o json",
    ]
    decap = next(s for s in hop(result.request, "node2").steps if s.kind == "decap")
    assert decap.data["allowlist"] == [NODE1]
    assert any(e.argv[0] == "tortie" for e in decap.evidence)
    # With tc filters (the recording as made), tortie node bpf is not asked.
    plain = replay(IPIP)
    trace(lab_of(IPIP), "pod1", "pod2", runner=plain)
    assert not any(" tortie " in k for k in plain.asked)


def test_tunl0_without_the_encap_program_goes_nowhere() -> None:
    key = "node1 tc -j filter show dev tunl0 egress"
    broken = with_answers(IPIP, {key: (True, [])})
    broken["commands"]["node1 tortie node bpf --dev tunl0 --hook egress -o json"] = (True, [])
    result = run(broken)
    assert result.request.outcome == "dropped"
    last = result.request.hops[-1].steps[-1]
    assert last.verdict == "drop" and "neither an ipip device" in last.summary
    assert [e.argv[0] for e in last.evidence] == ["tc", "tortie"]


def test_no_proxy_arp_no_gateway() -> None:
    key = "node1 sysctl -n net.ipv4.conf.calice0906292e2.proxy_arp"
    result = run(with_answers(IPIP, {key: (True, "0")}))
    assert result.request.outcome == "dropped"
    assert places(result.request) == ["pod1"]
    assert "169.254.1.1" in result.request.reason


def test_a_blackhole_answer_drops() -> None:
    text = f"ip route get {POD2} from {POD1} iif calice0906292e2"
    route = [{"type": "blackhole", "dst": POD2, "flags": []}]
    broken = with_answers(
        IPIP,
        {
            f"node1 {text}": (True, f"blackhole {POD2} from {POD1} dev lo"),
            f"node1 {text.replace('ip ', 'ip -j ', 1)}": (True, route),
        },
    )
    result = run(broken)
    assert result.request.outcome == "dropped"
    assert result.request.hops[-1].steps[-1].summary.startswith("a blackhole route")


def test_a_kernel_refusal_is_quoted_verbatim() -> None:
    key = f"node1 ip route get {POD2} from {POD1} iif calice0906292e2"
    refusal = "RTNETLINK answers: Invalid cross-device link"
    result = run(with_answers(IPIP, {key: (False, refusal)}))
    assert result.request.outcome == "dropped"
    assert refusal in result.request.reason
    route = result.request.hops[-1].steps[-1]
    assert route.verdict == "error" and route.data["answer"] == refusal


def test_a_next_hop_nobody_owns_leaves_the_lab() -> None:
    key = "node2 ip -j -4 addr show"
    addrs = [e for e in answer(IPIP, key) if e["ifname"] != "eth0"]
    result = run(with_answers(IPIP, {key: (True, addrs)}))
    assert result.request.outcome == "left-lab"
    assert NODE2 in result.request.reason


# -- endpoints ------------------------------------------------------------------------------


def test_endpoints_by_address() -> None:
    result = run(IPIP, POD1, NODE2)
    assert result.src.place is not None and result.src.place.name == "pod1"
    assert result.dst.place is not None and result.dst.place.name == "node2"


def test_unknown_names_and_outside_sources_are_refused() -> None:
    lab = lab_of(IPIP)
    with pytest.raises(UnknownTargetError, match="pod9"):
        trace(lab, "pod9", "pod1", runner=replay(IPIP))
    with pytest.raises(LabError, match=r"SRC 10\.9\.9\.9"):
        trace(lab, "10.9.9.9", "pod1", runner=replay(IPIP))


def test_capture_refuses_a_destination_outside_the_lab() -> None:
    lab = lab_of(IPIP)
    with pytest.raises(LabError, match="inside the lab"):
        trace(lab, "pod1", "10.9.9.9", capture=True, runner=replay(IPIP))


def test_a_lab_whose_namespaces_are_gone_is_refused() -> None:
    with pytest.raises(LabError, match="is not whole: cannot ask router"):
        trace(lab_of(IPIP), "pod1", "pod2", runner=Replay({}))


def test_the_trace_only_lists_and_looks_up() -> None:
    runner = replay(IPIP)
    trace(lab_of(IPIP), "pod1", "pod2", runner=runner)
    verbs = {tuple(k.split()[1:4]) for k in runner.asked}
    allowed_heads = {"ip", "nft", "tc", "bpftool", "sysctl", "bridge", "tortie"}
    assert {v[0] for v in verbs} <= allowed_heads
    for key in runner.asked:
        words = key.split()[1:]
        assert not {"add", "del", "delete", "replace", "flush", "change", "-w"} & set(words)


def test_json_is_serialisable_and_complete() -> None:
    data = run(IPIP).to_json()
    text = json.dumps(data)
    assert data["delivered"] is True and data["differences"] == []
    assert data["request"]["hops"][1]["leaves"]["shape"] == "IPIP"
    assert "ip route get" in text and data["capture"] is None
