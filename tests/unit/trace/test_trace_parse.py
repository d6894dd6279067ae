"""Reading the tools' JSON: routes, links, nftables sets, tc filters and BPF maps."""

from __future__ import annotations

import json

from tortie.trace.parse import (
    parse_addresses,
    parse_fdb,
    parse_ipv4_keys,
    parse_links,
    parse_map_name,
    parse_neighbours,
    parse_nft_table,
    parse_node_bpf,
    parse_prog_map_ids,
    parse_route_get,
    parse_routes,
    parse_sysctl,
    parse_tc_bpf,
)


def test_route_get_answers() -> None:
    # Verbatim `ip -j route get` answers from a lab (iproute2 6.1).
    via_tunl0 = (
        '[{"type":"unicast","dst":"10.244.106.193","from":"10.244.202.65",'
        '"gateway":"192.168.50.2","dev":"tunl0","table":"main","flags":[],"cache":[],'
        '"iif":"calice0906292e2"}]'
    )
    route = parse_route_get(via_tunl0)
    assert route is not None
    assert (route.type, route.dev, route.gateway, route.next_hop) == (
        "unicast",
        "tunl0",
        "192.168.50.2",
        "192.168.50.2",
    )
    local = parse_route_get(
        '[{"type":"local","dst":"192.168.49.3","from":"192.168.49.2","dev":"lo",'
        '"flags":[],"cache":["local"],"iif":"eth0"}]'
    )
    assert local is not None and local.type == "local"
    direct = parse_route_get(
        '[{"dst":"192.168.50.2","gateway":"192.168.49.1","dev":"eth0","prefsrc":"192.168.49.2",'
        '"flags":[],"uid":0,"cache":[]}]'
    )
    assert direct is not None and direct.type == "unicast" and direct.prefsrc == "192.168.49.2"
    onlink = parse_route_get('[{"dst":"10.244.165.65","dev":"calibd2348b4f67","flags":[]}]')
    assert onlink is not None and onlink.next_hop == "10.244.165.65"
    assert parse_route_get("") is None
    assert parse_route_get("RTNETLINK answers: Network is unreachable") is None
    assert parse_route_get("[]") is None


def test_routes_describe_like_iproute2() -> None:
    routes = parse_routes(
        json.dumps(
            [
                {
                    "dst": "10.244.106.192/26",
                    "gateway": "192.168.50.2",
                    "dev": "tunl0",
                    "protocol": "80",
                    "flags": ["onlink"],
                },
                {"type": "blackhole", "dst": "10.244.202.64/26", "protocol": "80", "flags": []},
                {
                    "dst": "10.244.202.65",
                    "dev": "calice0906292e2",
                    "protocol": "80",
                    "scope": "link",
                    "flags": [],
                },
            ]
        )
    )
    assert [r.describe() for r in routes] == [
        "10.244.106.192/26 via 192.168.50.2 dev tunl0 proto 80 onlink",
        "blackhole 10.244.202.64/26 proto 80",
        "10.244.202.65 dev calice0906292e2 proto 80 scope link",
    ]


def test_links_and_vxlan_details() -> None:
    links = parse_links(
        json.dumps(
            [
                {
                    "ifname": "tunl0",
                    "address": "9e:90:3d:ff:f6:5a",
                    "linkinfo": {"info_kind": "veth"},
                },
                {
                    "ifname": "vxlan.calico",
                    "address": "2a:7f:a8:74:65:93",
                    "linkinfo": {
                        "info_kind": "vxlan",
                        "info_data": {"id": 4096, "local": "192.168.49.2", "port": 4789},
                    },
                },
                {"ifname": "lo", "address": "00:00:00:00:00:00"},
            ]
        )
    )
    assert links["tunl0"].kind == "veth"
    vx = links["vxlan.calico"]
    assert (vx.kind, vx.vxlan_id, vx.vxlan_port, vx.vxlan_local) == (
        "vxlan",
        4096,
        4789,
        "192.168.49.2",
    )
    assert links["lo"].kind is None


def test_addresses_skip_loopback() -> None:
    text = json.dumps(
        [
            {
                "ifname": "lo",
                "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}],
            },
            {
                "ifname": "eth0",
                "addr_info": [{"family": "inet", "local": "192.168.49.2", "prefixlen": 24}],
            },
        ]
    )
    assert parse_addresses(text) == [("eth0", "192.168.49.2")]
    assert parse_addresses(text, with_prefix=True) == [("eth0", "192.168.49.2/24")]


