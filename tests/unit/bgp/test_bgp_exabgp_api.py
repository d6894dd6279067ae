"""Parsing ExaBGP 5.0.15's JSON lines (real captures) and garbage; formatting commands."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network

from hypothesis import given, settings
from hypothesis import strategies as st

from tortie.bgp import exabgp_api as api

PEER = IPv4Address("10.99.0.2")
HEAD = (
    '{ "exabgp": "5.0.0", "time": 1795692841.57, "host" : "vm", "pid" : 32293, "ppid" : 32289, '
    '"counter": 1, '
)
NEIGHBOR = (
    '"neighbor": { "address": { "local": "10.99.0.1", "peer": "10.99.0.2" }, '
    '"asn": { "local": 64512, "peer": 64512 }, "router-id": "10.99.0.1" , '
)

# Lines as ExaBGP 5.0.15 wrote them in the field-notes experiment.
STATE_UP = HEAD + '"type": "state", ' + NEIGHBOR + '"state": "up" } }'
STATE_CONNECTED = HEAD + '"type": "state", ' + NEIGHBOR + '"state": "connected" } }'
STATE_DOWN_NOISE = (
    HEAD + '"type": "state", ' + NEIGHBOR + '"state": "down", "reason": "closing connection" } }'
)
STATE_DOWN_HOLD = (
    HEAD
    + '"type": "state", '
    + NEIGHBOR
    + '"state": "down", "reason": "notification sent (4,0) Hold timer expired" } }'
)
OPEN = (
    HEAD + '"type": "open", ' + NEIGHBOR + '"direction": "receive", "open": { "version": 4, '
    '"asn": 64512, "hold_time": 3, "router_id": "10.99.0.2", "capabilities": { "1": { "name": '
    '"multiprotocol", "families": [ "ipv4/unicast" ] }, "65": { "name": "asn4", "asn4": 64512 }, '
    '"64": { "name": "graceful restart", "time": 30, "address-family-flags": { "ipv4/unicast": '
    '[ "restart" ] }, "restart-flags": [ "forwarding" ]  }, "6": { "name": "extended-message", '
    '"size": 65535 } } } } }'
)
EOR = (
    HEAD + '"type": "update", ' + NEIGHBOR + '"direction": "receive", "message": { "eor": '
    '{ "afi" : "ipv4", "safi" : "unicast" } } } }'
)
ANNOUNCE = (
    HEAD + '"type": "update", ' + NEIGHBOR + '"direction": "receive", "message": { "update": { '
    '"attribute": { "origin": "igp", "local-preference": 100, "originator-id": "10.99.0.3", '
    '"cluster-list": [ "244.0.0.1" ] }, "announce": { "ipv4 unicast": { "10.99.0.3": [ '
    '{ "nlri": "10.244.3.0/26" }, { "nlri": "10.244.3.64/26" } ] } } } } } }'
)
WITHDRAW = (
    HEAD + '"type": "update", ' + NEIGHBOR + '"direction": "receive", "message": { "update": { '
    '"withdraw": { "ipv4 unicast": [ { "nlri": "10.244.3.0/26" } ] } } } } }'
)
NOTIFICATION = (
    HEAD + '"type": "notification", ' + NEIGHBOR + '"direction": "receive", "notification": '
    '{ "code": 6, "subcode": 2, "data": "0x", "message": "" }  } }'
)
SHUTDOWN = HEAD + '"type": "notification", "notification": "shutdown" }'


def test_acks() -> None:
    assert api.parse_line("done\n") == api.Ack(True)
    assert api.parse_line(b"error") == api.Ack(False)
    reload = api.parse_line("reload in progress")
    assert isinstance(reload, api.Ignored) and reload.reason.startswith("text from ExaBGP")


def test_states() -> None:
    assert api.parse_line(STATE_UP) == api.State(PEER, "up")
    assert api.parse_line(STATE_CONNECTED) == api.State(PEER, "connected")
    assert api.parse_line(STATE_DOWN_NOISE) == api.State(PEER, "down", "closing connection")
    down = api.parse_line(STATE_DOWN_HOLD)
    assert isinstance(down, api.State) and down.reason.startswith("notification sent (4,0)")


def test_open_graceful_restart_time() -> None:
    assert api.parse_line(OPEN) == api.Open(PEER, 30, 3)
    without = json.loads(OPEN)
    del without["neighbor"]["open"]["capabilities"]["64"]
    assert api.parse_line(json.dumps(without)) == api.Open(PEER, None, 3)
    sent = json.loads(OPEN)
    sent["neighbor"]["direction"] = "send"
    assert isinstance(api.parse_line(json.dumps(sent)), api.Ignored)


def test_updates() -> None:
    assert api.parse_line(EOR) == api.Update(PEER, eor=True)
    hop = IPv4Address("10.99.0.3")
    assert api.parse_line(ANNOUNCE) == api.Update(
        PEER,
        announce=(
            (IPv4Network("10.244.3.0/26"), hop),
            (IPv4Network("10.244.3.64/26"), hop),
        ),
    )
    assert api.parse_line(WITHDRAW) == api.Update(PEER, withdraw=(IPv4Network("10.244.3.0/26"),))


def test_notification_and_shutdown() -> None:
    assert api.parse_line(NOTIFICATION) == api.Notification(PEER, 6, 2, "receive")
    assert api.parse_line(SHUTDOWN) == api.Shutdown()


def test_bad_entries_are_skipped_one_by_one() -> None:
    doc = json.loads(ANNOUNCE)
    nlris = doc["neighbor"]["message"]["update"]["announce"]["ipv4 unicast"]["10.99.0.3"]
    nlris += [{"nlri": "10.244.3.1/26"}, {"nlri": "300.0.0.0/8"}, 42, "10.244.9.0/26"]
    doc["neighbor"]["message"]["update"]["announce"]["ipv6 unicast"] = {"::1": [{"nlri": "::/0"}]}
    doc["neighbor"]["message"]["update"]["announce"]["ipv4 unicast"]["no-nexthop"] = []
    parsed = api.parse_line(json.dumps(doc))
    assert isinstance(parsed, api.Update)
    assert [str(p) for p, _ in parsed.announce] == [
        "10.244.3.0/26",
        "10.244.3.64/26",
        "10.244.9.0/26",
    ]
    assert len(parsed.skipped) == 5


GARBAGE = [
    "",
    "   ",
    "{",
    '{"type": "state"',
    "[1, 2, 3]",
    "null",
    '"just a string"',
    '{"type": "state", "neighbor": "x"}',
    '{"type": "state", "neighbor": {"address": {"peer": "not-an-ip"}, "state": "up"}}',
    '{"type": "state", "neighbor": {"address": {"peer": "fd00::1"}, "state": "up"}}',
    '{"type": "state", "neighbor": {"address": {"peer": "10.0.0.1"}, "state": 7}}',
    '{"type": "update", "neighbor": {"address": {"peer": "10.0.0.1"}, "message": []}}',
    '{"type": "update", "neighbor": {"address": {"peer": "10.0.0.1"}, "message": '
    '{"update": {"announce": {"ipv4 unicast": {"10.0.0.1": "oops"}}}}}}',
    '{"type": "open", "neighbor": {"address": {"peer": "10.0.0.1"}, "direction": "receive"}}',
    '{"type": "notification", "neighbor": {"address": {"peer": "10.0.0.1"}}}',
    '{"type": "keepalive", "neighbor": {"address": {"peer": "10.0.0.1"}}}',
    "\x00\xff garbage \u2603",
    '{"type": "state", "neighbor": {"address": {"peer": "10.0.0.1"}, "state": "up"}} trailing',
    '{"a":' * 5000 + "1" + "}" * 5000,  # deeper than json's recursion limit
]


def test_garbage_is_ignored_not_raised() -> None:
    for line in GARBAGE:
        assert isinstance(api.parse_line(line), api.Ignored), line
    assert isinstance(api.parse_line(b"\xff\xfe\x00"), api.Ignored)


@given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
@settings(max_examples=500)
def test_any_input_parses_without_raising(line: str | bytes) -> None:
    api.parse_line(line)


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "type",
                    "neighbor",
                    "address",
                    "peer",
                    "state",
                    "message",
                    "update",
                    "announce",
                    "withdraw",
                    "ipv4 unicast",
                    "eor",
                    "afi",
                    "safi",
                    "nlri",
                    "open",
                    "capabilities",
                    "direction",
                    "10.0.0.1",
                    "notification",
                    "code",
                    "subcode",
                ]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=30,
)


@given(JSONISH)
@settings(max_examples=500)
def test_any_json_shape_parses_without_raising(doc: object) -> None:
    api.parse_line(json.dumps(doc))


def test_commands() -> None:
    p = IPv4Network("10.244.1.0/26")
    assert api.cmd_announce(p) == "announce route 10.244.1.0/26 next-hop self"
    assert (
        api.cmd_announce(p, PEER) == "neighbor 10.99.0.2 announce route 10.244.1.0/26 next-hop self"
    )
    assert api.cmd_withdraw(p) == "withdraw route 10.244.1.0/26 next-hop self"
    assert api.cmd_eor(PEER) == "neighbor 10.99.0.2 announce eor ipv4 unicast"
