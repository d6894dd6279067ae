"""The routes manager: this node's route table, from the cluster view to the kernel.

Problem: the routes one node wants follow from the whole cluster (pools and their modes, block
affinities, borrowed addresses, local workloads) and, with BGP on, from what the speaker
learned; the kernel table must hold exactly those of ours and nothing else of ours.

How: :meth:`RoutesManager.update` computes the desired routes (:func:`tortie.agent.desired.
compute_routes`, pure) and hands them to the :class:`~tortie.dataplane.routetable.RouteTable`,
which only marks the changed destinations dirty; :meth:`RoutesManager.apply` is the table's
apply (mark-and-sweep on the first, deltas after). Failed routes are FAILED items (retried
with backoff, the others applied regardless), routes waiting for their device DEFERRED,
CNI routes in their grace period RETRY.

With BGP on, remote pod routes come from what the speaker learned (a dead node's routes go
with its session); VXLAN pools keep datastore routes, as Calico's do. During the speaker's
start-up grace the learned routes are added to the datastore's, never replacing them
(:mod:`tortie.agent.bgp_driver`).

Kernel facts: a device that went down or away makes its routes dirty (IPv4 flushes them
without a word), a route of ours deleted or replaced is rewritten, echoes of our own writes
ask for nothing (docs/agent.md). Other managers that (re)create a device call
:meth:`RoutesManager.on_device_changed` so routes through it are looked at in the same pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network
from typing import Protocol

from tortie.agent.desired import DesiredRoutes, RemotePrefix, compute_routes
from tortie.agent.manager import BaseManager, Metrics, Result
from tortie.agent.view import View
from tortie.dataplane.errors import retryable_errno
from tortie.dataplane.monitor import KernelChanges
from tortie.dataplane.routetable import RouteTable

WAITS_FOR_DEVICE = "route(s) wait for their device"
IN_GRACE = "CNI route(s) in their grace period"


class LearnedRoutes(Protocol):
    """What the routes need of BGP (:class:`tortie.agent.managers.bgp.BgpManager`)."""

    def learned(self) -> dict[IPv4Network, IPv4Address]: ...
    def authoritative(self) -> bool: ...


class RoutesManager(BaseManager):
    name = "routes"

    def __init__(self, table: RouteTable, *, bgp: LearnedRoutes | None = None) -> None:
        self.table = table
        self._bgp = bgp
        self.desired = DesiredRoutes()
        self.writes = 0
        self.failures = 0

    def update(self, view: View) -> None:
        prefixes = view.prefixes
        remote = prefixes.remote
        if self._bgp is not None:
            remote = self._with_bgp(view, remote)
        self.desired = compute_routes(
            view.local, view.pools, prefixes.local_blocks, remote, view.workload_addresses
        )
        self.table.set_routes(self.desired.specs)

    def _with_bgp(self, view: View, from_datastore: list[RemotePrefix]) -> list[RemotePrefix]:
        assert self._bgp is not None
        vxlan_pools = [p for p in view.pools if p.vxlan_mode != "Never"]

        def in_vxlan_pool(prefix: IPv4Network) -> bool:
            return any(prefix.subnet_of(p.cidr) for p in vxlan_pools)

        vtep_by_ip = {
            view.node_ips[name]: vtep[0]
            for name, vtep in view.vteps.items()
            if name in view.node_ips
        }
        learned = {
            prefix: RemotePrefix(prefix, next_hop, vtep_by_ip.get(next_hop))
            for prefix, next_hop in self._bgp.learned().items()
            if not in_vxlan_pool(prefix)
        }
        if not self._bgp.authoritative():
            # Start-up grace: keep the datastore's routes until the speaker has learned.
            keep = {r.prefix: r for r in from_datastore}
            return list({**keep, **learned}.values())
        return [r for r in from_datastore if in_vxlan_pool(r.prefix)] + list(learned.values())

    def apply(self) -> Result:
        applied = self.table.apply()
        self.writes += applied.writes
        self.failures += len(applied.failed)
        result = Result()
        for failure in applied.failed.values():
            result.fail(
                f"route {failure.dst}",
                f"route {failure.dst}: {failure.message}",
                retryable=retryable_errno(failure.code or None),
            )
        for reason in self.desired.unroutable:
            result.fail(f"unroutable {reason.split(':', 1)[0]}", reason)
        for dst in applied.deferred:
            result.defer(f"route {dst}", WAITS_FOR_DEVICE)
        for dst in applied.in_grace:
            result.retry(f"route {dst}", IN_GRACE, applied.retry_after or 0.0)
        return result

    def on_device_changed(self, name: str) -> None:
        """A manager (re)created or reconfigured device ``name``: look at its routes again."""
        self.table.on_interface_update(name)

    def on_kernel(self, changes: KernelChanges) -> list[str]:
        due: list[str] = []
        for link in changes.links:
            for name in (link.name, link.old_name):
                if not name:
                    continue
                gone = not (link.present and link.up) or name == link.old_name
                if self.table.on_interface_update(name, gone=gone):
                    due.append(f"routes through {name}")
        for change in changes.routes:
            if self.table.on_kernel_route(change.route, deleted=change.deleted):
                state = "deleted" if change.deleted else "changed"
                due.append(f"route {change.route.dst} {state}")
        return due

    def resync(self) -> None:
        self.table.queue_resync()

    def metrics(self) -> Metrics:
        return Metrics(
            counters={"route_writes_total": self.writes, "route_failures_total": self.failures},
            gauges={"routes_desired": len(self.desired.routes)},
        )

    def status(self) -> Mapping[str, object]:
        return {}
