"""NftablesManager against a fake nft: what it writes, when it writes nothing, how it recovers.

The fake interprets the small script vocabulary the manager writes (one statement per line,
all-or-nothing like an nft transaction) and answers listings in nft's JSON shapes. Real nft is
exercised by tests/netns/dataplane/test_nft_netns.py.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

import pytest

from tortie.dataplane.nft_exec import NftError
from tortie.dataplane.nftables import SET_NODE_IPS, SET_WORKLOADS, NftablesManager

Key = tuple[str, str]


@dataclass
class FakeTable:
    counters: dict[str, list[int]] = field(default_factory=dict)
    sets: dict[str, dict[str, Any]] = field(default_factory=dict)
    chains: dict[str, dict[str, Any]] = field(default_factory=dict)


def _block(text: str) -> list[str]:
    inner = text.strip()
    assert inner.startswith("{") and inner.endswith("}"), text
    return [e.strip() for e in inner[1:-1].split(",") if e.strip()]


class FakeNft:
    name = "fake"

    def __init__(self) -> None:
        self.tables: dict[Key, FakeTable] = {}
        self.scripts: list[str] = []
        self.listings: list[str] = []
        self.fail_when: list[str] = []  # a script containing one of these fails (once each)

    # -- writes -------------------------------------------------------------------------------

    def run(self, script: str) -> None:
        self.scripts.append(script)
        for marker in list(self.fail_when):
            if marker in script:
                self.fail_when.remove(marker)
                raise NftError(f"injected failure ({marker})", script)
        saved = copy.deepcopy(self.tables)
        try:
            for line in script.splitlines():
                self._statement(line)
        except NftError:
            self.tables = saved  # a transaction: all or nothing
            raise

    def _table(self, family: str, name: str) -> FakeTable:
        table = self.tables.get((family, name))
        if table is None:
            raise NftError("Error: No such file or directory")
        return table

    def _statement(self, line: str) -> None:
        m = re.match(r"(add|delete|flush) (\w+) (\w+) (\w+) ?(\S+)? ?(.*)$", line)
        assert m, line
        verb, kind, family, tname, name, rest = m.groups()
        if kind == "table":
            if verb == "add":
                self.tables.setdefault((family, tname), FakeTable())
            else:
                self._table(family, tname)
                del self.tables[(family, tname)]
            return
        table = self._table(family, tname)
        if kind == "counter":
            table.counters.setdefault(name, [0, 0])
        elif kind == "set":
            if verb == "add":
                types = tuple(re.search(r"type ([^;]+);", rest)[1].split(" . "))  # type: ignore[index]
                flags = ("interval",) if "flags interval" in rest else ()
                table.sets[name] = {"type": types, "flags": flags, "elem": set()}
            else:  # flush
                table.sets[name]["elem"] = set()
        elif kind == "chain":
            if verb == "add":
                m2 = re.search(r"type (\w+) hook (\w+) priority (-?\d+); policy (\w+);", rest)
                assert m2, rest
                t, h, p, pol = m2.groups()
                table.chains[name] = {"spec": (t, h, int(p), pol), "rules": []}
            elif verb == "delete":
                if name not in table.chains:
                    raise NftError("Error: No such file or directory")
                del table.chains[name]
            else:  # flush
                table.chains[name]["rules"] = []
        elif kind == "rule":
            comment = re.search(r'comment "([^"]+)"$', rest)
            table.chains[name]["rules"].append(comment[1] if comment else None)
        elif kind == "element":
            if name not in table.sets:
                raise NftError("Error: No such file or directory")
            elems = table.sets[name]["elem"]
            for element in _block(rest):
                if verb == "add":
                    elems.add(element)
                elif element in elems:
                    elems.remove(element)
                else:
                    raise NftError("Error: Could not process rule: No such file or directory")
        else:
            raise AssertionError(line)

    # -- listings -----------------------------------------------------------------------------

    @staticmethod
    def _elem_json(element: str, flags: tuple[str, ...]) -> Any:
        if element.startswith('"'):
            ifname, ip = element.split(" . ")
            return {"concat": [ifname.strip('"'), ip]}
        if "interval" in flags:
            addr, length = element.split("/")
            return addr if length == "32" else {"prefix": {"addr": addr, "len": int(length)}}
        return element

    def _set_json(self, family: str, tname: str, name: str, body: dict[str, Any], elems: bool):
        out: dict[str, Any] = {"family": family, "table": tname, "name": name}
        out["type"] = body["type"][0] if len(body["type"]) == 1 else list(body["type"])
        if body["flags"]:
            out["flags"] = list(body["flags"])
        if elems and body["elem"]:
            out["elem"] = [self._elem_json(e, body["flags"]) for e in sorted(body["elem"])]
        return {"set": out}

    def list_json(self, command: str, *, terse: bool = False) -> list[dict[str, Any]]:
        self.listings.append(command)
        words = command.split()
        if words == ["list", "tables"]:
            return [{"table": {"family": f, "name": n}} for f, n in self.tables]
        if words[:2] == ["list", "table"]:
            family, tname = words[2:]
            table = self._table(family, tname)
            objs: list[dict[str, Any]] = [{"table": {"family": family, "name": tname}}]
            for name, (packets, nbytes) in table.counters.items():
                objs.append(
                    {
                        "counter": {
                            "family": family,
                            "table": tname,
                            "name": name,
                            "packets": packets,
                            "bytes": nbytes,
                        }
                    }
                )
            for name, body in table.sets.items():
                objs.append(self._set_json(family, tname, name, body, not terse))
            for name, chain in table.chains.items():
                t, h, p, pol = chain["spec"]
                objs.append(
                    {
                        "chain": {
                            "family": family,
                            "table": tname,
                            "name": name,
                            "type": t,
                            "hook": h,
                            "prio": p,
                            "policy": pol,
                        }
                    }
                )
                for comment in chain["rules"]:
                    rule: dict[str, Any] = {"family": family, "table": tname, "chain": name}
                    if comment:
                        rule["comment"] = comment
                    objs.append({"rule": rule})
            return objs
        if words[:2] == ["list", "set"]:
            family, tname, name = words[2:]
            body = self._table(family, tname).sets.get(name)
            if body is None:
                raise NftError("Error: No such file or directory")
            return [self._set_json(family, tname, name, body, True)]
        if words[:3] == ["list", "counters", "table"]:
            return [
                o
                for o in self.list_json(f"list table {words[3]} {words[4]}", terse=True)
                if "counter" in o
            ]
        raise AssertionError(command)

    def close(self) -> None:
        pass

    # -- test helpers ---------------------------------------------------------------------------

    def elements(self, name: str, table: Key = ("inet", "tortie")) -> set[str]:
        return set(self.tables[table].sets[name]["elem"])


@pytest.fixture
def nft() -> FakeNft:
    fake = FakeNft()
    # Someone else's table: must come out of everything exactly as it went in.
    fake.run("add table inet foreign\nadd set inet foreign x { type ipv4_addr; }\n")
    fake.run("add element inet foreign x { 1.2.3.4 }\n")
    fake.scripts.clear()
    return fake


def manager(nft: FakeNft, **kwargs: Any) -> NftablesManager:
    return NftablesManager(executor=nft, **kwargs)


def pods(n: int) -> list[tuple[str, str]]:
    return [(f"cali{i:011x}", f"10.65.{i // 256}.{i % 256}") for i in range(n)]


def test_table_created_once_and_then_left_alone(nft: FakeNft) -> None:
    m = manager(nft)
    assert m.ensure_table() == ["created table inet tortie"]
    assert m.ensure_table() == []
    assert manager(nft).ensure_table() == []  # a restarted agent
    assert len(nft.scripts) == 1
    assert m.rule_count() == 3  # no NAT chain until a pool asks for natOutgoing


def test_first_set_call_creates_the_table_with_its_content(nft: FakeNft) -> None:
    m = manager(nft)
    assert m.set_node_ips(["192.168.49.2", "192.168.49.3"]) == ["created table inet tortie"]
    assert nft.elements(SET_NODE_IPS) == {"192.168.49.2", "192.168.49.3"}
    assert len(nft.scripts) == 1  # table and elements in one transaction


def test_only_the_element_delta_is_written(nft: FakeNft) -> None:
    m = manager(nft)
    m.ensure_table()
    endpoints = pods(100)
    assert m.set_workloads(endpoints) == ["workload_src: +100 -0 (100 now)"]
    nft.scripts.clear()
    assert m.set_workloads(list(reversed(endpoints))) == []
    assert nft.scripts == []
    new = ("calinew0000001", "10.65.9.9")
    assert m.set_workloads([*endpoints, new]) == ["workload_src: +1 -0 (101 now)"]
    assert nft.scripts == [
        'add element inet tortie workload_src { "calinew0000001" . 10.65.9.9 }\n'
    ]
    nft.scripts.clear()
    m.set_workloads([*endpoints[1:], new])
    assert nft.scripts == [
        'delete element inet tortie workload_src { "cali00000000000" . 10.65.0.0 }\n'
    ]
    assert len(nft.elements(SET_WORKLOADS)) == 100


def test_pools_collapse_and_nat_pools_count_as_pools(nft: FakeNft) -> None:
    m = manager(nft)
    m.ensure_table()
    changes = m.set_pools(["10.65.0.0/16", "10.65.7.0/24"], ["10.70.0.0/16"])
    assert changes[-2:] == ["nat_pool_cidrs: +1 -0 (1 now)", "pool_cidrs: +2 -0 (2 now)"]
    assert nft.elements("pool_cidrs") == {"10.65.0.0/16", "10.70.0.0/16"}
    assert nft.elements("nat_pool_cidrs") == {"10.70.0.0/16"}
    nft.scripts.clear()
    assert m.set_pools(["10.65.0.0/16"], ["10.70.0.0/16"]) == []
    assert m.set_pools(["10.65.0.0/16"], []) == [
        "deleted chain postrouting (no pool has natOutgoing)",
        "nat_pool_cidrs: +0 -1 (0 now)",
        "pool_cidrs: +0 -1 (1 now)",
    ]
    assert len(nft.scripts) == 2  # the chain, then both sets in one transaction


def test_restarted_manager_reads_the_kernel_and_writes_nothing(nft: FakeNft) -> None:
    m = manager(nft)
    m.set_node_ips(["192.168.49.2"])
    m.set_workloads(pods(50))
    m.set_pools(["10.65.0.0/16"], ["10.65.0.0/16"])
    nft.scripts.clear()
    fresh = manager(nft)
    assert fresh.ensure_table() == []
    assert fresh.set_node_ips(["192.168.49.2"]) == []
    assert fresh.set_workloads(pods(50)) == []
    assert fresh.set_pools(["10.65.0.0/16"], ["10.65.0.0/16"]) == []
    assert nft.scripts == []


def test_nat_chain_only_while_a_pool_has_nat_outgoing(nft: FakeNft) -> None:
    """A nat chain switches conntrack on for every packet: present only when needed."""
    m = manager(nft)
    m.set_pools(["10.65.0.0/16"], [])
    assert "postrouting" not in nft.tables[("inet", "tortie")].chains
    assert m.set_pools(["10.65.0.0/16"], ["10.65.0.0/16"]) == [
        "added chain postrouting",
        "nat_pool_cidrs: +1 -0 (1 now)",
    ]
    chain = nft.tables[("inet", "tortie")].chains["postrouting"]
    assert chain["spec"] == ("nat", "postrouting", 100, "accept") and len(chain["rules"]) == 1
    assert m.ensure_table() == [] and m.rule_count() == 4
    assert m.set_pools(["10.65.0.0/16"], [])[0] == (
        "deleted chain postrouting (no pool has natOutgoing)"
    )
    assert "postrouting" not in nft.tables[("inet", "tortie")].chains
    assert m.ensure_table() == [] and m.rule_count() == 3


def test_restarted_manager_keeps_the_nat_chain_until_it_knows_the_pools(nft: FakeNft) -> None:
    """Deleting it on the first write would drop live connections' NAT for a moment."""
    manager(nft).set_pools(["10.65.0.0/16"], ["10.65.0.0/16"])
    nft.scripts.clear()
    fresh = manager(nft)
    assert fresh.set_node_ips(["192.168.49.2"]) == ["node_ips: +1 -0 (1 now)"]
    assert "postrouting" in nft.tables[("inet", "tortie")].chains
    assert fresh.set_pools(["10.65.0.0/16"], [])[0].startswith("deleted chain postrouting")
    # ... and a table recreated from scratch before that has none.
    nft.run("delete table inet tortie\n")
    assert manager(nft).ensure_table() == ["created table inet tortie"]
    assert "postrouting" not in nft.tables[("inet", "tortie")].chains


