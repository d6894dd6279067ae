"""bench/ipip_profile.py's symbol mapping and dump parsing, without a guest."""

from __future__ import annotations

from benchmods import load

ipip_profile = load("ipip_profile")

SYSTEM_MAP = [
    "ffffffff81000000 T _text",
    "ffffffff81000100 T ip_rcv",
    "ffffffff81000200 t ip_rcv_core",
    "ffffffff81000300 D some_data",  # not text: ignored
]
KALLSYMS = [
    "ffffffffc0001000 t veth_xmit\t[veth]",
    "ffffffffc0002000 t bpf_prog_cc40f1682050f2ce_ipip_decap\t[bpf]",
]


def test_addresses_map_to_the_symbol_they_fall_in() -> None:
    symbols = ipip_profile.Symbols(SYSTEM_MAP + KALLSYMS)
    assert symbols.name(0xFFFFFFFF81000150) == "ip_rcv"
    assert symbols.name(0xFFFFFFFF81000200) == "ip_rcv_core"
    assert symbols.name(0xFFFFFFFF81000350) == "ip_rcv_core"  # data symbols are not bounds
    assert symbols.name(0xFFFFFFFFC0001010) == "veth_xmit [veth]"
    assert symbols.name(0xFFFFFFFFC0002040) == "bpf_prog_cc40f1682050f2ce_ipip_decap [bpf]"
    assert symbols.name(0x401000) == "[user]"
    assert symbols.name(0xFFFF800000000000) == "[unknown]"


def test_dumps_follow_markers_and_sum_retranslated_blocks() -> None:
    log = "\n".join(
        [
            "TORTIE-INSN 10 0",
            "TORTIE-TB-END",
            "TORTIE-INSN 20 0",
            "TORTIE-TB ffffffff81000100 5",
            "TORTIE-TB ffffffff81000100 7",  # the same block, translated twice
            "TORTIE-TB 401000 3",
            "TORTIE-TB-END",
        ]
    )
    dumps = ipip_profile.parse_dumps(log)
    assert dumps == [{}, {0xFFFFFFFF81000100: 12, 0x401000: 3}]
    symbols = ipip_profile.Symbols(SYSTEM_MAP)
    per_kb = ipip_profile.by_symbol(dumps[1], symbols, nbytes=1000)
    assert per_kb == {"ip_rcv": 12.0, "[user]": 3.0}


def test_table_sorts_by_what_the_tunnel_paths_add() -> None:
    text = ipip_profile.table(
        {
            "ideal": {"ip_rcv": 10.0, "copy": 50.0},
            "bpf": {"ip_rcv": 10.0, "copy": 50.0, "bpf_prog_x_ipip_encap [bpf]": 4.0},
        },
        top=2,
    )
    lines = text.splitlines()
    assert lines[0] == "| symbol | ideal | bpf | bpf - ideal |"
    assert lines[2] == "| **all** | 60 | 64 | +4 |"
    assert lines[3] == "| `bpf_prog_x_ipip_encap [bpf]` | 0.0 | 4.0 | +4.0 |"


def test_each_symbol_takes_its_median_over_rounds() -> None:
    rounds = [{"ip_rcv": 1.0, "tick": 9.0}, {"ip_rcv": 2.0}, {"ip_rcv": 3.0}]
    assert ipip_profile.median_by_symbol(rounds) == {"ip_rcv": 2.0, "tick": 0.0}
