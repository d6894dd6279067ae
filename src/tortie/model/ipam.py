"""IPAM's internal kinds (block, affinity, handle, config) in Calico's stored shapes, and keys.

Problem: block IPAM keeps its state as datastore keys that several processes on several nodes
read and compare-and-swap. Everyone must agree on the key layout and on the stored JSON; this
module is that agreement. It is pure data: no datastore access, no clock.

Key layout (all under :data:`tortie.model.keys.IPAM_ROOT`, mirroring Calico's etcd layout)::

    <root>assignment/ipv4/block/10.244.3.0-26      AllocationBlock JSON
    <root>host/<node>/ipv4/block/10.244.3.0-26     BlockAffinity JSON (state)
    <root>handle/<handle id>                        IPAMHandle JSON (block -> count)

Invariants (held by :mod:`tortie.ipam`, checked by ``tortie ipam check``):
- A block's ordinal ``o`` is allocated iff ``allocations[o]`` is not None; then it indexes
  ``attributes``, and ``o`` is absent from ``unallocated``. ``unallocated`` lists every free
  ordinal exactly once, in the order they will be handed out (freed ones go last, so a just
  released address is the last to be reused).
- ``sequence_numbers[o]`` is the block's ``sequence_number`` at the moment ``o`` was allocated;
  ``sequence_number`` grows by one per allocation, so (ordinal, sequence) names one allocation
  event and a stale release carrying an old sequence cannot free a reused address.
- For every handle H and block B: ``handle.block[B]`` == the number of B's ordinals whose
  attribute names H (blocks and handles change in one transaction).
- A confirmed affinity (node, cidr) implies the block exists with ``affinity == "host:<node>"``.

Hazards:
- Values may be corrupt or written by something else; ``from_json`` raises
  :class:`IPAMDataError` naming what is wrong, never returns a half-parsed value.
- Calico's ``deleted`` flags exist for datastores without multi-key transactions; tortie
  deletes keys inside transactions instead and writes ``deleted: false`` only for shape
  fidelity. tortie adds ``emptySince`` (blocks) and ``createdAt`` (affinities) for its grace
  periods; Calico readers ignore unknown fields.
"""

from __future__ import annotations

import enum
import ipaddress
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from tortie.errors import TortieError
from tortie.model.keys import IPAM_ROOT

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

HOST_AFFINITY_PREFIX = "host:"

# Well-known allocation attribute keys (Calico's names).
ATTR_NAMESPACE = "namespace"
ATTR_POD = "pod"
ATTR_NODE = "node"
ATTR_TYPE = "type"
ATTR_TIMESTAMP = "timestamp"
TYPE_IPIP_TUNNEL = "ipipTunnelAddress"
TYPE_VXLAN_TUNNEL = "vxlanTunnelAddress"


class IPAMDataError(TortieError):
    """A stored IPAM value or key cannot be understood."""


# ---------------------------------------------------------------------------------------------
# Keys


def _cidr_token(cidr: IPNetwork) -> str:
    return f"{cidr.network_address}-{cidr.prefixlen}"


def _family(cidr: IPNetwork) -> str:
    return f"ipv{cidr.version}"


def _check_name(what: str, name: str) -> None:
    # A "/" would move the key into another node's or handle's subtree.
    if not name or "/" in name:
        raise IPAMDataError(f"invalid {what} {name!r}: must be non-empty and contain no '/'")


def blocks_prefix(version: int | None = None) -> str:
    base = f"{IPAM_ROOT}assignment/"
    return base if version is None else f"{base}ipv{version}/block/"


def block_key(cidr: IPNetwork) -> str:
    return f"{blocks_prefix(cidr.version)}{_cidr_token(cidr)}"


def affinities_prefix(node: str | None = None) -> str:
    if node is None:
        return f"{IPAM_ROOT}host/"
    _check_name("node name", node)
    return f"{IPAM_ROOT}host/{node}/"


def affinity_key(node: str, cidr: IPNetwork) -> str:
    return f"{affinities_prefix(node)}{_family(cidr)}/block/{_cidr_token(cidr)}"


def handles_prefix() -> str:
    return f"{IPAM_ROOT}handle/"


