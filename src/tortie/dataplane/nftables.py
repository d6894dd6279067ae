"""tortie's nftables table: IPIP/VXLAN allowlist, anti-spoofing and natOutgoing at constant size.

Problem: Calico in iptables mode grows rules with nodes and pods. Here every per-node and
per-pod fact is a *set element*, and the rules (four of them; three while no pool has
natOutgoing) only refer to sets, so adding a node or a pod is one element in one set (a 0.2 ms
transaction; about 4 ms for the whole ``set_workloads`` call with 5,000 pods, diffing
included), and the rule count never changes (bench/nft.py: the same four rules with 2 nodes/2
pods and with 500 nodes/5,000 pods).

The table (``inet tortie`` by default)::

    counters  ipip_dropped, vxlan_dropped, spoofed
    sets      node_ips        ipv4_addr                  every node's address
              pool_cidrs      ipv4_addr, interval        every IP pool
              nat_pool_cidrs  ipv4_addr, interval        pools with natOutgoing
              workload_src    ifname . ipv4_addr         (host-side interface, pod address)
    chain prerouting  (filter, prerouting, raw -300): a packet arriving on a workload interface
          (``cali*``) whose ``iifname . ip saddr`` is not in workload_src: count ``spoofed``,
          drop. At raw priority, so a spoofed packet never creates conntrack state.
    chain input (filter, input, 0): IPIP (ip protocol 4) or VXLAN (udp dport 4789) to this
          node from an address not in node_ips: count, drop.
    chain postrouting (nat, postrouting, srcnat 100): source in nat_pool_cidrs and destination
          outside pool_cidrs: masquerade (pod -> pod and pod -> any pool is never NATed).
          Only while some pool has natOutgoing (below).

Connection tracking on demand: a ``nat`` chain makes the kernel track every connection in the
namespace, pod to pod included: a conntrack lookup per packet, measured at 5-8 % of pod-to-pod
TCP throughput here (bench/README.md). So the postrouting chain exists only while some pool
has natOutgoing; with none, tortie's table switches no conntrack on (the other chains are
``filter`` chains). Until the manager is told the pools (:meth:`NftablesManager.set_pools`),
an existing postrouting chain is left as found: an agent restart must not drop the NAT of
live connections for the moment between its first write and its pool sync.

Ownership: tortie only ever writes its own table (``table``/``family``); nothing else on the
host is read or written, and nothing is flushed outside it. Everything in that table is ours:
an object we did not define there is removed on :meth:`NftablesManager.ensure_table`.

Invariants:
- Our rules never ``accept``: in nftables a packet must pass every base chain of every table,
  so an accept here would not override anyone's drop, and a drop for non-members is the only
  verdict we need. Other tables keep full control over everything else.
- Each rule carries ``comment "tortie:<name>:<hash of its text>"``: a restarted agent
  recognises its rules and replaces a chain's rules only when a definition changed.
- Each ``set_*`` takes the complete desired content and applies only the element delta,
  deletes and adds in one ``nft`` transaction (atomic: no moment with a half-applied change).
- Pools are normalised (overlaps and adjacent CIDRs collapsed) before they reach an interval
  set, which refuses overlapping elements.

Hazards:
- Known contents of the sets are cached after each successful write; someone else editing
  our sets is noticed when a write fails (then we re-read and retry, and as a last resort
  replace the set's contents atomically) or on :meth:`NftablesManager.resync`.
- A changed set type or chain hook means the table is rebuilt in one transaction (contents
  carried over): named counters restart from zero then.
- NAT decisions are made on a connection's first packet: changing pools does not re-NAT
  existing connections (conntrack keeps them until they end). Removing natOutgoing from the
  last pool deletes the chain, which ends the translation of connections NATed so far.
  Connection tracking stops a moment later, not with the commit: the kernel releases it
  when the masquerade expression is destroyed, which nftables defers to a work queue.
- IPv4 only: IPv6 from workloads is neither checked nor NATed.
- A workload interface is only usable once its element is in ``workload_src``: the CNI
  plugin wires a pod before the agent hears of it, and until the agent's ``set_workloads``
  (about 4 ms at 5,000 pods) the pod's packets are dropped as spoofed (Felix likewise drops
  traffic from workload interfaces it has not programmed yet).
- IPIP through the tc-BPF backend is decapsulated at tc ingress, before netfilter: the input
  chain never sees it there (that backend has its own allowlist map). It does see IPIP for
  the kernel backend and all VXLAN (decapsulated after local input).
- One manager, one thread (the agent's reconciler loop): the set caches are not locked.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network, collapse_addresses, summarize_address_range
from typing import Any

from tortie.dataplane.netns import NetnsRef
from tortie.dataplane.nft_exec import JsonObject, NftError, NftExecutor, make_executor
from tortie.model.naming import NFT_TABLE, WORKLOAD_PREFIX

log = logging.getLogger(__name__)

DEFAULT_TABLE = NFT_TABLE
DEFAULT_FAMILY = "inet"
VXLAN_PORT = 4789

SET_NODE_IPS = "node_ips"
SET_POOLS = "pool_cidrs"
SET_NAT_POOLS = "nat_pool_cidrs"
NAT_CHAIN = "postrouting"  # present only while some pool has natOutgoing (module docstring)
SET_WORKLOADS = "workload_src"
COUNTERS = ("ipip_dropped", "vxlan_dropped", "spoofed")

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
# Interface names as elements are written into nft scripts inside quotes: allow only what
# interface names use in practice, so a name can never end the string, add a wildcard (*) or
# start another statement.
_IFNAME = re.compile(r"^[A-Za-z0-9_.@+\-]{1,15}$")

Element = str  # an element as written in a script, e.g. '"cali1234" . 10.65.1.2'


# -- the ruleset, as data ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetDef:
    name: str
    type: tuple[str, ...]
    flags: tuple[str, ...] = ()

    def render(self) -> str:
        flags = f" flags {', '.join(self.flags)};" if self.flags else ""
        return f"{{ type {' . '.join(self.type)};{flags} }}"


@dataclass(frozen=True, slots=True)
class RuleDef:
    name: str
    text: str

    @property
    def comment(self) -> str:
        digest = hashlib.sha256(self.text.encode()).hexdigest()[:12]
        return f"tortie:{self.name}:{digest}"

    def render(self) -> str:
        return f'{self.text} comment "{self.comment}"'


@dataclass(frozen=True, slots=True)
class ChainDef:
    name: str
    type: str
    hook: str
    priority: int
    rules: tuple[RuleDef, ...]
    policy: str = "accept"

    def render(self) -> str:
        return (
            f"{{ type {self.type} hook {self.hook} priority {self.priority}; "
            f"policy {self.policy}; }}"
        )

    @property
    def spec(self) -> tuple[str, str, int, str]:
        return (self.type, self.hook, self.priority, self.policy)


@dataclass(frozen=True, slots=True)
class Ruleset:
    family: str
    table: str
    counters: tuple[str, ...]
    sets: tuple[SetDef, ...]
    chains: tuple[ChainDef, ...]

    @property
    def ref(self) -> str:
        return f"{self.family} {self.table}"

    def set_def(self, name: str) -> SetDef:
        return next(s for s in self.sets if s.name == name)

    def without_chains(self, names: frozenset[str]) -> Ruleset:
        return replace(self, chains=tuple(c for c in self.chains if c.name not in names))


def tortie_ruleset(
    *,
    family: str = DEFAULT_FAMILY,
    table: str = DEFAULT_TABLE,
    vxlan_port: int = VXLAN_PORT,
    workload_prefix: str = WORKLOAD_PREFIX,
) -> Ruleset:
    """tortie's table: four rules over four sets, whatever the size of the cluster.

    The manager leaves the NAT chain out while no pool has natOutgoing (module docstring).
    """
    for name in (family, table):
        if not _NAME.match(name):
            raise ValueError(f"bad nftables name: {name!r}")
    if not _IFNAME.match(workload_prefix):
        raise ValueError(f"bad workload interface prefix: {workload_prefix!r}")
    return Ruleset(
        family=family,
        table=table,
        counters=COUNTERS,
        sets=(
            SetDef(SET_NODE_IPS, ("ipv4_addr",)),
            SetDef(SET_POOLS, ("ipv4_addr",), ("interval",)),
            SetDef(SET_NAT_POOLS, ("ipv4_addr",), ("interval",)),
            SetDef(SET_WORKLOADS, ("ifname", "ipv4_addr")),
        ),
        chains=(
            ChainDef(
                "prerouting",
                "filter",
                "prerouting",
                -300,
                (
                    RuleDef(
                        "antispoof",
                        f'iifname "{workload_prefix}*" iifname . ip saddr != @{SET_WORKLOADS} '
                        'counter name "spoofed" drop',
                    ),
                ),
            ),
            ChainDef(
                "input",
                "filter",
                "input",
                0,
                (
                    RuleDef(
                        "ipip",
                        f'ip protocol 4 ip saddr != @{SET_NODE_IPS} counter name "ipip_dropped" '
                        "drop",
                    ),
                    RuleDef(
                        "vxlan",
                        f"udp dport {vxlan_port} ip saddr != @{SET_NODE_IPS} "
                        'counter name "vxlan_dropped" drop',
                    ),
                ),
            ),
            ChainDef(
                NAT_CHAIN,
                "nat",
                "postrouting",
                100,
                (
                    RuleDef(
                        "nat_outgoing",
                        f"ip saddr @{SET_NAT_POOLS} ip daddr != @{SET_POOLS} masquerade",
                    ),
                ),
            ),
        ),
    )


# -- elements ---------------------------------------------------------------------------------


def node_element(ip: IPv4Address | str) -> Element:
    return str(IPv4Address(ip))


def pool_elements(cidrs: Iterable[IPv4Network | str]) -> frozenset[Element]:
    """Pools as interval elements: collapsed, because interval sets refuse overlaps."""
    nets = collapse_addresses(IPv4Network(c) for c in cidrs)
    return frozenset(str(n) for n in nets)


def workload_element(ifname: str, ip: IPv4Address | str) -> Element:
    if not _IFNAME.match(ifname):
        raise ValueError(f"bad interface name for an nftables element: {ifname!r}")
    return f'"{ifname}" . {IPv4Address(ip)}'


def _scalar(value: Any) -> Any:
    # Elements with per-element options (counter, timeout) come wrapped: {"elem": {"val": x}}.
    if isinstance(value, dict) and "elem" in value:
        return value["elem"]["val"]
    return value


def parse_elements(set_def: SetDef, raw: Iterable[Any]) -> frozenset[Element]:
    """Elements of ``set_def`` as nft's JSON lists them, in the form we write them."""
    out: set[Element] = set()
    for item in raw:
        value = _scalar(item)
        if isinstance(value, dict) and "concat" in value:
            # nft prints addresses in canonical dotted-quad form, as str(IPv4Address) does:
            # no need to parse 5,000 of them on a resync.
            ifname, ip = value["concat"]
            out.add(f'"{ifname}" . {ip}')
        elif "interval" in set_def.flags:
            if isinstance(value, dict) and "prefix" in value:
                pre = value["prefix"]
                out.add(str(IPv4Network(f"{pre['addr']}/{pre['len']}")))
            elif isinstance(value, dict) and "range" in value:
                low, high = (IPv4Address(a) for a in value["range"])
                out.update(str(n) for n in summarize_address_range(low, high))
            else:
                out.add(str(IPv4Network(f"{value}/32")))
        else:
            out.add(str(value))
    return frozenset(out)