def test_changed_rule_definition_replaces_only_that_chain(nft: FakeNft) -> None:
    manager(nft).set_node_ips(["192.168.49.2"])
    nft.scripts.clear()
    upgraded = manager(nft, vxlan_port=8472)  # a new version with another rule text
    assert upgraded.ensure_table() == ["replaced the rules of chain input"]
    (script,) = nft.scripts
    assert script.startswith("flush chain inet tortie input\n")
    assert "udp dport 8472" in script and "element" not in script and "set" not in script
    assert nft.elements(SET_NODE_IPS) == {"192.168.49.2"}  # contents untouched
    assert upgraded.ensure_table() == []


def test_tampered_rules_are_put_back(nft: FakeNft) -> None:
    m = manager(nft)
    m.set_pools(["10.65.0.0/16"], ["10.65.0.0/16"])
    nft.run("add rule inet tortie prerouting accept\n")  # someone adds a rule to our chain
    assert m.ensure_table() == ["replaced the rules of chain prerouting"]
    nft.run("flush chain inet tortie postrouting\n")
    assert m.ensure_table() == ["replaced the rules of chain postrouting"]
    assert m.rule_count() == 4


def test_structural_change_rebuilds_table_and_carries_contents_over(nft: FakeNft) -> None:
    manager(nft).set_node_ips(["192.168.49.2", "192.168.49.3"])
    table = nft.tables[("inet", "tortie")]
    table.sets["stray"] = {"type": ("ipv4_addr",), "flags": (), "elem": set()}
    table.chains["input"]["spec"] = ("filter", "input", 10, "accept")
    nft.scripts.clear()
    fresh = manager(nft)  # no desired state in memory: contents come from the kernel
    (change,) = fresh.ensure_table()
    assert change.startswith("recreated table inet tortie:")
    (script,) = nft.scripts
    assert script.startswith("add table inet tortie\ndelete table inet tortie\n")
    assert nft.elements(SET_NODE_IPS) == {"192.168.49.2", "192.168.49.3"}
    assert "stray" not in nft.tables[("inet", "tortie")].sets
    assert fresh.ensure_table() == []


