"""Reading what the network tools print (``ip -j``, ``nft -j``, ``tc -j``, ``bpftool -j``).

Problem: the trace asks the kernel, through the tools users run, and must turn their JSON
into facts (the route's device and gateway, whether a set holds an element, which BPF program
is attached). Keeping the parsing here, as pure functions over text, is what lets the unit
tests feed recorded outputs and check the prediction logic without a lab.

Invariants: every function takes the tool's stdout as text and never raises on a shape it does
not know: missing fields read as ``None`` or empty (the tools drop fields freely between
versions), invalid JSON as "no answer".

Hazards: nftables set elements come in several shapes (plain values, ``prefix``, ``range``,
``concat``, and ``elem`` wrappers when a set has timeouts or counters); an element shape this
module does not know is skipped, so membership can only be under-reported, never invented.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, ip_address
from typing import Any


def load_json(text: str) -> Any:
    """The JSON in ``text`` or None (empty output, or not JSON)."""
    try:
        return json.loads(text) if text.strip() else None
    except json.JSONDecodeError:
        return None


def _first(data: Any) -> dict[str, Any] | None:
    if isinstance(data, list) and data and isinstance(data[0], dict):
        return data[0]
    return None


@dataclass(frozen=True)
class Route:
    """One answer of ``ip -j route get`` (or one ``ip -j route`` entry)."""

    type: str  # unicast, local, blackhole, unreachable, prohibit, ...
    dst: str
    dev: str | None
    gateway: str | None
    prefsrc: str | None
    protocol: str | None
    scope: str | None
    flags: tuple[str, ...]
    raw: dict[str, Any]

    @property
    def next_hop(self) -> str:
        """Where the frame goes on the link: the gateway, or the destination itself."""
        return self.gateway or self.dst.split("/")[0]

    def describe(self) -> str:
        """iproute2's one-line form (for routes read as JSON, e.g. in the diagram)."""
        parts = [] if self.type == "unicast" else [self.type]
        parts.append(self.dst)
        if self.gateway:
            parts += ["via", self.gateway]
        if self.dev and self.type not in ("blackhole", "unreachable", "prohibit"):
            parts += ["dev", self.dev]
        if self.protocol:
            parts += ["proto", self.protocol]
        if self.scope and self.scope != "global":
            parts += ["scope", self.scope]
        if self.prefsrc:
            parts += ["src", self.prefsrc]
        parts += list(self.flags)
        return " ".join(parts)


def route_from(entry: dict[str, Any]) -> Route:
    flags = entry.get("flags") or []
    return Route(
        type=str(entry.get("type") or "unicast"),
        dst=str(entry.get("dst", "")),
        dev=entry.get("dev"),
        gateway=entry.get("gateway"),
        prefsrc=entry.get("prefsrc"),
        protocol=None if entry.get("protocol") is None else str(entry["protocol"]),
        scope=entry.get("scope"),
        flags=tuple(str(f) for f in flags),
        raw=entry,
    )


def parse_route_get(text: str) -> Route | None:
    """The route of an ``ip -j route get`` answer (one element), or None."""
    entry = _first(load_json(text))
    return None if entry is None else route_from(entry)


def parse_routes(text: str) -> list[Route]:
    data = load_json(text)
    if not isinstance(data, list):
        return []
    return [route_from(e) for e in data if isinstance(e, dict)]


@dataclass(frozen=True)
class LinkInfo:
    name: str
    kind: str | None  # veth, ipip, vxlan, bridge, ... (None: a plain device such as lo)
    mac: str | None
    vxlan_id: int | None = None
    vxlan_port: int | None = None
    vxlan_local: str | None = None


def parse_links(text: str) -> dict[str, LinkInfo]:
    """``ip -j -d link show`` -> name -> link."""
    data = load_json(text)
    out: dict[str, LinkInfo] = {}
    if not isinstance(data, list):
        return out
    for entry in data:
        if not isinstance(entry, dict) or "ifname" not in entry:
            continue
        info = entry.get("linkinfo") or {}
        vx = info.get("info_data") or {} if info.get("info_kind") == "vxlan" else {}
        out[entry["ifname"]] = LinkInfo(
            name=entry["ifname"],
            kind=info.get("info_kind"),
            mac=entry.get("address"),
            vxlan_id=vx.get("id"),
            vxlan_port=vx.get("port"),
            vxlan_local=vx.get("local"),
        )
    return out


def parse_addresses(text: str, with_prefix: bool = False) -> list[tuple[str, str]]:
    """``ip -j -4 addr show`` -> [(device, address[/prefix])], without loopback addresses."""
    data = load_json(text)
    out: list[tuple[str, str]] = []
    if not isinstance(data, list):
        return out
    for entry in data:
        if not isinstance(entry, dict):
            continue
        for addr in entry.get("addr_info") or []:
            local = addr.get("local")
            if addr.get("family") == "inet" and local and not local.startswith("127."):
                shown = f"{local}/{addr.get('prefixlen')}" if with_prefix else str(local)
                out.append((str(entry.get("ifname")), shown))
    return out


@dataclass(frozen=True)
class Neighbour:
    dst: str
    lladdr: str | None
    state: tuple[str, ...]


def parse_neighbours(text: str) -> list[Neighbour]:
    data = load_json(text)
    if not isinstance(data, list):
        return []
    return [
        Neighbour(str(e.get("dst")), e.get("lladdr"), tuple(e.get("state") or ()))
        for e in data
        if isinstance(e, dict)
    ]


