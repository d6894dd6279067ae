"""Finding IPAM inconsistencies and leaks (``tortie ipam check``): read-only.

Problem: allocations outlive their pods when a CNI DEL never ran (node crash, runtime bug);
handles, affinities and blocks can disagree after a crash or a hand edit. Each problem found
here is reported with enough detail (address, handle, sequence number, revisions) for
:mod:`tortie.ipam.gc` to fix exactly it later and nothing else.

What counts as a problem:
- ``leaked-address``: a pod's allocation (it has a ``pod`` attribute) that no
  WorkloadEndpoint lists; a tunnel address whose Node is gone or uses another address; any
  other allocation whose ``node`` attribute names a Node that does not exist.
- ``handle-without-addresses``: a handle record whose blocks hold none of its addresses;
  ``handle-count-mismatch``: a handle record whose counts disagree with the blocks, or
  addresses whose handle has no record.
- ``address-outside-pools``: an allocation or an endpoint address inside no IPPool.
- ``address-with-two-owners``: an address allocated in two (overlapping) blocks, listed by
  two endpoints, or allocated to one pod but listed by another pod's endpoint.
- ``address-not-allocated``: an endpoint address inside a pool that IPAM has as free.
- ``affinity-without-block``: an affinity whose block is missing or owned by another node;
  ``block-without-affinity``: a block naming an owner that has no affinity record.
- ``corrupt-entry``: an IPAM value that cannot be parsed.

Hazard: the reads are several listings, not one snapshot; anything racing the check can be
reported (a pod between its IP assignment and its endpoint's creation). That is why gc waits
for a grace period and guards every fix with the revisions and sequence numbers seen here.
"""

from __future__ import annotations

import enum
import ipaddress
import json
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tortie.ipam.assign import parse_timestamp
from tortie.ipam.errors import IPAMError
from tortie.ipam.pools import pool_for
from tortie.ipam.store import IPAMStore, Versioned
from tortie.ipam.view import ClusterView
from tortie.model.ipam import (
    ATTR_NAMESPACE,
    ATTR_NODE,
    ATTR_POD,
    ATTR_TIMESTAMP,
    ATTR_TYPE,
    TYPE_IPIP_TUNNEL,
    TYPE_VXLAN_TUNNEL,
    AllocationAttribute,
    AllocationBlock,
    BlockAffinity,
    IPAddress,
    IPAMHandle,
    IPNetwork,
    host_affinity,
)
from tortie.model.naming import IPIP_TUNNEL_HANDLE_PREFIX, VXLAN_TUNNEL_HANDLE_PREFIX
from tortie.model.resources import IPPool, Node, WorkloadEndpoint

TUNNEL_HANDLE_PREFIX = IPIP_TUNNEL_HANDLE_PREFIX
_TUNNEL_TYPES = {
    TYPE_IPIP_TUNNEL: TUNNEL_HANDLE_PREFIX,
    TYPE_VXLAN_TUNNEL: VXLAN_TUNNEL_HANDLE_PREFIX,
}


class ProblemKind(enum.StrEnum):
    LEAKED_ADDRESS = "leaked-address"
    HANDLE_WITHOUT_ADDRESSES = "handle-without-addresses"
    HANDLE_COUNT_MISMATCH = "handle-count-mismatch"
    ADDRESS_OUTSIDE_POOLS = "address-outside-pools"
    ADDRESS_WITH_TWO_OWNERS = "address-with-two-owners"
    ADDRESS_NOT_ALLOCATED = "address-not-allocated"
    AFFINITY_WITHOUT_BLOCK = "affinity-without-block"
    BLOCK_WITHOUT_AFFINITY = "block-without-affinity"
    CORRUPT_ENTRY = "corrupt-entry"