def _element_block(elements: Iterable[Element]) -> str:
    return "{ " + ", ".join(sorted(elements)) + " }"


def delta_script(
    ruleset: Ruleset, name: str, have: frozenset[Element], want: frozenset[Element]
) -> str:
    """Delete what is stale, then add what is missing (one transaction when run)."""
    lines = []
    stale, missing = have - want, want - have
    if stale:
        lines.append(f"delete element {ruleset.ref} {name} {_element_block(stale)}")
    if missing:
        lines.append(f"add element {ruleset.ref} {name} {_element_block(missing)}")
    return "".join(line + "\n" for line in lines)


def refill_script(ruleset: Ruleset, name: str, want: frozenset[Element]) -> str:
    """Replace the whole content (flush + add in one transaction): the last-resort repair."""
    script = f"flush set {ruleset.ref} {name}\n"
    if want:
        script += f"add element {ruleset.ref} {name} {_element_block(want)}\n"
    return script


# -- the table as observed --------------------------------------------------------------------


@dataclass
class ObservedTable:
    counters: dict[str, tuple[int, int]] = field(default_factory=dict)  # packets, bytes
    sets: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = field(default_factory=dict)
    chains: dict[str, tuple[str, str, int, str]] = field(default_factory=dict)
    rules: dict[str, list[str | None]] = field(default_factory=dict)  # chain -> comments
    elements: dict[str, list[Any]] = field(default_factory=dict)  # only in full listings
    other: list[str] = field(default_factory=list)  # objects of kinds we never make

    @property
    def rule_count(self) -> int:
        return sum(len(r) for r in self.rules.values())