def parse_fdb(text: str) -> list[tuple[str, str]]:
    """``bridge -j fdb show dev D`` -> [(mac, remote IP)] for entries with a remote."""
    data = load_json(text)
    if not isinstance(data, list):
        return []
    return [
        (str(e["mac"]), str(e["dst"]))
        for e in data
        if isinstance(e, dict) and e.get("mac") and e.get("dst")
    ]


def parse_sysctl(text: str) -> int | None:
    try:
        return int(text.strip())
    except ValueError:
        return None


# -- nftables ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class NftTable:
    """The sets (elements as nft prints them) and rule comments of one table."""

    sets: dict[str, list[Any]]
    rules: dict[str, str]  # comment -> chain

    def has_set(self, name: str) -> bool:
        return name in self.sets

    def elements(self, name: str) -> list[str]:
        """The set's elements as short text (for display)."""
        return [_element_text(e) for e in self.sets.get(name, [])]

    def contains_addr(self, name: str, addr: str) -> bool:
        ip = ip_address(addr)
        return any(_addr_matches(_unwrap(e), ip) for e in self.sets.get(name, []))

    def contains_pair(self, name: str, ifname: str, addr: str) -> bool:
        """Membership of ``ifname . addr`` in a concatenated set (``type ifname . ipv4_addr``)."""
        ip = ip_address(addr)
        for element in self.sets.get(name, []):
            value = _unwrap(element)
            if isinstance(value, dict) and isinstance(value.get("concat"), list):
                first, second = (value["concat"] + [None, None])[:2]
                if first == ifname and _addr_matches(second, ip):
                    return True
        return False


def _unwrap(element: Any) -> Any:
    # Sets with timeouts or counters print {"elem": {"val": ..., ...}}.
    if isinstance(element, dict) and isinstance(element.get("elem"), dict):
        return element["elem"].get("val")
    return element


def _addr_matches(value: Any, ip: Any) -> bool:
    try:
        if isinstance(value, str):
            return bool(ip_address(value) == ip)
        if isinstance(value, dict) and "prefix" in value:
            p = value["prefix"]
            return ip in IPv4Network(f"{p['addr']}/{p['len']}", strict=False)
        if isinstance(value, dict) and "range" in value:
            lo, hi = value["range"]
            return bool(IPv4Address(lo) <= ip <= IPv4Address(hi))
    except (ValueError, KeyError, TypeError):
        return False
    return False


def _element_text(element: Any) -> str:
    value = _unwrap(element)
    if isinstance(value, dict) and "prefix" in value:
        return f"{value['prefix'].get('addr')}/{value['prefix'].get('len')}"
    if isinstance(value, dict) and "range" in value:
        return "-".join(str(v) for v in value["range"])
    if isinstance(value, dict) and "concat" in value:
        return " . ".join(f'"{v}"' if i == 0 else str(v) for i, v in enumerate(value["concat"]))
    return str(value)


def parse_nft_table(text: str) -> NftTable | None:
    """``nft -j list table inet tortie`` -> its sets and rules; None when there is no table."""
    data = load_json(text)
    if not isinstance(data, dict) or not isinstance(data.get("nftables"), list):
        return None
    sets: dict[str, list[Any]] = {}
    rules: dict[str, str] = {}
    seen_table = False
    for item in data["nftables"]:
        if not isinstance(item, dict):
            continue
        if "table" in item:
            seen_table = True
        elif "set" in item:
            s = item["set"]
            elem = s.get("elem") or []
            sets[str(s.get("name"))] = elem if isinstance(elem, list) else [elem]
        elif "rule" in item:
            rule = item["rule"]
            if rule.get("comment"):
                rules[str(rule["comment"])] = str(rule.get("chain"))
    return NftTable(sets, rules) if seen_table or sets else None


# -- tc and bpftool ---------------------------------------------------------------------------


def parse_tc_bpf(text: str) -> list[tuple[str, int]]:
    """``tc -j filter show dev D ingress|egress`` -> [(program name, program id)]."""
    data = load_json(text)
    out: list[tuple[str, int]] = []
    if not isinstance(data, list):
        return out
    for entry in data:
        prog = ((entry or {}).get("options") or {}).get("prog") if isinstance(entry, dict) else None
        if isinstance(prog, dict) and "id" in prog:
            out.append((str(prog.get("name", "")), int(prog["id"])))
    return out


def parse_node_bpf(text: str) -> list[tuple[str, int]]:
    """``tortie node bpf --dev D --hook H -o json`` -> [(program name, program id)]: tcx
    links and tc filters alike, in run order."""
    data = load_json(text)
    out: list[tuple[str, int]] = []
    if not isinstance(data, list):
        return out
    for entry in data:
        if isinstance(entry, dict) and "prog_id" in entry:
            out.append((str(entry.get("name", "")), int(entry["prog_id"])))
    return out


def parse_prog_map_ids(text: str) -> list[int]:
    data = load_json(text)
    if isinstance(data, dict):
        return [int(i) for i in data.get("map_ids") or []]
    return []


def parse_map_name(text: str) -> str | None:
    data = load_json(text)
    return str(data["name"]) if isinstance(data, dict) and "name" in data else None


def parse_ipv4_keys(text: str) -> list[str]:
    """``bpftool -j map dump`` of a map keyed by an IPv4 address (network order bytes)."""
    data = load_json(text)
    out: list[str] = []
    if not isinstance(data, list):
        return out
    for entry in data:
        key = entry.get("key") if isinstance(entry, dict) else None
        if isinstance(key, list) and len(key) == 4:
            try:
                out.append(str(IPv4Address(bytes(int(str(b), 16) for b in key))))
            except ValueError:
                continue
    return out