@dataclass(frozen=True, slots=True)
class Problem:
    kind: ProblemKind
    message: str
    ip: str | None = None
    block: str | None = None
    handle: str | None = None
    sequence: int | None = None
    node: str | None = None
    key: str | None = None
    revision: int | None = None  # mod_revision of ``key`` when seen
    since: float | None = None  # when the thing was allocated/created (epoch s), if known

    def to_doc(self) -> dict[str, Any]:
        doc = {k: v for k, v in asdict(self).items() if v is not None}
        doc["kind"] = self.kind.value
        return doc

    @classmethod
    def from_doc(cls, doc: Any) -> Problem:
        if not isinstance(doc, Mapping):
            raise IPAMError(f"report entry {doc!r} is not an object")

        def opt(name: str, typ: type) -> Any:
            value = doc.get(name)
            if value is not None and not isinstance(value, typ):
                raise IPAMError(f"report entry {doc!r}: {name} must be a {typ.__name__}")
            return value

        try:
            kind = ProblemKind(str(doc.get("kind")))
        except ValueError as err:
            raise IPAMError(f"report entry {doc!r}: unknown kind") from err
        since = doc.get("since")
        return cls(
            kind=kind,
            message=str(doc.get("message") or ""),
            ip=opt("ip", str),
            block=opt("block", str),
            handle=opt("handle", str),
            sequence=opt("sequence", int),
            node=opt("node", str),
            key=opt("key", str),
            revision=opt("revision", int),
            since=float(since) if isinstance(since, int | float) else None,
        )