def parse_table(objects: list[JsonObject], ruleset: Ruleset) -> ObservedTable:
    """The objects of ``list table`` (JSON) that belong to our table."""
    seen = ObservedTable()
    for obj in objects:
        ((kind, body),) = obj.items()
        if kind == "table" or body.get("family") != ruleset.family:
            continue
        if body.get("table") != ruleset.table:
            continue
        name = body.get("name", "")
        if kind == "counter":
            seen.counters[name] = (int(body.get("packets", 0)), int(body.get("bytes", 0)))
        elif kind == "set":
            raw_type = body.get("type")
            set_type = tuple(raw_type) if isinstance(raw_type, list) else (str(raw_type),)
            seen.sets[name] = (set_type, tuple(sorted(body.get("flags", []))))
            if "elem" in body:
                seen.elements[name] = list(body["elem"])
        elif kind == "chain":
            seen.chains[name] = (
                str(body.get("type")),
                str(body.get("hook")),
                int(body.get("prio", 0)),
                str(body.get("policy", "accept")),
            )
            seen.rules.setdefault(name, [])
        elif kind == "rule":
            seen.rules.setdefault(body["chain"], []).append(body.get("comment"))
        else:
            seen.other.append(f"{kind} {name}")
    return seen


def structural_differences(
    want: Ruleset, have: ObservedTable, optional: frozenset[str] = frozenset()
) -> list[str]:
    """Why the table must be rebuilt (differences rules alone cannot fix).

    A chain of ``want`` that is missing, or an ``optional`` chain present but not wanted, is
    no reason: :meth:`NftablesManager.ensure_table` adds or deletes just that chain.
    """
    why = []
    if set(have.counters) != set(want.counters):
        why.append(f"counters {sorted(have.counters)} != {sorted(want.counters)}")
    want_sets = {s.name: (s.type, tuple(sorted(s.flags))) for s in want.sets}
    if have.sets != want_sets:
        why.append(f"sets {have.sets} != {want_sets}")
    want_chains = {c.name: c.spec for c in want.chains}
    wrong = {}
    for name, spec in have.chains.items():
        if name not in want_chains and name in optional:
            continue  # ensure_table deletes it
        if want_chains.get(name) != spec:
            wrong[name] = spec
    if wrong:
        why.append(f"chains {wrong} != {want_chains}")
    if have.other:
        why.append(f"unexpected objects {have.other}")
    return why


