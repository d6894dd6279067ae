"""The IPAM library API: what the CNI plugin, the node agent and ``tortie ipam`` call.

Problem: one object that hides blocks, affinities and handles behind the calls callers think
in (assign, release, blocks of a node, tunnel address, check, gc), over any datastore.

Invariants:
- Stateless between calls apart from configuration: any number of :class:`IPAM` objects in
  any number of processes may work on one datastore at once; correctness comes from
  compare-and-swap on the IPAM keys (see :mod:`tortie.ipam.store`), not from this object.
- Time comes only from the injected :class:`Clock`; randomness (retry jitter) from the
  injected ``random.Random``.
- Pods' handles are ``<network>.<containerID>`` (:func:`pod_handle`); a node's tunnel
  address has handle ``ipip-tunnel-addr-<node>`` (:func:`tunnel_handle`).

Hazard: an :class:`IPAM` holds the datastore it was given; open the datastore per process
(SQLite connections must not cross ``fork()``).
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from tortie.datastore.api import Datastore
from tortie.ipam.affinity import AffinityManager
from tortie.ipam.assign import Allocation, Assigner
from tortie.ipam.check import Checker, CheckReport
from tortie.ipam.clock import Clock, SystemClock
from tortie.ipam.errors import InvalidRequestError, NoPoolsError
from tortie.ipam.gc import DEFAULT_GRACE_SECONDS, Collector, GCResult
from tortie.ipam.pools import USE_TUNNEL, USE_WORKLOAD, pool_for, select_pools
from tortie.ipam.release import Releaser, ReleaseRequest
from tortie.ipam.store import DEFAULT_MAX_RETRIES, IPAMStore
from tortie.ipam.usage import AddressInfo, BorrowedAddress, Usage, UsageRow
from tortie.ipam.view import ClusterView, IPAMSettings
from tortie.model.ipam import (
    ATTR_NODE,
    ATTR_TYPE,
    TYPE_IPIP_TUNNEL,
    TYPE_VXLAN_TUNNEL,
    AffinityState,
    BlockAffinity,
    IPAddress,
    IPNetwork,
)
from tortie.model.naming import (
    IPIP_TUNNEL_HANDLE_PREFIX,
    VXLAN_TUNNEL_HANDLE_PREFIX,
)

TunnelKind = Literal["ipip", "vxlan"]


def tunnel_handle(node: str, kind: TunnelKind = "ipip") -> str:
    """``ipip-tunnel-addr-<node>`` or ``vxlan-tunnel-addr-<node>`` (Calico's handles)."""
    prefix = IPIP_TUNNEL_HANDLE_PREFIX if kind == "ipip" else VXLAN_TUNNEL_HANDLE_PREFIX
    return f"{prefix}{node}"


@dataclass(frozen=True, slots=True)
class NodeRelease:
    addresses: list[IPAddress]
    blocks: list[IPNetwork]  # blocks whose affinity was released


def _as_ip(ip: IPAddress | str) -> IPAddress:
    if isinstance(ip, str):
        try:
            return ipaddress.ip_address(ip)
        except ValueError as err:
            raise InvalidRequestError(f"{ip!r} is not an IP address") from err
    return ip


class IPAM:
    def __init__(
        self,
        store: Datastore,
        clock: Clock | None = None,
        *,
        rng: random.Random | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        self.store = IPAMStore(store, self.clock, rng or random.Random(), max_retries)
        self.view = ClusterView(store, self.clock)
        self._affinity = AffinityManager(self.store)
        self._releaser = Releaser(self.store)
        self._assigner = Assigner(self.store, self.view, self._affinity, self._releaser)
        self._collector = Collector(self.store, self._releaser, self._affinity)

    # -- assignment -----------------------------------------------------------------------
    def assign(
        self,
        *,
        node: str,
        handle: str,
        count: int = 1,
        pools: Sequence[str] | None = None,
        attrs: Mapping[str, str] | None = None,
        ip: IPAddress | str | None = None,
        version: int = 4,
    ) -> list[IPAddress]:
        """Assign ``count`` addresses (or exactly ``ip``) to ``handle`` on ``node``.

        ``pools`` restricts to these pools (CIDR or name; node selectors are then ignored).
        Raises :class:`ExhaustedError`, :class:`NoPoolsError`, :class:`PoolNotFoundError`,
        :class:`AddressInUseError`, :class:`AddressNotInPoolError`; assigns nothing then.
        """
        return [
            a.ip
            for a in self.assign_detailed(
                node=node,
                handle=handle,
                count=count,
                pools=pools,
                attrs=attrs,
                ip=ip,
                version=version,
            )
        ]

    def assign_detailed(
        self,
        *,
        node: str,
        handle: str,
        count: int = 1,
        pools: Sequence[str] | None = None,
        attrs: Mapping[str, str] | None = None,
        ip: IPAddress | str | None = None,
        version: int = 4,
        use: str = USE_WORKLOAD,
    ) -> list[Allocation]:
        """:meth:`assign`, returning each address with its block and sequence number."""
        if not handle or not node:
            raise InvalidRequestError("assign needs a node name and a handle")
        if ip is not None:
            return [
                self._assigner.assign_ip(
                    node=node,
                    handle=handle,
                    ip=_as_ip(ip),
                    pools=pools,
                    attrs=attrs or {},
                    use=use,
                )
            ]
        if count < 1:
            raise InvalidRequestError(f"count must be at least 1, not {count}")
        if version not in (4, 6):
            raise InvalidRequestError(f"IP version must be 4 or 6, not {version}")
        return self._assigner.auto_assign(
            node=node,
            handle=handle,
            count=count,
            pools=pools,
            attrs=attrs or {},
            version=version,
            use=use,
        )

    # -- release --------------------------------------------------------------------------
    def release_by_handle(self, handle: str) -> list[IPAddress]:
        """Release every address of ``handle``; an unknown handle releases nothing."""
        return self._releaser.handle(handle)

    def release_ips(self, ips: Iterable[IPAddress | str | ReleaseRequest]) -> list[IPAddress]:
        """Release these addresses (free ones are ignored); returns those released.

        A :class:`ReleaseRequest` with ``handle``/``sequence`` releases only if the address
        still belongs to that handle at that sequence number (safe for stale requests).
        """
        return self._releaser.ips(ips)

    def addresses_for_handle(self, handle: str) -> list[IPAddress]:
        h = self.store.handle(handle)
        if h is None:
            return []
        out: list[IPAddress] = []
        for cidr_text in h.value.counts:
            blk = self.store.block(ipaddress.ip_network(cidr_text))
            if blk is not None:
                out += [blk.value.address(o) for o in blk.value.ordinals_of_handle(handle)]
        return sorted(out, key=lambda a: (a.version, int(a)))

    # -- blocks and affinities (for the agent's routes) ------------------------------------
    def blocks_for_node(self, node: str) -> list[IPNetwork]:
        """Blocks confirmed affine to ``node``: the agent blackholes these locally."""
        return sorted(
            (
                a.value.cidr
                for a in self.store.affinities(node)
                if a.value.state is AffinityState.CONFIRMED
            ),
            key=lambda c: (c.version, int(c.network_address)),
        )

    def block_affinities(self) -> list[BlockAffinity]:
        """Every confirmed block affinity of every node: the agent routes remote blocks."""
        return [
            a.value for a in self.store.affinities() if a.value.state is AffinityState.CONFIRMED
        ]

    def borrowed(self, node: str | None = None) -> list[BorrowedAddress]:
        """Addresses assigned for ``node`` (or any node) inside another node's block."""
        return Usage(self.store, self.view).borrowed(node)

    # -- tunnel address -------------------------------------------------------------------
    def ensure_tunnel_address(self, node: str, kind: TunnelKind = "ipip") -> IPAddress | None:
        """The node's IPIP (or VXLAN) tunnel address, assigned if needed; None when no pool
        uses that encapsulation.

        Pools considered: enabled IPv4 pools selecting the node, allowing Tunnel use, with
        ``ipipMode`` (``vxlanMode``) other than Never. An address outside those (the mode
        turned off on its pool, pool deleted) is released, and a new one is taken from a
        current pool.
        """
        handle = tunnel_handle(node, kind)
        try:
            candidates = select_pools(
                self.view.pools(),
                version=4,
                node=node,
                node_labels=lambda: self.view.node_labels(node),
                requested=None,
                use=USE_TUNNEL,
            )
        except NoPoolsError:
            candidates = []  # no pool for this node: no tunnel address, not an error
        if kind == "ipip":
            usable = [p for p in candidates if p.spec.ipip_mode != "Never"]
        else:
            usable = [p for p in candidates if p.spec.vxlan_mode != "Never"]
        current = self.addresses_for_handle(handle)
        keep = next((ip for ip in current if pool_for(usable, ip) is not None), None)
        extra = [ip for ip in current if ip != keep]
        if extra:
            self._releaser.ips(ReleaseRequest(ip, handle) for ip in extra)
        if keep is not None or not usable:
            return keep
        got = self.assign_detailed(
            node=node,
            handle=handle,
            count=1,
            pools=[p.spec.cidr for p in usable],
            attrs={
                ATTR_NODE: node,
                ATTR_TYPE: TYPE_IPIP_TUNNEL if kind == "ipip" else TYPE_VXLAN_TUNNEL,
            },
            use=USE_TUNNEL,
        )
        return got[0].ip

    def release_tunnel_address(self, node: str, kind: TunnelKind = "ipip") -> list[IPAddress]:
        return self.release_by_handle(tunnel_handle(node, kind))

    # -- node lifecycle -------------------------------------------------------------------
    def release_node(self, node: str) -> NodeRelease:
        """Forget a deleted node: release its addresses (also borrowed ones) and blocks.

        Its blocks are deleted when empty; a block still holding other nodes' borrowed
        addresses keeps them and loses its owner (another node may claim it later).
        """
        released = self._releaser.matching_attrs(ATTR_NODE, node)
        released += self.release_tunnel_address(node)
        released += self.release_tunnel_address(node, "vxlan")
        cidrs = {a.value.cidr for a in self.store.affinities(node)}
        cidrs |= {b.value.cidr for b in self.store.blocks() if b.value.node == node}
        blocks = [
            c
            for c in sorted(cidrs, key=lambda c: (c.version, int(c.network_address)))
            if self._affinity.release(node, c, require_empty=False)
        ]
        return NodeRelease(released, blocks)

    def release_empty_blocks(self, grace: float = DEFAULT_GRACE_SECONDS) -> list[IPNetwork]:
        """Release blocks empty for longer than ``grace`` seconds (space back to the pool)."""
        return self._collector.release_empty_blocks(self.clock.now() - grace)

    # -- leaks ----------------------------------------------------------------------------
    def check(self) -> CheckReport:
        return Checker(self.store, self.view).check()

    def gc(self, grace: float = DEFAULT_GRACE_SECONDS) -> GCResult:
        """Fix leaks older than ``grace`` seconds and release blocks empty that long."""
        cutoff = self.clock.now() - grace
        result = self._collector.apply(self.check(), older_than=cutoff)
        result.empty_blocks_released += self._collector.release_empty_blocks(cutoff)
        return result

    def apply_report(self, report: CheckReport) -> GCResult:
        """Fix a saved check report's findings now (each guarded; stale ones are skipped)."""
        return self._collector.apply(report, older_than=None)

    # -- display and settings -------------------------------------------------------------
    def usage(self, *, show_blocks: bool = False) -> list[UsageRow]:
        return Usage(self.store, self.view).rows(show_blocks=show_blocks)

    def address_info(self, ip: IPAddress | str) -> AddressInfo | None:
        return Usage(self.store, self.view).address(_as_ip(ip))

    def settings(self) -> IPAMSettings:
        return self.view.settings()

    def configure(
        self, *, strict_affinity: bool | None = None, max_blocks_per_host: int | None = None
    ) -> IPAMSettings:
        if max_blocks_per_host is not None and max_blocks_per_host < 0:
            raise InvalidRequestError("max blocks per host must be 0 (no limit) or more")
        return self.view.configure(
            strict_affinity=strict_affinity, max_blocks_per_host=max_blocks_per_host
        )