def handle_key(handle_id: str) -> str:
    _check_name("handle", handle_id)
    return f"{handles_prefix()}{handle_id}"


def _parse_cidr_token(token: str, key: str) -> IPNetwork:
    addr, sep, plen = token.rpartition("-")
    if not sep:
        raise IPAMDataError(f"{key}: no '<address>-<prefix length>' at the end of the key")
    try:
        return ipaddress.ip_network(f"{addr}/{plen}")
    except ValueError as err:
        raise IPAMDataError(f"{key}: bad block CIDR in key ({err})") from err


def cidr_from_block_key(key: str) -> IPNetwork:
    if not key.startswith(blocks_prefix()):
        raise IPAMDataError(f"{key}: not a block key")
    return _parse_cidr_token(key.rsplit("/", 1)[-1], key)


def parse_affinity_key(key: str) -> tuple[str, IPNetwork]:
    """``<root>host/<node>/ipvN/block/<cidr>`` -> (node, cidr)."""
    rest = key.removeprefix(affinities_prefix())
    parts = rest.split("/")
    if rest == key or len(parts) != 4 or parts[2] != "block":
        raise IPAMDataError(f"{key}: not an affinity key")
    return parts[0], _parse_cidr_token(parts[3], key)


def handle_id_from_key(key: str) -> str:
    if not key.startswith(handles_prefix()):
        raise IPAMDataError(f"{key}: not a handle key")
    return key.removeprefix(handles_prefix())


def host_affinity(node: str) -> str:
    return f"{HOST_AFFINITY_PREFIX}{node}"


# ---------------------------------------------------------------------------------------------
# JSON helpers