@dataclass(frozen=True, slots=True)
class CheckReport:
    checked_at: float
    problems: tuple[Problem, ...]
    counts: dict[str, int] = field(default_factory=dict)  # what was scanned

    def by_kind(self) -> Counter[str]:
        return Counter(p.kind.value for p in self.problems)

    def to_json(self) -> str:
        return json.dumps(
            {
                "checkedAt": self.checked_at,
                "scanned": self.counts,
                "problemCount": len(self.problems),
                "problems": [p.to_doc() for p in self.problems],
            },
            indent=2,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> CheckReport:
        try:
            doc = json.loads(text)
            problems = tuple(Problem.from_doc(p) for p in doc["problems"])
            return cls(float(doc.get("checkedAt", 0.0)), problems, dict(doc.get("scanned", {})))
        except (ValueError, KeyError, TypeError) as err:
            raise IPAMError(
                f"not a 'tortie ipam check' report ({err}); write one with "
                "'tortie ipam check -o report.json'"
            ) from err


def _alloc_owner(attr: AllocationAttribute) -> str:
    a = attr.attrs
    if a.get(ATTR_POD):
        return f"pod {a.get(ATTR_NAMESPACE, '?')}/{a[ATTR_POD]}"
    return f"handle {attr.handle_id}"


def _about_allocation(
    kind: ProblemKind,
    message: str,
    b: AllocationBlock,
    ordinal: int,
    since: float | None = None,
) -> Problem:
    attr = b.attribute_of(ordinal)
    return Problem(
        kind,
        message,
        ip=str(b.address(ordinal)),
        block=str(b.cidr),
        handle=None if attr is None else attr.handle_id,
        sequence=b.sequence_numbers[ordinal],
        node=None if attr is None else attr.attrs.get(ATTR_NODE),
        since=since,
    )


def tunnel_type(attr: AllocationAttribute) -> str | None:
    """``ipipTunnelAddress`` / ``vxlanTunnelAddress`` for a node's tunnel address, else None."""
    kind = attr.attrs.get(ATTR_TYPE)
    if kind in _TUNNEL_TYPES:
        return kind
    handle = attr.handle_id or ""
    return next((t for t, prefix in _TUNNEL_TYPES.items() if handle.startswith(prefix)), None)


def is_tunnel(attr: AllocationAttribute) -> bool:
    return tunnel_type(attr) is not None


def _endpoint_ips(wep: WorkloadEndpoint) -> list[IPAddress]:
    out: list[IPAddress] = []
    for net in wep.spec.ip_networks:
        try:
            out.append(ipaddress.ip_interface(net).ip)
        except ValueError:
            continue  # the resource model validates these; never crash a check on one
    return out


def _tunnel_of(node: Node, kind: str) -> str | None:
    if kind == TYPE_VXLAN_TUNNEL:
        return node.spec.ipv4_vxlan_tunnel_addr
    bgp = node.spec.bgp
    return None if bgp is None else bgp.ipv4_ipip_tunnel_addr


class Checker:
    def __init__(self, store: IPAMStore, view: ClusterView) -> None:
        self.s = store
        self.view = view

    def check(self) -> CheckReport:
        problems: list[Problem] = []
        # Resources first, IPAM second: a pod created in between looks leaked (and is young,
        # so gc spares it); one deleted in between was released first (guards catch it).
        pools = self.view.pools()
        nodes = self.view.nodes()
        weps = self.view.workload_endpoints()
        blocks, bad_blocks = self.s.blocks_lenient()
        handles, bad_handles = self.s.handles_lenient()
        affinities, bad_affs = self.s.affinities_lenient()
        for key, err in [*bad_blocks, *bad_handles, *bad_affs]:
            problems.append(Problem(ProblemKind.CORRUPT_ENTRY, err, key=key))

        wep_by_ip: dict[IPAddress, list[WorkloadEndpoint]] = defaultdict(list)
        for wep in weps:
            for ip in _endpoint_ips(wep):
                wep_by_ip[ip].append(wep)

        allocated: dict[IPAddress, list[tuple[str, AllocationAttribute]]] = defaultdict(list)
        actual_counts: dict[str, Counter[str]] = defaultdict(Counter)
        n_alloc = 0
        for blk in blocks:
            b = blk.value
            for o, attr in b.allocated():
                n_alloc += 1
                ip = b.address(o)
                allocated[ip].append((str(b.cidr), attr))
                if attr.handle_id is not None:
                    actual_counts[attr.handle_id][str(b.cidr)] += 1
                leak = self._leak_reason(ip, attr, wep_by_ip, nodes)
                if leak:
                    problems.append(
                        _about_allocation(
                            ProblemKind.LEAKED_ADDRESS,
                            f"{ip} ({_alloc_owner(attr)}) is allocated but {leak}",
                            b,
                            o,
                            since=parse_timestamp(attr.attrs.get(ATTR_TIMESTAMP)),
                        )
                    )
                if pool_for(pools, ip) is None:
                    problems.append(
                        _about_allocation(
                            ProblemKind.ADDRESS_OUTSIDE_POOLS,
                            f"{ip} is allocated in block {b.cidr}, which is inside no IPPool",
                            b,
                            o,
                        )
                    )
                owner_pod = (attr.attrs.get(ATTR_NAMESPACE), attr.attrs.get(ATTR_POD))
                for wep in wep_by_ip.get(ip, []):
                    if owner_pod[1] and (wep.metadata.namespace, wep.spec.pod) != owner_pod:
                        problems.append(
                            _about_allocation(
                                ProblemKind.ADDRESS_WITH_TWO_OWNERS,
                                f"{ip} is allocated to {_alloc_owner(attr)} but endpoint "
                                f"{wep.metadata.namespace}/{wep.metadata.name} "
                                f"(pod {wep.spec.pod}) uses it",
                                b,
                                o,
                            )
                        )
        problems += self._multi_owner(allocated, wep_by_ip)
        problems += self._endpoint_addresses(wep_by_ip, allocated, pools)
        problems += self._handles(handles, actual_counts)
        problems += self._affinities(blocks, affinities)
        return CheckReport(
            checked_at=self.s.clock.now(),
            problems=tuple(problems),
            counts={
                "blocks": len(blocks),
                "allocations": n_alloc,
                "handles": len(handles),
                "affinities": len(affinities),
                "workloadEndpoints": len(weps),
                "nodes": len(nodes),
                "pools": len(pools),
            },
        )

    @staticmethod
    def _leak_reason(
        ip: IPAddress,
        attr: AllocationAttribute,
        wep_by_ip: Mapping[IPAddress, list[WorkloadEndpoint]],
        nodes: Mapping[str, Node],
    ) -> str | None:
        a = attr.attrs
        node = a.get(ATTR_NODE)
        kind = tunnel_type(attr)
        if kind is not None:
            node = node or (attr.handle_id or "").removeprefix(_TUNNEL_TYPES[kind])
            n = nodes.get(node)
            if n is None:
                return f"its node {node} does not exist"
            used = _tunnel_of(n, kind)
            if used and used != str(ip):
                return f"node {node} uses tunnel address {used}"
            return None
        if a.get(ATTR_POD):
            if ip not in wep_by_ip:
                return "no workload endpoint uses it"
            return None
        if node and node not in nodes:
            return f"its node {node} does not exist"
        return None

    @staticmethod
    def _multi_owner(
        allocated: Mapping[IPAddress, list[tuple[str, AllocationAttribute]]],
        wep_by_ip: Mapping[IPAddress, list[WorkloadEndpoint]],
    ) -> list[Problem]:
        out: list[Problem] = []
        for ip, owners in allocated.items():
            if len(owners) > 1:
                blocks = ", ".join(f"{c} ({_alloc_owner(a)})" for c, a in owners)
                out.append(
                    Problem(
                        ProblemKind.ADDRESS_WITH_TWO_OWNERS,
                        f"{ip} is allocated in {len(owners)} overlapping blocks: {blocks}",
                        ip=str(ip),
                    )
                )
        for ip, weps in wep_by_ip.items():
            if len(weps) > 1:
                names = ", ".join(f"{w.metadata.namespace}/{w.metadata.name}" for w in weps)
                out.append(
                    Problem(
                        ProblemKind.ADDRESS_WITH_TWO_OWNERS,
                        f"{ip} is used by {len(weps)} workload endpoints: {names}",
                        ip=str(ip),
                    )
                )
        return out

    @staticmethod
    def _endpoint_addresses(
        wep_by_ip: Mapping[IPAddress, list[WorkloadEndpoint]],
        allocated: Mapping[IPAddress, list[tuple[str, AllocationAttribute]]],
        pools: Sequence[IPPool],
    ) -> list[Problem]:
        out: list[Problem] = []
        for ip, weps in wep_by_ip.items():
            wep = weps[0]
            name = f"{wep.metadata.namespace}/{wep.metadata.name}"
            if pool_for(pools, ip) is None:
                out.append(
                    Problem(
                        ProblemKind.ADDRESS_OUTSIDE_POOLS,
                        f"{ip} of workload endpoint {name} is inside no IPPool",
                        ip=str(ip),
                        node=wep.spec.node,
                    )
                )
            elif ip not in allocated:
                out.append(
                    Problem(
                        ProblemKind.ADDRESS_NOT_ALLOCATED,
                        f"{ip} of workload endpoint {name} is free in IPAM: it may be handed "
                        "to another pod; release and re-create the pod",
                        ip=str(ip),
                        node=wep.spec.node,
                    )
                )
        return out

    @staticmethod
    def _handles(
        handles: Sequence[Versioned[IPAMHandle]], actual: Mapping[str, Counter[str]]
    ) -> list[Problem]:
        out: list[Problem] = []
        recorded: set[str] = set()
        for h in handles:
            hv = h.value
            recorded.add(hv.handle_id)
            have = {k: v for k, v in actual.get(hv.handle_id, Counter()).items() if v}
            if hv.counts == have:
                continue
            kind = (
                ProblemKind.HANDLE_WITHOUT_ADDRESSES
                if not have
                else ProblemKind.HANDLE_COUNT_MISMATCH
            )
            out.append(
                Problem(
                    kind,
                    f"handle {hv.handle_id} records {hv.counts or 'no addresses'} "
                    f"but the blocks hold {have or 'none'}",
                    handle=hv.handle_id,
                    key=hv.key,
                    revision=h.revision,
                )
            )
        for handle_id, counts in actual.items():
            if handle_id not in recorded:
                out.append(
                    Problem(
                        ProblemKind.HANDLE_COUNT_MISMATCH,
                        f"{sum(counts.values())} address(es) belong to handle {handle_id}, "
                        "which has no handle record",
                        handle=handle_id,
                    )
                )
        return out

    @staticmethod
    def _affinities(
        blocks: Sequence[Versioned[AllocationBlock]],
        affinities: Sequence[Versioned[BlockAffinity]],
    ) -> list[Problem]:
        out: list[Problem] = []
        by_cidr = {b.value.cidr: b for b in blocks}
        claimed: set[tuple[str, IPNetwork]] = set()
        for a in affinities:
            aff = a.value
            claimed.add((aff.node, aff.cidr))
            blk = by_cidr.get(aff.cidr)
            if blk is None:
                why = "does not exist"
            elif blk.value.affinity != host_affinity(aff.node):
                why = f"belongs to {blk.value.affinity or 'no node'}"
            else:
                continue
            out.append(
                Problem(
                    ProblemKind.AFFINITY_WITHOUT_BLOCK,
                    f"node {aff.node} has a {aff.state.value} affinity for block {aff.cidr}, "
                    f"which {why}",
                    block=str(aff.cidr),
                    node=aff.node,
                    key=aff.key,
                    revision=a.revision,
                    since=aff.created_at,
                )
            )
        for blk in blocks:
            b = blk.value
            if b.node is not None and (b.node, b.cidr) not in claimed:
                out.append(
                    Problem(
                        ProblemKind.BLOCK_WITHOUT_AFFINITY,
                        f"block {b.cidr} names node {b.node} as owner, but that node has no "
                        "affinity for it",
                        block=str(b.cidr),
                        node=b.node,
                        revision=blk.revision,
                    )
                )
        return out
