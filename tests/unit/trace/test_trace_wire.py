"""tcpdump lines next to predictions: parsing, capture points, and the differences reported.

The tcpdump lines are verbatim (tcpdump 4.99 on Debian 12, ``-n -l``, in a lab).
"""

from __future__ import annotations

from test_trace_recordings import IPIP
from test_trace_replay import lab_of, replay

from tortie.trace.model import PROTO_ICMP, PROTO_IPIP, Header, Packet
from tortie.trace.run import trace
from tortie.trace.wire import (
    CapturePoint,
    capture_points,
    compare_point,
    join_packets,
    parse_packet,
)

IPIP_LINES = [
    "12:13:21.142581 IP 192.168.49.2 > 192.168.50.2: IP 10.244.202.65 > 10.244.106.193: "
    "ICMP echo request, id 23805, seq 1, length 64",
    "12:13:21.142648 IP 192.168.50.2 > 192.168.49.2: IP 10.244.106.193 > 10.244.202.65: "
    "ICMP echo reply, id 23805, seq 1, length 64",
]
PLAIN_LINES = [
    "12:13:21.146691 IP 10.244.202.65 > 10.244.106.193: ICMP echo request, id 23805, seq 1, "
    "length 64",
    "12:13:21.146740 IP 10.244.106.193 > 10.244.202.65: ICMP echo reply, id 23805, seq 1, "
    "length 64",
]
VXLAN_LINES = [
    "12:13:21.137999 IP 192.168.49.2.57833 > 192.168.49.3.4789: VXLAN, flags [I] (0x08), vni 4096",
    "IP 10.244.202.65 > 10.244.165.65: ICMP echo request, id 4242, seq 1, length 64",
    "12:13:21.138053 IP 192.168.49.3.57833 > 192.168.49.2.4789: VXLAN, flags [I] (0x08), vni 4096",
    "IP 10.244.165.65 > 10.244.202.65: ICMP echo reply, id 4242, seq 1, length 64",
]

REQUEST_IPIP = Packet(
    Header("10.244.202.65", "10.244.106.193", PROTO_ICMP),
    "echo request",
    Header("192.168.49.2", "192.168.50.2", PROTO_IPIP),
)
REPLY_IPIP = Packet(
    Header("10.244.106.193", "10.244.202.65", PROTO_ICMP),
    "echo reply",
    Header("192.168.50.2", "192.168.49.2", PROTO_IPIP),
)


def test_parse_the_three_shapes() -> None:
    ipip = parse_packet(join_packets(IPIP_LINES)[0])
    assert ipip is not None and ipip.icmp_id == 23805
    assert ipip.packet == REQUEST_IPIP
    plain = parse_packet(join_packets(PLAIN_LINES)[1])
    assert plain is not None and plain.packet.outer is None and plain.packet.icmp == "echo reply"
    vxlan = [parse_packet(p) for p in join_packets(VXLAN_LINES)]
    assert len(vxlan) == 2
    first = vxlan[0]
    assert first is not None and first.packet.outer is not None
    assert (first.packet.outer.dport, first.packet.outer.vni, first.icmp_id) == (4789, 4096, 4242)
    assert first.packet.inner.dst == "10.244.165.65"
    assert parse_packet("ARP, Request who-has 169.254.1.1 tell 10.244.202.65, length 28") is None


def test_a_predicted_packet_renders_like_tcpdump() -> None:
    assert REQUEST_IPIP.wire() == (
        "IP 192.168.49.2 > 192.168.50.2: IP 10.244.202.65 > 10.244.106.193: ICMP echo request"
    )
    assert join_packets(IPIP_LINES)[0].startswith(REQUEST_IPIP.wire())


def _point(**predicted: Packet) -> CapturePoint:
    lab = lab_of(IPIP)
    place = trace(lab, "pod1", "pod2", runner=replay(IPIP)).request.hops[1].place
    return CapturePoint(place, "eth0", dict(predicted))


def test_matching_capture_has_no_difference() -> None:
    result = compare_point(_point(request=REQUEST_IPIP, reply=REPLY_IPIP), IPIP_LINES, 23805)
    assert result.differences == ()
    assert len(result.observed["request"]) == 1 and len(result.observed["reply"]) == 1
    assert result.to_json()["request"]["match"] is True


def test_predicted_ipip_but_saw_plain() -> None:
    plain_request = PLAIN_LINES[0]
    result = compare_point(_point(request=REQUEST_IPIP), [plain_request], 23805)
    assert len(result.differences) == 1
    diff = result.differences[0]
    assert "predicted IPIP" in diff and "saw plain" in diff and "node1 eth0 request" in diff


def test_nothing_seen_and_unpredicted_packets_are_differences() -> None:
    missing = compare_point(_point(request=REQUEST_IPIP), [], 23805)
    assert missing.differences == (
        f"node1 eth0 request: predicted IPIP [{REQUEST_IPIP.wire()}], saw nothing",
    )
    extra = compare_point(_point(request=REQUEST_IPIP), IPIP_LINES, 23805)
    assert any("reply: not predicted here" in d for d in extra.differences)


def test_other_probes_do_not_count() -> None:
    # Another ping in the lab (another id) can neither satisfy nor break a prediction.
    result = compare_point(_point(request=REQUEST_IPIP), IPIP_LINES[:1], 1)
    assert result.observed["request"] == []
    assert "saw nothing" in result.differences[0]


def test_capture_points_are_the_wires_of_the_journey() -> None:
    result = trace(lab_of(IPIP), "pod1", "pod2", runner=replay(IPIP))
    points = capture_points([result.request, result.reply])
    assert [p.label for p in points] == ["pod1 eth0", "node1 eth0", "node2 eth0", "pod2 eth0"]
    node1 = points[1]
    assert node1.predicted["request"].shape() == "IPIP"
    assert node1.predicted["reply"].shape() == "IPIP"
    assert points[3].predicted["request"].shape() == "plain"
