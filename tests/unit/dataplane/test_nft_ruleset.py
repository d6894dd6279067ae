"""tortie's nftables table as data: the script text, elements, parsing nft's JSON, deltas."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from tortie.dataplane.nftables import (
    SET_NAT_POOLS,
    SET_NODE_IPS,
    SET_POOLS,
    SET_WORKLOADS,
    ObservedTable,
    create_script,
    delta_script,
    node_element,
    parse_elements,
    parse_table,
    pool_elements,
    refill_script,
    structural_differences,
    tortie_ruleset,
    workload_element,
)


def test_ruleset_is_four_rules_over_sets() -> None:
    rs = tortie_ruleset()
    assert rs.ref == "inet tortie"
    assert [c.name for c in rs.chains] == ["prerouting", "input", "postrouting"]
    assert sum(len(c.rules) for c in rs.chains) == 4
    script = create_script(rs, {})
    assert script.splitlines()[:4] == [
        "add table inet tortie",
        "add counter inet tortie ipip_dropped",
        "add counter inet tortie vxlan_dropped",
        "add counter inet tortie spoofed",
    ]
    assert "add set inet tortie pool_cidrs { type ipv4_addr; flags interval; }" in script
    assert "add set inet tortie workload_src { type ifname . ipv4_addr; }" in script
    assert (
        "add chain inet tortie prerouting { type filter hook prerouting priority -300; "
        "policy accept; }" in script
    )
    assert (
        "add chain inet tortie postrouting { type nat hook postrouting priority 100; "
        "policy accept; }" in script
    )
    rules = [line for line in script.splitlines() if line.startswith("add rule")]
    assert len(rules) == 4
    assert rules[0].startswith(
        'add rule inet tortie prerouting iifname "cali*" iifname . ip saddr != @workload_src '
        'counter name "spoofed" drop comment "tortie:antispoof:'
    )
    assert 'ip protocol 4 ip saddr != @node_ips counter name "ipip_dropped" drop' in rules[1]
    assert 'udp dport 4789 ip saddr != @node_ips counter name "vxlan_dropped" drop' in rules[2]
    assert "ip saddr @nat_pool_cidrs ip daddr != @pool_cidrs masquerade" in rules[3]
    # No rule ever accepts: other tables keep their say.
    assert " accept" not in "\n".join(rules)
    assert "element" not in script  # no contents given, none written


def test_rule_comments_change_only_with_their_definition() -> None:
    base = {r.name: r.comment for c in tortie_ruleset().chains for r in c.rules}
    other = {r.name: r.comment for c in tortie_ruleset(vxlan_port=8472).chains for r in c.rules}
    assert {n for n in base if base[n] != other[n]} == {"vxlan"}
    assert base == {r.name: r.comment for c in tortie_ruleset().chains for r in c.rules}
    assert all(c.startswith(f"tortie:{n}:") for n, c in base.items())


def test_names_are_validated() -> None:
    with pytest.raises(ValueError):
        tortie_ruleset(table="tortie; flush ruleset")
    with pytest.raises(ValueError):
        tortie_ruleset(family="inet tortie")
    with pytest.raises(ValueError):
        tortie_ruleset(workload_prefix='cali"')


def test_elements() -> None:
    assert node_element("192.168.49.2") == "192.168.49.2"
    assert workload_element("cali1234567890a", IPv4Address("10.65.1.2")) == (
        '"cali1234567890a" . 10.65.1.2'
    )
    for bad in ('cali"x', "cali*", "cali x", "cali1234567890ab", "", "cali\\n"):
        with pytest.raises(ValueError):
            workload_element(bad, "10.65.1.2")
    with pytest.raises(ValueError):
        workload_element("cali1", "10.65.1.256")
    # Overlapping and adjacent pools collapse: interval sets refuse overlaps.
    assert pool_elements(["10.65.0.0/16", "10.65.3.0/24", "10.64.0.0/16", "10.80.0.1/32"]) == {
        "10.64.0.0/15",
        "10.80.0.1/32",
    }


def test_parse_elements_of_every_shape_nft_prints() -> None:
    rs = tortie_ruleset()
    assert parse_elements(rs.set_def(SET_NODE_IPS), ["192.168.49.2", {"elem": {"val": "1.2.3.4"}}])
    assert parse_elements(rs.set_def(SET_POOLS), []) == frozenset()
    pools = parse_elements(
        rs.set_def(SET_POOLS),
        [
            {"prefix": {"addr": "10.65.0.0", "len": 16}},
            "10.80.0.1",  # a /32 in an interval set
            {"range": ["10.90.0.0", "10.90.1.127"]},  # what someone else may have written
        ],
    )
    assert pools == {"10.65.0.0/16", "10.80.0.1/32", "10.90.0.0/24", "10.90.1.0/25"}
    assert parse_elements(rs.set_def(SET_WORKLOADS), [{"concat": ["cali1", "10.65.1.2"]}]) == {
        '"cali1" . 10.65.1.2'
    }


def test_delta_deletes_then_adds_and_nothing_when_equal() -> None:
    rs = tortie_ruleset()
    have = frozenset({"192.168.49.2", "192.168.49.3"})
    want = frozenset({"192.168.49.3", "192.168.49.4", "192.168.49.5"})
    assert delta_script(rs, SET_NODE_IPS, have, want) == (
        "delete element inet tortie node_ips { 192.168.49.2 }\n"
        "add element inet tortie node_ips { 192.168.49.4, 192.168.49.5 }\n"
    )
    assert delta_script(rs, SET_NODE_IPS, want, want) == ""
    assert refill_script(rs, SET_NAT_POOLS, frozenset()) == (
        "flush set inet tortie nat_pool_cidrs\n"
    )


def _listing(rs_family: str = "inet") -> list[dict[str, dict[str, object]]]:
    rs = tortie_ruleset()
    objs: list[dict[str, dict[str, object]]] = [
        {"table": {"family": rs_family, "name": "tortie", "handle": 1}},
        {"table": {"family": "inet", "name": "foreign", "handle": 2}},
        {"set": {"family": "inet", "table": "foreign", "name": "x", "type": "ipv4_addr"}},
    ]
    objs += [
        {"counter": {"family": "inet", "table": "tortie", "name": n, "packets": 3, "bytes": 9}}
        for n in rs.counters
    ]
    for s in rs.sets:
        body: dict[str, object] = {
            "family": "inet",
            "table": "tortie",
            "name": s.name,
            "type": s.type[0] if len(s.type) == 1 else list(s.type),
        }
        if s.flags:
            body["flags"] = list(s.flags)
        objs.append({"set": body})
    for c in rs.chains:
        objs.append(
            {
                "chain": {
                    "family": "inet",
                    "table": "tortie",
                    "name": c.name,
                    "type": c.type,
                    "hook": c.hook,
                    "prio": c.priority,
                    "policy": c.policy,
                }
            }
        )
        objs += [
            {"rule": {"family": "inet", "table": "tortie", "chain": c.name, "comment": r.comment}}
            for r in c.rules
        ]
    return objs


def test_parse_table_reads_only_our_table() -> None:
    rs = tortie_ruleset()
    seen = parse_table(_listing(), rs)
    assert seen.rule_count == 4 and seen.other == []
    assert set(seen.counters) == set(rs.counters)
    assert "x" not in seen.sets
    assert structural_differences(rs, seen) == []


def test_structural_differences_are_reported() -> None:
    rs = tortie_ruleset()
    seen = parse_table(_listing(), rs)
    seen.sets[SET_WORKLOADS] = (("ipv4_addr",), ())
    seen.chains["input"] = ("filter", "input", 10, "accept")
    seen.other.append("flowtable f")
    why = structural_differences(rs, seen)
    assert len(why) == 3
    assert structural_differences(rs, ObservedTable())  # an empty table is all wrong