def create_script(ruleset: Ruleset, elements: Mapping[str, frozenset[Element]]) -> str:
    """Every object of the table, then the given set contents (run in one transaction)."""
    ref = ruleset.ref
    lines = [f"add table {ref}"]
    lines += [f"add counter {ref} {name}" for name in ruleset.counters]
    lines += [f"add set {ref} {s.name} {s.render()}" for s in ruleset.sets]
    chains = "".join(chain_script(ruleset, chain) for chain in ruleset.chains)
    elems = [
        f"add element {ref} {name} {_element_block(content)}"
        for name, content in sorted(elements.items())
        if content
    ]
    return "".join(line + "\n" for line in lines) + chains + "".join(e + "\n" for e in elems)


def chain_script(ruleset: Ruleset, chain: ChainDef) -> str:
    """Add one chain with its rules (to an existing table)."""
    ref = ruleset.ref
    lines = [f"add chain {ref} {chain.name} {chain.render()}"]
    lines += [f"add rule {ref} {chain.name} {rule.render()}" for rule in chain.rules]
    return "".join(line + "\n" for line in lines)


def rules_script(ruleset: Ruleset, chain: ChainDef) -> str:
    ref = ruleset.ref
    lines = [f"flush chain {ref} {chain.name}"]
    lines += [f"add rule {ref} {chain.name} {rule.render()}" for rule in chain.rules]
    return "".join(line + "\n" for line in lines)


