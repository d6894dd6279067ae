"""How the address space is used: per pool and per block, borrowed addresses, one address.

Problem: ``tortie ipam show`` (Calico's ``calicoctl ipam show``) and the agent both need
summaries of the blocks: totals per pool and block, which addresses a node borrowed from
another node's block (each needs a /32 route), and who holds a given address.

Invariant: read-only; numbers come from one listing of the blocks, so the per-block rows add
up to the per-pool row.
"""

from __future__ import annotations

from dataclasses import dataclass

from tortie.ipam.pools import within
from tortie.ipam.store import IPAMStore
from tortie.ipam.view import ClusterView
from tortie.model.ipam import (
    ATTR_NAMESPACE,
    ATTR_NODE,
    ATTR_POD,
    ATTR_TYPE,
    AllocationAttribute,
    IPAddress,
    IPNetwork,
)


@dataclass(frozen=True, slots=True)
class UsageRow:
    grouping: str  # "IP Pool" or "Block"
    cidr: str
    total: int
    in_use: int

    @property
    def free(self) -> int:
        return self.total - self.in_use


@dataclass(frozen=True, slots=True)
class BorrowedAddress:
    ip: IPAddress
    borrowing_node: str
    block: IPNetwork
    block_owner: str  # the node the block is affine to ("" when none)
    type: str
    allocated_to: str


@dataclass(frozen=True, slots=True)
class AddressInfo:
    ip: IPAddress
    block: IPNetwork
    block_owner: str | None
    handle: str | None
    sequence: int | None
    attrs: dict[str, str]


def allocated_to(attr: AllocationAttribute) -> str:
    a = attr.attrs
    if a.get(ATTR_POD):
        return f"{a.get(ATTR_NAMESPACE, '')}/{a[ATTR_POD]}"
    return attr.handle_id or ""


def allocation_type(attr: AllocationAttribute) -> str:
    a = attr.attrs
    return a.get(ATTR_TYPE) or ("pod" if a.get(ATTR_POD) else "")


class Usage:
    def __init__(self, store: IPAMStore, view: ClusterView) -> None:
        self.s = store
        self.view = view

    def rows(self, *, show_blocks: bool) -> list[UsageRow]:
        pools = sorted(
            self.view.pools(), key=lambda p: (p.network.version, int(p.network.network_address))
        )
        blocks = [b.value for b in self.s.blocks()]
        rows: list[UsageRow] = []
        placed: set[IPNetwork] = set()
        for pool in pools:
            inside = [b for b in blocks if within(b.cidr, pool.network)]
            placed.update(b.cidr for b in inside)
            rows.append(
                UsageRow(
                    "IP Pool",
                    pool.spec.cidr,
                    pool.network.num_addresses,
                    sum(b.in_use for b in inside),
                )
            )
            if show_blocks:
                rows += [UsageRow("Block", str(b.cidr), b.size, b.in_use) for b in inside]
        if show_blocks:
            # Blocks of deleted pools still hold addresses: show them rather than hide them.
            rows += [
                UsageRow("Block", str(b.cidr), b.size, b.in_use)
                for b in blocks
                if b.cidr not in placed
            ]
        return rows

    def borrowed(self, node: str | None = None) -> list[BorrowedAddress]:
        """Addresses allocated for a node in a block not affine to it (optionally one node)."""
        out: list[BorrowedAddress] = []
        for blk in self.s.blocks():
            b = blk.value
            for o, attr in b.allocated():
                who = attr.attrs.get(ATTR_NODE)
                if not who or who == b.node or (node is not None and who != node):
                    continue
                out.append(
                    BorrowedAddress(
                        b.address(o),
                        who,
                        b.cidr,
                        b.node or "",
                        allocation_type(attr),
                        allocated_to(attr),
                    )
                )
        return out

    def address(self, ip: IPAddress) -> AddressInfo | None:
        """Who holds ``ip`` (None when it is free or in no block)."""
        for blk in self.s.blocks(ip.version):
            b = blk.value
            if ip in b.cidr:
                o = b.ordinal(ip)
                attr = b.attribute_of(o)
                if attr is None:
                    return None
                return AddressInfo(
                    ip, b.cidr, b.node, attr.handle_id, b.sequence_numbers[o], attr.attrs
                )
        return None