def test_neighbours_fdb_sysctl() -> None:
    assert (
        parse_neighbours(
            '[{"dst":"10.244.165.64","lladdr":"ee:0e:39:85:98:12","state":["PERMANENT"]}]'
        )[0].lladdr
        == "ee:0e:39:85:98:12"
    )
    assert parse_neighbours("[]") == []
    assert parse_fdb(
        '[{"mac":"ee:0e:39:85:98:12","dst":"192.168.49.3","flags":["self"],"state":"permanent"},'
        '{"mac":"33:33:00:00:00:01","flags":["self"],"state":"permanent"}]'
    ) == [("ee:0e:39:85:98:12", "192.168.49.3")]
    assert parse_sysctl("1\n") == 1
    assert parse_sysctl("sysctl: cannot stat") is None


NFT = {
    "nftables": [
        {"metainfo": {"version": "1.0.6"}},
        {"table": {"family": "inet", "name": "tortie"}},
        {"set": {"name": "node_ips", "elem": ["192.168.49.2", "192.168.49.3"]}},
        {"set": {"name": "pool_cidrs", "elem": [{"prefix": {"addr": "10.244.0.0", "len": 16}}]}},
        {"set": {"name": "ranges", "elem": [{"range": ["10.0.0.1", "10.0.0.9"]}]}},
        {"set": {"name": "timed", "elem": [{"elem": {"val": "192.168.50.2", "timeout": 60}}]}},
        {
            "set": {
                "name": "workload_src",
                "elem": [{"concat": ["calice0906292e2", "10.244.202.65"]}],
            }
        },
        {"set": {"name": "empty"}},
        {"rule": {"chain": "prerouting", "comment": "tortie:antispoof:1e1ebd563ee5"}},
    ]
}


def test_nft_set_membership_in_every_element_shape() -> None:
    table = parse_nft_table(json.dumps(NFT))
    assert table is not None
    assert table.contains_addr("node_ips", "192.168.49.3")
    assert not table.contains_addr("node_ips", "192.168.50.2")
    assert table.contains_addr("pool_cidrs", "10.244.165.65")
    assert not table.contains_addr("pool_cidrs", "192.168.49.2")
    assert table.contains_addr("ranges", "10.0.0.5") and not table.contains_addr(
        "ranges", "10.0.0.10"
    )
    assert table.contains_addr("timed", "192.168.50.2")
    assert table.contains_pair("workload_src", "calice0906292e2", "10.244.202.65")
    assert not table.contains_pair("workload_src", "calice0906292e2", "10.244.202.66")
    assert not table.contains_pair("workload_src", "calibd2348b4f67", "10.244.202.65")
    assert table.has_set("empty") and not table.contains_addr("empty", "1.2.3.4")
    assert not table.has_set("absent") and not table.contains_addr("absent", "1.2.3.4")
    assert table.elements("pool_cidrs") == ["10.244.0.0/16"]
    assert table.elements("workload_src") == ['"calice0906292e2" . 10.244.202.65']
    assert table.rules == {"tortie:antispoof:1e1ebd563ee5": "prerouting"}


def test_no_table_is_none() -> None:
    assert parse_nft_table("") is None
    assert parse_nft_table('{"nftables": [{"metainfo": {}}]}') is None


def test_tc_and_bpftool() -> None:
    tc = (
        '[{"protocol":"all","pref":100,"kind":"bpf","chain":0},{"protocol":"all","pref":100,'
        '"kind":"bpf","chain":0,"options":{"handle":"0x1","bpf_name":"ipip_decap:[*fsobj]",'
        '"direct-action":true,"not_in_hw":true,"prog":{"id":1251,"name":"ipip_decap",'
        '"tag":"cc40f1682050f2ce","jited":1}}}]'
    )
    assert parse_tc_bpf(tc) == [("ipip_decap", 1251)]
    assert parse_tc_bpf("") == []
    # `tortie node bpf -o json`: tcx links and tc filters, in run order.
    node_bpf = (
        '[{"dev":"eth0","hook":"ingress","attach":"tcx","prog_id":12,"name":"ipip_decap",'
        '"link_id":3,"pref":0},{"dev":"eth0","hook":"ingress","attach":"tc","prog_id":14,'
        '"name":"other","link_id":0,"pref":200}]'
    )
    assert parse_node_bpf(node_bpf) == [("ipip_decap", 12), ("other", 14)]
    assert parse_node_bpf("") == [] and parse_node_bpf('{"error": 1}') == []
    assert parse_prog_map_ids('{"id":1251,"name":"ipip_decap","map_ids":[619,620,618]}') == [
        619,
        620,
        618,
    ]
    assert parse_map_name('{"id":618,"name":"ipip_allow"}') == "ipip_allow"
    dump = (
        '[{"key":["0xc0","0xa8","0x31","0x03"],"value":["0x01","0x00","0x00","0x00"]},'
        '{"key":["0xc0","0xa8","0x32","0x02"],"value":["0x01","0x00","0x00","0x00"]}]'
    )
    assert parse_ipv4_keys(dump) == ["192.168.49.3", "192.168.50.2"]