def test_stale_cache_is_reread_and_the_delta_retried(nft: FakeNft) -> None:
    m = manager(nft)
    m.set_node_ips(["192.168.49.2", "192.168.49.3"])
    nft.run("delete element inet tortie node_ips { 192.168.49.3 }\n")  # behind our back
    assert m.set_node_ips(["192.168.49.2", "192.168.49.4"]) == ["node_ips: +1 -0 (2 now)"]
    assert nft.elements(SET_NODE_IPS) == {"192.168.49.2", "192.168.49.4"}


def test_deleted_table_is_recreated_with_every_known_set(nft: FakeNft) -> None:
    m = manager(nft)
    m.set_node_ips(["192.168.49.2"])
    m.set_workloads(pods(3))
    nft.run("delete table inet tortie\n")  # e.g. `nft flush ruleset` by an operator
    changes = m.set_node_ips(["192.168.49.2", "192.168.49.3"])
    assert changes[0] == "created table inet tortie"
    assert nft.elements(SET_NODE_IPS) == {"192.168.49.2", "192.168.49.3"}
    assert len(nft.elements(SET_WORKLOADS)) == 3


def test_refill_is_the_last_resort(nft: FakeNft) -> None:
    m = manager(nft)
    m.set_node_ips(["192.168.49.2", "192.168.49.3"])
    nft.fail_when += ["delete element", "delete element"]
    assert m.set_node_ips(["192.168.49.3"]) == ["node_ips: replaced all, 1 now"]
    assert nft.scripts[-1] == (
        "flush set inet tortie node_ips\nadd element inet tortie node_ips { 192.168.49.3 }\n"
    )
    assert nft.elements(SET_NODE_IPS) == {"192.168.49.3"}
    nft.fail_when += ["node_ips"] * 3
    with pytest.raises(NftError):
        m.set_node_ips(["192.168.49.9"])


