"""The firewall manager: tortie's nftables table follows the cluster.

Problem: the table (:class:`~tortie.dataplane.nftables.NftablesManager`) holds sets, not
rules per node or pod: the node addresses IPIP and VXLAN are accepted from, the pools (and
which of them masquerade, ``natOutgoing``), and each local workload's interface and address
(anti-spoofing). This manager hands it the complete sets each pass; the table writes only the
difference.

Invariants: the table is re-read (and its drop counters with it) on the first pass, at every
periodic resync, and when the kernel monitor reports a change to it (someone flushed or
deleted it); otherwise its cached sets are trusted. A failure (nft refused) is a FAILED item
retried with backoff; the other managers still apply.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address, IPv4Network
from typing import Protocol

from tortie.agent.manager import BaseManager, Metrics, Result
from tortie.agent.view import View
from tortie.dataplane.errors import DataplaneError
from tortie.dataplane.monitor import KernelChanges

log = logging.getLogger(__name__)


class Firewall(Protocol):
    """What the manager needs of tortie's nftables table (NftablesManager)."""

    def ensure_table(self) -> list[str]: ...
    def resync(self) -> list[str]: ...
    def set_node_ips(self, ips: Iterable[IPv4Address | str]) -> list[str]: ...
    def set_pools(
        self, all_cidrs: Iterable[IPv4Network | str], nat_cidrs: Iterable[IPv4Network | str]
    ) -> list[str]: ...
    def set_workloads(self, endpoints: Iterable[tuple[str, IPv4Address | str]]) -> list[str]: ...
    def counters(self) -> dict[str, int]: ...


class FirewallManager(BaseManager):
    name = "firewall"

    def __init__(self, table: Firewall) -> None:
        self.table = table
        self.counters: dict[str, int] = {}
        self._resync = True
        self._node_ips: list[IPv4Address] = []
        self._pools: list[str] = []
        self._nat: list[str] = []
        self._workloads: list[tuple[str, IPv4Address]] = []

    def update(self, view: View) -> None:
        self._node_ips = list(view.node_ips.values())
        self._pools = [p.spec.cidr for p in view.ippools]
        self._nat = [p.spec.cidr for p in view.ippools if p.spec.nat_outgoing]
        self._workloads = view.firewall_endpoints()

    def apply(self) -> Result:
        result = Result()
        try:
            self._apply()
        except DataplaneError as err:
            result.fail("table", f"nftables: {err}", err)
        return result

    def _apply(self) -> None:
        table = self.table
        changes: list[str] = []
        if self._resync:
            changes += table.resync()
            self.counters = table.counters()
            self._resync = False
        changes += table.set_node_ips(self._node_ips)
        changes += table.set_pools(self._pools, self._nat)
        changes += table.set_workloads(self._workloads)
        if changes:
            log.info("nftables: %s", "; ".join(changes))

    def on_kernel(self, changes: KernelChanges) -> list[str]:
        if not changes.firewall:
            return []
        self._resync = True
        return ["nftables table changed"]

    def resync(self) -> None:
        self._resync = True

    def metrics(self) -> Metrics:
        return Metrics(counters={f"nft_{name}_total": v for name, v in self.counters.items()})

    def status(self) -> Mapping[str, object]:
        return {"firewall_counters": dict(self.counters)}