# -- the manager ------------------------------------------------------------------------------


class NftablesManager:
    """Converges tortie's table in one namespace to the desired sets (see module docstring)."""

    def __init__(
        self,
        netns: NetnsRef = None,
        table: str = DEFAULT_TABLE,
        *,
        family: str = DEFAULT_FAMILY,
        executor: NftExecutor | None = None,
        vxlan_port: int = VXLAN_PORT,
        workload_prefix: str = WORKLOAD_PREFIX,
    ) -> None:
        self.netns = netns
        self.ruleset = tortie_ruleset(
            family=family, table=table, vxlan_port=vxlan_port, workload_prefix=workload_prefix
        )
        self._executor = executor
        names = [s.name for s in self.ruleset.sets]
        # Desired content (None: never given) and what we believe the kernel holds (None:
        # unknown, read it before computing a delta).
        self._desired: dict[str, frozenset[Element] | None] = dict.fromkeys(names)
        self._observed: dict[str, frozenset[Element] | None] = dict.fromkeys(names)
        self._table_ok = False
        # Whether the NAT chain is wanted: None until set_pools says (leave it as found).
        self._nat_wanted: bool | None = None
        # (interface, address) as given -> element text, for the endpoints of the last call:
        # formatting 5,000 addresses costs about 20 ms, looking them up well under 1 ms.
        self._workload_text: dict[tuple[str, IPv4Address | str], Element] = {}

    @property
    def executor(self) -> NftExecutor:
        if self._executor is None:
            self._executor = make_executor(self.netns)
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.close()

    def __enter__(self) -> NftablesManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------------------

    def table_exists(self) -> bool:
        rs = self.ruleset
        for obj in self.executor.list_json("list tables"):
            body = obj.get("table", {})
            if body.get("family") == rs.family and body.get("name") == rs.table:
                return True
        return False

    def observe(self, *, elements: bool = False) -> ObservedTable | None:
        """Our table as the kernel has it (None if absent); set contents only if asked."""
        if not self.table_exists():
            return None
        objects = self.executor.list_json(f"list table {self.ruleset.ref}", terse=not elements)
        return parse_table(objects, self.ruleset)

    def read_set(self, name: str) -> frozenset[Element]:
        """The content of one of our sets, from the kernel."""
        objects = self.executor.list_json(f"list set {self.ruleset.ref} {name}")
        for obj in objects:
            body = obj.get("set")
            if body and body.get("name") == name:
                return parse_elements(self.ruleset.set_def(name), body.get("elem", []))
        raise NftError(f"set {name} not in the listing")

    def rule_count(self) -> int:
        seen = self.observe()
        return seen.rule_count if seen is not None else 0

    def counters(self) -> dict[str, int]:
        """Named counters: ``<name>`` = packets, ``<name>_bytes`` = bytes ({} if no table)."""
        if not self.table_exists():
            return {}
        out: dict[str, int] = {}
        for obj in self.executor.list_json(f"list counters table {self.ruleset.ref}"):
            body = obj.get("counter")
            if body and body.get("table") == self.ruleset.table:
                out[body["name"]] = int(body.get("packets", 0))
                out[f"{body['name']}_bytes"] = int(body.get("bytes", 0))
        return out

    # -- the table ----------------------------------------------------------------------------

    def _wanted(self, seen: ObservedTable | None) -> Ruleset:
        """Our ruleset as it should be now: the NAT chain per :attr:`_nat_wanted`."""
        nat = self._nat_wanted
        if nat is None:  # not told yet: keep what is there (nothing if there is no table)
            nat = seen is not None and NAT_CHAIN in seen.chains
        return self.ruleset if nat else self.ruleset.without_chains(frozenset({NAT_CHAIN}))

    def ensure_table(self) -> list[str]:
        """Create the table, repair its structure or rules if they differ; return changes."""
        seen = self.observe()
        rs = self._wanted(seen)
        if seen is None:
            contents = {n: v for n, v in self._desired.items() if v is not None}
            self.executor.run(create_script(rs, contents))
            self._after_rebuild(contents)
            return [f"created table {rs.ref}"]
        why = structural_differences(rs, seen, optional=frozenset({NAT_CHAIN}))
        if why:
            contents = self._carry_over(seen)
            # "add" first so "delete" cannot fail; all of it one transaction, so packets never
            # see a moment without the table.
            script = f"add table {rs.ref}\ndelete table {rs.ref}\n" + create_script(rs, contents)
            self.executor.run(script)
            self._after_rebuild(contents)
            return [f"recreated table {rs.ref}: {'; '.join(why)}"]
        changes = []
        script = ""
        for name in sorted(set(seen.chains) - {c.name for c in rs.chains}):
            script += f"delete chain {rs.ref} {name}\n"  # only NAT_CHAIN gets here (optional)
            changes.append(f"deleted chain {name} (no pool has natOutgoing)")
        for chain in rs.chains:
            want = [rule.comment for rule in chain.rules]
            if chain.name not in seen.chains:
                script += chain_script(rs, chain)
                changes.append(f"added chain {chain.name}")
            elif seen.rules.get(chain.name, []) != want:
                script += rules_script(rs, chain)
                changes.append(f"replaced the rules of chain {chain.name}")
        if script:
            self.executor.run(script)
        self._table_ok = True
        return changes

    def _carry_over(self, seen: ObservedTable) -> dict[str, frozenset[Element]]:
        """Contents for a rebuilt table: desired where known, else what the kernel held."""
        contents: dict[str, frozenset[Element]] = {}
        full: ObservedTable | None = None
        for set_def in self.ruleset.sets:
            desired = self._desired[set_def.name]
            if desired is not None:
                contents[set_def.name] = desired
                continue
            if seen.sets.get(set_def.name) != (set_def.type, tuple(sorted(set_def.flags))):
                continue  # a different type: the old elements would not fit
            if full is None:
                full = self.observe(elements=True) or ObservedTable()
            raw = full.elements.get(set_def.name, [])
            contents[set_def.name] = parse_elements(set_def, raw)
        return contents

    def _after_rebuild(self, contents: Mapping[str, frozenset[Element]]) -> None:
        for name in self._observed:
            self._observed[name] = contents.get(name, frozenset())
        self._table_ok = True

    def remove(self) -> list[str]:
        """Delete our table (and only it); forget all desired state."""
        for name in self._desired:
            self._desired[name] = None
            self._observed[name] = None
        self._table_ok = False
        self._nat_wanted = None
        if not self.table_exists():
            return []
        self.executor.run(f"delete table {self.ruleset.ref}\n")
        return [f"deleted table {self.ruleset.ref}"]

    # -- the sets -----------------------------------------------------------------------------

    def set_node_ips(self, ips: Iterable[IPv4Address | str]) -> list[str]:
        """Every node's address: IPIP/VXLAN is accepted from these only."""
        return self._update({SET_NODE_IPS: frozenset(node_element(ip) for ip in ips)})

    def set_pools(
        self, all_cidrs: Iterable[IPv4Network | str], nat_cidrs: Iterable[IPv4Network | str]
    ) -> list[str]:
        """Every pool, and those with natOutgoing (counted as pools too, so never NATed to).

        The NAT chain (and with it connection tracking) exists only while ``nat_cidrs`` is not
        empty; it is added or deleted first, then the sets' delta is written.
        """
        nat = [IPv4Network(c) for c in nat_cidrs]
        pools = [IPv4Network(c) for c in all_cidrs] + nat
        if self._nat_wanted != bool(nat):
            self._nat_wanted = bool(nat)
            self._table_ok = False  # _update converges the table (the chain) first
        return self._update({SET_POOLS: pool_elements(pools), SET_NAT_POOLS: pool_elements(nat)})

    def set_workloads(self, endpoints: Iterable[tuple[str, IPv4Address | str]]) -> list[str]:
        """Every (host-side interface, pod address): the only sources allowed from ``cali*``."""
        known = self._workload_text
        texts: dict[tuple[str, IPv4Address | str], Element] = {}
        for ifname, ip in endpoints:
            key = (ifname, ip)
            text = known.get(key)
            texts[key] = text if text is not None else workload_element(ifname, ip)
        self._workload_text = texts  # only the current endpoints: the cache cannot grow
        return self._update({SET_WORKLOADS: frozenset(texts.values())})

    def resync(self) -> list[str]:
        """Re-check the table and re-read every set, converging those with desired content."""
        changes = self.ensure_table()
        for name in self._observed:
            self._observed[name] = None
        known = {n: v for n, v in self._desired.items() if v is not None}
        return changes + (self._update(known) if known else [])

    def _update(self, want: dict[str, frozenset[Element]]) -> list[str]:
        self._desired.update(want)
        changes = [] if self._table_ok else self.ensure_table()
        try:
            return changes + self._apply_delta(want)
        except NftError as first:
            # Our view was stale (someone edited or removed the table or a set): look again,
            # repair the table if needed, and retry with fresh contents.
            log.warning("nftables delta failed, re-reading %s: %s", sorted(want), first)
            for name in want:
                self._observed[name] = None
            changes += self.ensure_table()
        try:
            return changes + self._apply_delta(want)
        except NftError as second:
            log.warning("nftables delta failed again, refilling %s: %s", sorted(want), second)
        script = "".join(refill_script(self.ruleset, n, v) for n, v in sorted(want.items()))
        self.executor.run(script)
        for name, content in want.items():
            self._observed[name] = content
        return [*changes, *(f"{name}: replaced all, {len(v)} now" for name, v in want.items())]

    def _apply_delta(self, want: dict[str, frozenset[Element]]) -> list[str]:
        script = ""
        changes = []
        for name, content in sorted(want.items()):
            have = self._observed[name]
            if have is None:
                have = self._observed[name] = self.read_set(name)
            if have == content:
                continue
            script += delta_script(self.ruleset, name, have, content)
            added, removed = len(content - have), len(have - content)
            changes.append(f"{name}: +{added} -{removed} ({len(content)} now)")
        if script:
            self.executor.run(script)
            for name, content in want.items():
                self._observed[name] = content
        return changes