def _load(text: str, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except ValueError as err:
        raise IPAMDataError(f"{what}: not JSON ({err})") from err
    except RecursionError:  # json recurses per level: thousands deep is a traceback otherwise
        raise IPAMDataError(f"{what}: JSON nested too deep to read") from None
    if not isinstance(doc, dict):
        raise IPAMDataError(f"{what}: expected a JSON object")
    return doc


def _dump(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise IPAMDataError(f"{what}: expected an integer, got {value!r}")
    return value


def _opt_float(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise IPAMDataError(f"{what}: expected a number, got {value!r}")
    return float(value)


# ---------------------------------------------------------------------------------------------
# Allocation block


@dataclass(frozen=True, slots=True)
class AllocationAttribute:
    """Who an allocation belongs to: the handle and free-form attributes (namespace, pod...)."""

    handle_id: str | None
    secondary: tuple[tuple[str, str], ...] = ()  # sorted (key, value) pairs: hashable, frozen

    @classmethod
    def make(cls, handle_id: str | None, attrs: Mapping[str, str]) -> AllocationAttribute:
        return cls(handle_id, tuple(sorted(attrs.items())))

    @property
    def attrs(self) -> dict[str, str]:
        return dict(self.secondary)

    def to_doc(self) -> dict[str, Any]:
        return {"handle_id": self.handle_id, "secondary": dict(self.secondary)}

    @classmethod
    def from_doc(cls, doc: Any, what: str) -> AllocationAttribute:
        # Hot path (every block read decodes up to a block's worth of these): keep it lean.
        if type(doc) is not dict:
            raise IPAMDataError(f"{what}: attribute is not an object")
        handle = doc.get("handle_id")
        secondary = doc.get("secondary") or {}
        if handle is not None and type(handle) is not str:
            raise IPAMDataError(f"{what}: handle_id must be a string")
        if type(secondary) is not dict:
            raise IPAMDataError(f"{what}: secondary attributes must be an object")
        pairs = tuple(sorted(secondary.items()))
        for k, v in pairs:
            if type(k) is not str or type(v) is not str:
                raise IPAMDataError(f"{what}: secondary attributes must map strings to strings")
        return cls(handle, pairs)


@dataclass(frozen=True, slots=True)
class AllocationBlock:
    """One block of a pool: which ordinals are allocated, to whom, and its host affinity."""

    cidr: IPNetwork
    affinity: str | None  # "host:<node>" or None (unaffined)
    allocations: tuple[int | None, ...]  # per ordinal: index into attributes, or None
    unallocated: tuple[int, ...]  # free ordinals in hand-out order
    attributes: tuple[AllocationAttribute, ...]
    sequence_number: int
    sequence_numbers: tuple[int | None, ...]  # per ordinal: sequence at allocation time
    empty_since: float | None = None  # epoch seconds the block last became empty

    @classmethod
    def new(
        cls, cidr: IPNetwork, affinity: str | None, *, sequence_start: int, now: float
    ) -> AllocationBlock:
        size = cidr.num_addresses
        return cls(
            cidr=cidr,
            affinity=affinity,
            allocations=(None,) * size,
            unallocated=tuple(range(size)),
            attributes=(),
            sequence_number=sequence_start,
            sequence_numbers=(None,) * size,
            empty_since=now,
        )

    # -- queries --------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return len(self.allocations)

    @property
    def free(self) -> int:
        return len(self.unallocated)

    @property
    def in_use(self) -> int:
        return self.size - self.free

    @property
    def node(self) -> str | None:
        """The node this block is affine to, if any."""
        if self.affinity and self.affinity.startswith(HOST_AFFINITY_PREFIX):
            return self.affinity.removeprefix(HOST_AFFINITY_PREFIX)
        return None

    def address(self, ordinal: int) -> IPAddress:
        return self.cidr.network_address + ordinal

    def ordinal(self, ip: IPAddress) -> int:
        if ip not in self.cidr:
            raise ValueError(f"{ip} is not in block {self.cidr}")
        return int(ip) - int(self.cidr.network_address)

    def attribute_of(self, ordinal: int) -> AllocationAttribute | None:
        idx = self.allocations[ordinal]
        return None if idx is None else self.attributes[idx]

    def allocated(self) -> Iterator[tuple[int, AllocationAttribute]]:
        for o, idx in enumerate(self.allocations):
            if idx is not None:
                yield o, self.attributes[idx]

    def ordinals_of_handle(self, handle_id: str) -> list[int]:
        return [o for o, attr in self.allocated() if attr.handle_id == handle_id]

    # -- JSON -----------------------------------------------------------------------------
    def to_json(self) -> str:
        return _dump(
            {
                "cidr": str(self.cidr),
                "affinity": self.affinity,
                "strictAffinity": False,
                "allocations": list(self.allocations),
                "unallocated": list(self.unallocated),
                "attributes": [a.to_doc() for a in self.attributes],
                "deleted": False,
                "sequenceNumber": self.sequence_number,
                "sequenceNumberForAllocation": {
                    str(o): s for o, s in enumerate(self.sequence_numbers) if s is not None
                },
                "emptySince": self.empty_since,
            }
        )

    @staticmethod
    def is_full(doc: Mapping[str, Any]) -> bool:
        """Cheap test on a parsed block document: no free ordinal (skip decoding it)."""
        free = doc.get("unallocated")
        return isinstance(free, list) and not free

    @classmethod
    def from_json(cls, text: str, what: str = "block") -> AllocationBlock:
        return cls.from_doc(_load(text, what), what)

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any], what: str = "block") -> AllocationBlock:
        try:
            cidr = ipaddress.ip_network(doc["cidr"])
        except (KeyError, ValueError, TypeError) as err:
            raise IPAMDataError(f"{what}: bad or missing cidr") from err
        size = cidr.num_addresses
        affinity = doc.get("affinity")
        if affinity is not None and not isinstance(affinity, str):
            raise IPAMDataError(f"{what}: affinity must be a string or null")
        raw_attrs = doc.get("attributes") or []
        if not isinstance(raw_attrs, list):
            raise IPAMDataError(f"{what}: attributes must be a list")
        attributes = tuple(AllocationAttribute.from_doc(a, what) for a in raw_attrs)
        raw_allocs = doc.get("allocations")
        if not isinstance(raw_allocs, list) or len(raw_allocs) != size:
            raise IPAMDataError(f"{what}: allocations must list all {size} ordinals")
        n_attrs = len(attributes)
        for a in raw_allocs:
            if a is not None and (type(a) is not int or not 0 <= a < n_attrs):
                raise IPAMDataError(f"{what}: allocation refers to missing attribute {a!r}")
        allocations: list[int | None] = raw_allocs
        raw_free = doc.get("unallocated")
        if not isinstance(raw_free, list):
            raise IPAMDataError(f"{what}: unallocated must be a list")
        unallocated = tuple(raw_free)
        if not all(type(o) is int for o in unallocated):
            raise IPAMDataError(f"{what}: unallocated must list ordinals (integers)")
        expected_free = {o for o, a in enumerate(allocations) if a is None}
        if len(unallocated) != len(expected_free) or set(unallocated) != expected_free:
            raise IPAMDataError(f"{what}: unallocated disagrees with allocations")
        raw_seq = doc.get("sequenceNumberForAllocation") or {}
        if not isinstance(raw_seq, dict):
            raise IPAMDataError(f"{what}: sequenceNumberForAllocation must be an object")
        seqs: list[int | None] = [None] * size
        for k, v in raw_seq.items():
            try:
                o = int(k)
            except ValueError as err:
                raise IPAMDataError(f"{what}: bad ordinal {k!r} in sequence numbers") from err
            if 0 <= o < size:
                seqs[o] = _int(v, what)
        return cls(
            cidr=cidr,
            affinity=affinity,
            allocations=tuple(allocations),
            unallocated=unallocated,
            attributes=attributes,
            sequence_number=_int(doc.get("sequenceNumber", 0), what),
            sequence_numbers=tuple(seqs),
            empty_since=_opt_float(doc.get("emptySince"), what),
        )


# ---------------------------------------------------------------------------------------------
# Block affinity


class AffinityState(enum.Enum):
    PENDING = "pending"
    CONFIRMED = "confirmed"
    PENDING_DELETION = "pendingDeletion"


@dataclass(frozen=True, slots=True)
class BlockAffinity:
    """Node ``node`` claims block ``cidr``. Node and CIDR live in the key, state in the value."""

    node: str
    cidr: IPNetwork
    state: AffinityState
    created_at: float | None = None  # epoch seconds; lets gc spare in-flight claims

    @property
    def key(self) -> str:
        return affinity_key(self.node, self.cidr)

    def to_json(self) -> str:
        return _dump({"state": self.state.value, "deleted": False, "createdAt": self.created_at})

    @classmethod
    def from_kv(cls, key: str, text: str) -> BlockAffinity:
        node, cidr = parse_affinity_key(key)
        doc = _load(text, key)
        try:
            state = AffinityState(doc.get("state"))
        except ValueError as err:
            raise IPAMDataError(f"{key}: unknown affinity state {doc.get('state')!r}") from err
        return cls(node, cidr, state, _opt_float(doc.get("createdAt"), key))


# ---------------------------------------------------------------------------------------------
# Handle


@dataclass(frozen=True, slots=True)
class IPAMHandle:
    """Which blocks hold a handle's addresses, and how many in each (an index for release)."""

    handle_id: str
    block: tuple[tuple[str, int], ...] = field(default=())  # sorted (block CIDR text, count)

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.block)

    @property
    def total(self) -> int:
        return sum(n for _, n in self.block)

    def with_count(self, cidr: IPNetwork, count: int) -> IPAMHandle:
        """The handle with block ``cidr`` holding ``count`` addresses (0 drops the entry)."""
        counts = self.counts
        if count > 0:
            counts[str(cidr)] = count
        else:
            counts.pop(str(cidr), None)
        return IPAMHandle(self.handle_id, tuple(sorted(counts.items())))

    @property
    def key(self) -> str:
        return handle_key(self.handle_id)

    def to_json(self) -> str:
        return _dump({"block": dict(self.block), "deleted": False})

    @classmethod
    def from_kv(cls, key: str, text: str) -> IPAMHandle:
        handle_id = handle_id_from_key(key)
        doc = _load(text, key)
        raw = doc.get("block") or {}
        if not isinstance(raw, dict):
            raise IPAMDataError(f"{key}: block must map CIDRs to counts")
        counts: dict[str, int] = {}
        for cidr, n in raw.items():
            try:
                ipaddress.ip_network(cidr)
            except ValueError as err:
                raise IPAMDataError(f"{key}: bad block CIDR {cidr!r}") from err
            counts[cidr] = _int(n, key)
        return cls(handle_id, tuple(sorted(counts.items())))