def test_resync_fixes_drift_in_contents(nft: FakeNft) -> None:
    m = manager(nft)
    m.set_node_ips(["192.168.49.2"])
    m.set_workloads(pods(2))
    nft.run("add element inet tortie node_ips { 192.168.49.66 }\n")
    assert m.set_node_ips(["192.168.49.2"]) == []  # the cache does not know yet
    assert m.resync() == ["node_ips: +0 -1 (1 now)"]
    assert nft.elements(SET_NODE_IPS) == {"192.168.49.2"}


def test_counters_and_remove_touch_only_our_table(nft: FakeNft) -> None:
    m = manager(nft)
    assert m.counters() == {}
    m.ensure_table()
    nft.tables[("inet", "tortie")].counters["spoofed"] = [7, 420]
    assert m.counters() == {
        "ipip_dropped": 0,
        "ipip_dropped_bytes": 0,
        "vxlan_dropped": 0,
        "vxlan_dropped_bytes": 0,
        "spoofed": 7,
        "spoofed_bytes": 420,
    }
    foreign = copy.deepcopy(nft.tables[("inet", "foreign")])
    assert m.remove() == ["deleted table inet tortie"]
    assert m.remove() == []
    assert nft.tables == {("inet", "foreign"): foreign}
    assert all("foreign" not in s for s in nft.scripts)
    # Desired state was forgotten: a later call starts from an empty table.
    assert m.set_node_ips(["192.168.49.2"]) == ["created table inet tortie"]
    assert nft.elements(SET_WORKLOADS) == set()


def test_another_table_name_and_family() -> None:
    nft = FakeNft()
    m = NftablesManager(table="tortie_b", family="ip", executor=nft)
    m.set_node_ips(["192.168.49.2"])
    assert set(nft.tables) == {("ip", "tortie_b")}
