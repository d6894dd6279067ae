"""The node agent's reconciler: one loop owns the state and converges the kernel to it.

Problem: the datastore says what the cluster looks like (pools and their modes, nodes,
block affinities, borrowed addresses, local workloads); this node's kernel must hold the
matching routes, tunnel device and workload settings, and keep holding them through agent
restarts, datastore outages, foreign changes and partial failures.

Design (Felix's, see felix/design/dataplane.md):
- The datastore syncer (a thread) only enqueues events; this loop is the only writer of
  :class:`ClusterState` and the only caller into the dataplane. Bursts are coalesced: the
  loop drains everything queued before computing once.
- No kernel write happens before the syncer has reported in-sync: a half-read datastore
  would look like "delete most routes".
- The first apply is the route table's mark-and-sweep: it dumps the kernel and removes only
  what is ours (route protocol, ``cali*`` routes after their grace period). A restarted agent
  finding the kernel already right writes nothing.
- Periodic resync (jittered +-10%, so a fleet does not resync in lockstep) re-dumps the
  kernel and re-asserts workload sysctls; failures are retried per item with backoff, the
  rest are applied regardless.
- Between resyncs the kernel monitor (:mod:`tortie.dataplane.monitor`, started by
  :mod:`tortie.agent.run`) reports link, address, route (and our nft table's) changes; like
  the syncer it only enqueues, and :meth:`NodeAgent._kernel_changed` turns the facts into
  targeted repairs: a device that went down or away makes its routes dirty (IPv4 flushes them
  without a word), a route of ours deleted or replaced is rewritten, a deleted tunnel device
  is re-created, our nft table is re-read; lost events mean a full resync (docs/agent.md).
- Fail static (:mod:`tortie.agent.trust`): while the datastore guard refuses the store (another
  id, or its revision went backwards), the loop makes no kernel or IPAM write at all; when the
  guard lifts, the next pass re-dumps the kernel.

Hazards: IPAM calls (tunnel address) write to the datastore from this loop; they happen only
when the pool set changes or a previous attempt failed, never on every pass.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Protocol

from tortie.agent.bgp_driver import BgpDriver
from tortie.agent.config import AgentConfig, NodeAddress
from tortie.agent.desired import (
    DesiredRoutes,
    LocalNode,
    PoolInfo,
    RemotePrefix,
    Workload,
    compute_routes,
    ignored_reason,
    tunnel_wanted,
    vxlan_wanted,
)
from tortie.agent.health import Health, HealthBoard
from tortie.agent.registration import register_node
from tortie.agent.state import ClusterState
from tortie.agent.trust import DatastoreGuard
from tortie.dataplane.ipip import IPIP_OVERHEAD, IPIPBackend
from tortie.dataplane.monitor import KernelChanges
from tortie.dataplane.netlink import Netlink
from tortie.dataplane.routetable import ApplyResult, RouteTable
from tortie.dataplane.vxlan import VXLAN_OVERHEAD, RemoteVTEP, vtep_mac_for
from tortie.dataplane.workload import configure_workload_interface
from tortie.datastore.api import Datastore
from tortie.datastore.resources import ResourceStore
from tortie.datastore.syncer import StatusChanged, Syncer, SyncEvent
from tortie.errors import TortieError
from tortie.ipam.client import IPAM
from tortie.model.naming import is_workload_interface
from tortie.model.resources import WorkloadEndpoint

log = logging.getLogger(__name__)

SYNC_PREFIX = "/tortie/"
MAX_EVENTS_PER_PASS = 10_000
RETRY_MIN = 0.5
RETRY_MAX = 30.0
IPAM_GC_INTERVAL = 300.0

BackendFactory = Callable[[], tuple[IPIPBackend, str]]


class _Nudge:
    """Something outside the datastore changed (BGP learned a route): recompute."""


class Firewall(Protocol):
    """What the agent needs of tortie's nftables table (NftablesManager)."""

    def ensure_table(self) -> list[str]: ...
    def resync(self) -> list[str]: ...
    def set_node_ips(self, ips: Iterable[IPv4Address | str]) -> list[str]: ...
    def set_pools(
        self, all_cidrs: Iterable[IPv4Network | str], nat_cidrs: Iterable[IPv4Network | str]
    ) -> list[str]: ...
    def set_workloads(self, endpoints: Iterable[tuple[str, IPv4Address | str]]) -> list[str]: ...
    def counters(self) -> dict[str, int]: ...


class Vxlan(Protocol):
    """What the agent needs of the VXLAN device manager (VXLANManager)."""

    device: str

    def ensure_device(
        self, mtu: int, vtep_addr: IPv4Interface | None = None, mac: str | None = None
    ) -> list[str]: ...
    def set_remote_vteps(self, vteps: Iterable[RemoteVTEP]) -> list[str]: ...
    def remove(self) -> list[str]: ...


@dataclass
class Counters:
    passes: int = 0
    route_writes: int = 0
    route_failures: int = 0
    resyncs: int = 0
    dataplane_errors: int = 0
    kernel_changes: int = 0  # batches from the kernel monitor
    kernel_repairs: int = 0  # of those, batches that asked for a pass
    kernel_lost: int = 0  # batches that lost events (full resync)
    values: dict[str, float] = field(default_factory=dict)


class NodeAgent:
    def __init__(
        self,
        cfg: AgentConfig,
        store: Datastore,
        netlink: Netlink,
        address: NodeAddress,
        backend_factory: BackendFactory,
        *,
        ipam: IPAM | None = None,
        firewall: Firewall | None = None,
        vxlan_factory: Callable[[], Vxlan] | None = None,
        bgp: BgpDriver | None = None,
        board: HealthBoard | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        guard: DatastoreGuard | None = None,
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.netlink = netlink
        self.address = address
        self.local = LocalNode(cfg.node_name, address.address, address.uplink)
        self.resources = ResourceStore(store)
        self.ipam = ipam or IPAM(store)
        self.board = board or HealthBoard()
        self.state = ClusterState(cfg.node_name)
        self.routes = RouteTable(
            netlink,
            proto=cfg.route_protocol,
            cni_grace_period=cfg.cni_grace_period,
            clock=clock,
        )
        self.events: queue.Queue[SyncEvent | _Nudge | KernelChanges] = queue.Queue()
        self.counters = Counters()
        self._backend_factory = backend_factory
        self._backend: IPIPBackend | None = None
        self.firewall = firewall
        self.bgp = bgp
        self._firewall_resync = True
        self._firewall_counters: dict[str, int] = {}
        self._vxlan_factory = vxlan_factory
        self._vxlan: Vxlan | None = None
        self._vtep: IPv4Address | None = None
        self.vtep_mac = vtep_mac_for(cfg.node_name)
        self.backend_reason = ""
        self._clock = clock
        self._rng = rng or random.Random()
        self._pools_signature: tuple[tuple[str, str, str], ...] | None = None
        self._tunnel_addr: IPv4Address | None = None
        self._configured_ifaces: set[str] = set()
        self._ignored_endpoints: dict[str, str] = {}  # "ns/name" -> interface not ours
        self._retry_at: float | None = None
        self._extra_pass_at: float | None = None  # e.g. the end of BGP's start-up grace
        self._retry_delay = RETRY_MIN
        self._resync_at = 0.0
        self._gc_at = 0.0
        self._converged = False
        self._detail = "waiting for the datastore"
        self.guard = guard
        self._refused = False
        self._wallclock = wallclock
        self._sync_since: float | None = None  # Unix time of the syncer's last status change
        self.last_desired = DesiredRoutes()
        # Read by CNI server threads: an int attribute swap is atomic, no lock needed.
        self.current_pod_mtu = 1500

    # -- lifecycle ------------------------------------------------------------------------
    def on_sync_event(self, event: SyncEvent) -> None:
        """Syncer thread callback: enqueue only."""
        self.events.put(event)

    def on_kernel_changes(self, changes: KernelChanges) -> None:
        """Kernel monitor thread callback: enqueue only."""
        self.events.put(changes)

    def register(self) -> None:
        register_node(
            self.resources,
            self.cfg.node_name,
            self.address.address,
            as_number=self.cfg.as_number,
            labels=self.cfg.labels or None,
        )

    def run(self, stop: threading.Event) -> None:
        syncer = Syncer(self.store, SYNC_PREFIX, self.on_sync_event, name="agent-syncer")
        syncer.start()
        now = self._clock()
        self._resync_at = now + self._jittered(self.cfg.resync_interval)
        self._gc_at = now + self._jittered(IPAM_GC_INTERVAL)
        try:
            while not stop.is_set():
                self.run_once(timeout=self._timeout())
        finally:
            syncer.stop()

    def run_once(self, timeout: float = 0.0) -> None:
        """One pass: fold queued events, then reconcile if anything is due."""
        self._fold(timeout)
        self.counters.passes += 1
        if self.state.in_sync and not self._guard_refuses():
            now = self._clock()
            resync = now >= self._resync_at
            if resync:
                self._resync_at = now + self._jittered(self.cfg.resync_interval)
                self.routes.queue_resync()
                self._configured_ifaces.clear()
                self._firewall_resync = True
                self.counters.resyncs += 1
            retry = self._retry_at is not None and now >= self._retry_at
            if self._extra_pass_at is not None and now >= self._extra_pass_at:
                self._extra_pass_at = None
                retry = True
            if self.state.dirty or resync or retry:
                self.reconcile()
            if now >= self._gc_at:
                self._gc_at = now + self._jittered(IPAM_GC_INTERVAL)
                self._ipam_gc()
        self._publish()

    def _guard_refuses(self) -> bool:
        """Issue 17: no write while the guard refuses the datastore (the kernel stays as it
        is); once it lifts, resync at once (the kernel may have drifted meanwhile)."""
        problem = self.guard.check(self.state) if self.guard is not None else ""
        if problem:
            self._refused = True
            self._converged, self._detail = False, problem
            return True
        if self._refused:
            self._refused = False
            self._resync_at = self._clock()
        return False

    # -- the reconcile pass ---------------------------------------------------------------
    def reconcile(self) -> ApplyResult | None:
        self.state.dirty = False
        problems: list[str] = []
        pools = [
            PoolInfo(IPv4Network(p.spec.cidr), p.spec.ipip_mode, p.spec.vxlan_mode)
            for p in self.state.pools.values()
            if p.ip_version == 4
        ]
        want_tunnel = tunnel_wanted(pools)
        want_vxlan = vxlan_wanted(pools)
        signature = tuple(sorted((str(p.cidr), p.ipip_mode, p.vxlan_mode) for p in pools))
        if signature != self._pools_signature:
            try:
                self._sync_tunnel_address()
                self._pools_signature = signature
            except TortieError as err:
                problems.append(f"tunnel address: {err}")
        try:
            self._sync_tunnel_device(want_tunnel)
        except (TortieError, OSError, RuntimeError) as err:
            problems.append(f"tunnel device: {err}")
            self.counters.dataplane_errors += 1
        try:
            self._sync_vxlan_device(want_vxlan)
        except (TortieError, OSError, RuntimeError) as err:
            problems.append(f"vxlan device: {err}")
            self.counters.dataplane_errors += 1
        try:
            self._sync_firewall()
        except (TortieError, OSError, RuntimeError) as err:
            problems.append(f"nftables: {err}")
            self.counters.dataplane_errors += 1

        desired = self._desired_routes(pools)
        self.last_desired = desired
        self.routes.set_routes(desired.specs)
        result = self.routes.apply()
        self.counters.route_writes += result.writes
        self.counters.route_failures += len(result.failed)
        problems += [f"route {f.dst}: {f.message}" for f in result.failed.values()]
        problems += desired.unroutable
        if self.bgp is not None and self.bgp.problem:
            problems.append(self.bgp.problem)
        self._sync_workload_interfaces()
        self._write_mtu(pools)
        self._after_pass(result, problems)
        return result

    def _desired_routes(self, pools: list[PoolInfo]) -> DesiredRoutes:
        me = self.cfg.node_name
        node_ips: dict[str, IPv4Address] = {}
        vteps: dict[str, IPv4Address] = {}
        for name in self.state.nodes:
            iface = self.state.node_ipv4(name)
            if iface is not None:
                node_ips[name] = iface.ip
            vtep = self.state.node_vtep(name)
            if vtep is not None:
                vteps[name] = vtep[0]
        local_blocks: list[IPv4Network] = []
        remote: list[RemotePrefix] = []
        for node, cidr in self.state.confirmed_affinities():
            if node == me:
                local_blocks.append(cidr)
            elif node in node_ips:
                remote.append(RemotePrefix(cidr, node_ips[node], vteps.get(node)))
        held_borrowed: list[IPv4Network] = []
        for addr, holder in self.state.borrowed():
            prefix = IPv4Network(f"{addr}/32")
            if holder == me:
                held_borrowed.append(prefix)
            elif holder in node_ips:
                remote.append(RemotePrefix(prefix, node_ips[holder], vteps.get(holder)))
        if self.bgp is not None:
            remote = self._bgp_remote(pools, local_blocks + held_borrowed, remote, vteps, node_ips)
        workloads = [
            Workload(IPv4Network(net, strict=False), wep.spec.interface_name)
            for wep in self._local_workloads()
            if wep.spec.interface_name
            for net in wep.spec.ip_networks
            if ":" not in net
        ]
        return compute_routes(self.local, pools, local_blocks, remote, workloads)

    def _bgp_remote(
        self,
        pools: list[PoolInfo],
        announce: list[IPv4Network],
        from_datastore: list[RemotePrefix],
        vteps: dict[str, IPv4Address],
        node_ips: dict[str, IPv4Address],
    ) -> list[RemotePrefix]:
        """With BGP on, remote pod routes come from what the speaker learned (a dead node's
        routes go with its session); VXLAN pools keep datastore routes, as Calico's do."""
        assert self.bgp is not None
        try:
            changes = self.bgp.sync(self.state, announce)
        except (TortieError, OSError) as err:
            self.bgp.problem = f"BGP speaker: {err}"
            changes = []
        if changes:
            log.info("bgp: %s", "; ".join(changes))
        vxlan_pools = [p for p in pools if p.vxlan_mode != "Never"]

        def in_vxlan_pool(prefix: IPv4Network) -> bool:
            return any(prefix.subnet_of(p.cidr) for p in vxlan_pools)

        vtep_by_ip = {ip: vteps[n] for n, ip in node_ips.items() if n in vteps}
        learned = {
            prefix: RemotePrefix(prefix, next_hop, vtep_by_ip.get(next_hop))
            for prefix, next_hop in self.bgp.learned().items()
            if not in_vxlan_pool(prefix)
        }
        if not self.bgp.authoritative():
            # Start-up grace: keep the datastore's routes until the speaker has learned.
            self._schedule_retry(self.bgp.trusted_at)
            keep = {r.prefix: r for r in from_datastore}
            return list({**keep, **learned}.values())
        return [r for r in from_datastore if in_vxlan_pool(r.prefix)] + list(learned.values())

    def _schedule_retry(self, at_monotonic: float) -> None:
        if self._extra_pass_at is None or at_monotonic < self._extra_pass_at:
            self._extra_pass_at = at_monotonic

    def _sync_tunnel_address(self) -> None:
        """Ensure (or release) our IPIP and VXLAN tunnel addresses in IPAM; record them on
        our Node so other nodes can route (and build FDB entries) to them."""
        me = self.cfg.node_name
        ipip = self.ipam.ensure_tunnel_address(me, "ipip")
        vtep = self.ipam.ensure_tunnel_address(me, "vxlan")
        ipip_v4 = ipip if isinstance(ipip, IPv4Address) else None
        vtep_v4 = vtep if isinstance(vtep, IPv4Address) else None
        register_node(
            self.resources,
            me,
            self.address.address,
            as_number=self.cfg.as_number,
            tunnel_address=ipip_v4,
            vxlan=(vtep_v4, self.vtep_mac if vtep_v4 else None),
        )
        self._tunnel_addr = ipip_v4
        self._vtep = vtep_v4

    def _sync_tunnel_device(self, wanted: bool) -> None:
        if not wanted:
            if self._backend is not None:
                changes = self._backend.remove()
                if changes:
                    log.info("IPIP off: %s", "; ".join(changes))
            return
        if self._backend is None:
            self._backend, self.backend_reason = self._backend_factory()
            log.info("IPIP backend %s (%s)", self._backend.name, self.backend_reason)
        backend = self._backend
        others = {
            iface.ip
            for name in self.state.nodes
            if name != self.cfg.node_name and (iface := self.state.node_ipv4(name)) is not None
        }
        # Known nodes first: a (re)load then attaches with the full allowlist in place.
        changes = backend.set_known_nodes(others)
        tunnel = IPv4Interface(f"{self._tunnel_addr}/32") if self._tunnel_addr else None
        device_changes = backend.ensure_device(self.host_mtu() - IPIP_OVERHEAD, tunnel)
        if device_changes:
            # The device may be new (or re-created): routes through it need another look.
            # Only then: this drops the route table's cache of routes through the device.
            self.routes.on_interface_update(backend.device)
        changes += device_changes
        if changes:
            log.info("tunnel: %s", "; ".join(changes))

    def _sync_vxlan_device(self, wanted: bool) -> None:
        if not wanted or self._vtep is None:
            if self._vxlan is not None:
                changes = self._vxlan.remove()
                if changes:
                    log.info("VXLAN off: %s", "; ".join(changes))
            return
        if self._vxlan is None:
            if self._vxlan_factory is None:
                raise RuntimeError("a pool uses VXLAN but this agent has no VXLAN manager")
            self._vxlan = self._vxlan_factory()
        me = self.cfg.node_name
        remotes: list[RemoteVTEP] = []
        for name in self.state.nodes:
            iface = self.state.node_ipv4(name)
            vtep = self.state.node_vtep(name)
            if name != me and iface is not None and vtep is not None and vtep[1]:
                remotes.append(RemoteVTEP(iface.ip, vtep[0], vtep[1]))
        mtu = self.host_mtu() - VXLAN_OVERHEAD
        device_changes = self._vxlan.ensure_device(
            mtu, IPv4Interface(f"{self._vtep}/32"), self.vtep_mac
        )
        if device_changes:
            self.routes.on_interface_update(self._vxlan.device)
        changes = device_changes + self._vxlan.set_remote_vteps(remotes)
        if changes:
            log.info("vxlan: %s", "; ".join(changes))

    def _sync_firewall(self) -> None:
        fw = self.firewall
        if fw is None:
            return
        changes: list[str] = []
        if self._firewall_resync:
            changes += fw.resync()
            self._firewall_counters = fw.counters()
            self._firewall_resync = False
        node_ips = [iface.ip for name in self.state.nodes if (iface := self.state.node_ipv4(name))]
        pools = [p for p in self.state.pools.values() if p.ip_version == 4]
        changes += fw.set_node_ips(node_ips)
        changes += fw.set_pools(
            [p.spec.cidr for p in pools], [p.spec.cidr for p in pools if p.spec.nat_outgoing]
        )
        changes += fw.set_workloads(
            (wep.spec.interface_name, IPv4Interface(net).ip)
            for wep in self._local_workloads()
            if wep.spec.interface_name
            for net in wep.spec.ip_networks
            if ":" not in net
        )
        if changes:
            log.info("nftables: %s", "; ".join(changes))

    def _sync_workload_interfaces(self) -> None:
        """Configure each local workload's host interface once (the CNI side's wiring does it
        at ADD; this is the backstop, e.g. for pods wired before an upgrade). Links are dumped
        only while some wanted interface is not configured yet (a periodic resync forgets
        them all), not on every pass: a dump costs a netlink round trip per pass and node."""
        wanted = {
            wep.spec.interface_name for wep in self._local_workloads() if wep.spec.interface_name
        }
        self._configured_ifaces &= wanted
        if wanted <= self._configured_ifaces:
            return
        present = {link.name for link in self.netlink.list_links()}
        for ifname in sorted((wanted & present) - self._configured_ifaces):
            try:
                changes = configure_workload_interface(ifname)
            except OSError as err:
                log.warning("workload interface %s: %s", ifname, err)
                continue
            if changes:
                log.info("workload %s: %s", ifname, "; ".join(changes))
            self._configured_ifaces.add(ifname)
            self.routes.on_interface_update(ifname)
        self._configured_ifaces &= present

    def _local_workloads(self) -> list[WorkloadEndpoint]:
        """This node's endpoints whose interface is ours to manage (routes, nftables entries,
        sysctls: :func:`tortie.model.naming.is_workload_interface`, Felix's InterfacePrefix).
        The others are ignored: logged once each, counted in the status and a gauge."""
        managed: list[WorkloadEndpoint] = []
        ignored: dict[str, str] = {}
        for wep in self.state.local_workloads():
            name = wep.spec.interface_name
            if not name or is_workload_interface(name):
                managed.append(wep)
                continue
            key = f"{wep.metadata.namespace}/{wep.metadata.name}"
            ignored[key] = name
            if self._ignored_endpoints.get(key) != name:
                log.warning("workload endpoint %s ignored: %s", key, ignored_reason(name))
        self._ignored_endpoints = ignored
        return managed

    # -- helpers --------------------------------------------------------------------------
    def host_mtu(self) -> int:
        link = self.netlink.get_link(self.address.uplink)
        return link.mtu if link is not None else 1500

    def pod_mtu(self, pools: list[PoolInfo]) -> int:
        overhead = 0
        if any(p.vxlan_mode != "Never" for p in pools):
            overhead = VXLAN_OVERHEAD
        elif tunnel_wanted(pools):
            overhead = IPIP_OVERHEAD
        return self.host_mtu() - overhead

    def _write_mtu(self, pools: list[PoolInfo]) -> None:
        path = self.cfg.mtu_file
        self.current_pod_mtu = self.pod_mtu(pools)
        text = f"{self.current_pod_mtu}\n"
        with contextlib.suppress(OSError):
            if path.read_text() == text:
                return
        _atomic_write(path, text)

    def _ipam_gc(self) -> None:
        try:
            result = self.ipam.gc()
            self.ipam.release_empty_blocks()
        except TortieError as err:
            log.warning("IPAM garbage collection failed: %s", err)
            return
        log.debug("IPAM gc: %s", result)

    def _after_pass(self, result: ApplyResult, problems: list[str]) -> None:
        """Record convergence and schedule the retry. Waiting (a pod's interface not there
        yet, a CNI route in its grace period) is normal and retried quietly; failures back off
        exponentially and are logged."""
        self._converged = not problems and result.converged
        if self._converged:
            self._retry_at = None
            self._retry_delay = RETRY_MIN
            self._detail = "ok"
            return
        waiting = []
        if result.deferred:
            waiting.append(f"{len(result.deferred)} route(s) wait for their device")
        if result.in_grace:
            waiting.append(f"{len(result.in_grace)} CNI route(s) in their grace period")
        self._detail = "; ".join((problems + waiting)[:3])
        if problems:
            delay = self._retry_delay
            self._retry_delay = min(RETRY_MAX, self._retry_delay * 2)
            log.warning("not converged (retry in %.1fs): %s", delay, self._detail)
        else:
            delay = RETRY_MIN if result.retry_after is None else max(0.05, result.retry_after)
            log.debug("waiting (retry in %.1fs): %s", delay, self._detail)
        self._retry_at = self._clock() + delay

    def _fold(self, timeout: float) -> None:
        try:
            first = self.events.get(timeout=timeout) if timeout > 0 else self.events.get_nowait()
        except queue.Empty:
            return
        self._fold_one(first)
        for _ in range(MAX_EVENTS_PER_PASS):
            try:
                self._fold_one(self.events.get_nowait())
            except queue.Empty:
                return

    def _fold_one(self, event: SyncEvent | _Nudge | KernelChanges) -> None:
        if isinstance(event, _Nudge):
            self.state.dirty = True
        elif isinstance(event, KernelChanges):
            self._kernel_changed(event)
        else:
            if isinstance(event, StatusChanged):
                self._sync_since = self._wallclock()
            self.state.apply(event)

    def _kernel_changed(self, changes: KernelChanges) -> None:
        """Turn the kernel monitor's facts into repairs; ask for a pass only if one is due.

        Our own writes echo back as events: they match what the route table wants (or touch
        nothing we watch), so they ask for no pass, and a pass that writes nothing makes no
        new event: no feedback loop.
        """
        self.counters.kernel_changes += 1
        if changes.lost:
            log.info("kernel monitor: %s; resyncing routes, devices and nftables", changes.lost)
            self.counters.kernel_lost += 1
            self.routes.queue_resync()
            self._configured_ifaces.clear()
            self._firewall_resync = True
            self.state.dirty = True
            return
        watched = self._watched_devices()
        due: list[str] = []
        for link in changes.links:
            for name in (link.name, link.old_name):
                if not name:
                    continue
                gone = not (link.present and link.up) or name == link.old_name
                if self.routes.on_interface_update(name, gone=gone):
                    due.append(f"routes through {name}")
                if name in watched:
                    due.append(f"{name} changed")
                if (not link.present or name == link.old_name) and name in self._configured_ifaces:
                    # Gone (or renamed): a new interface of that name needs its settings.
                    self._configured_ifaces.discard(name)
        for change in changes.routes:
            if self.routes.on_kernel_route(change.route, deleted=change.deleted):
                due.append(f"route {change.route.dst} {'deleted' if change.deleted else 'changed'}")
        due += [f"address {a.addr} of {a.name}" for a in changes.addrs if a.name in watched]
        if changes.firewall:
            self._firewall_resync = True
            due.append("nftables table changed")
        if due:
            self.counters.kernel_repairs += 1
            log.info("kernel: %s", "; ".join(sorted(set(due))[:5]))
            self.state.dirty = True

    def _watched_devices(self) -> set[str]:
        """Devices whose change needs a pass even without routes through them: the uplink
        (MTU, the tunnel's outer path), the tunnel device (and the BPF placeholder's peer),
        the VXLAN device."""
        names = {self.address.uplink}
        if self._backend is not None:
            names.add(self._backend.device)
            peer = getattr(self._backend, "peer", None)
            if isinstance(peer, str):
                names.add(peer)
        if self._vxlan is not None:
            names.add(self._vxlan.device)
        return names

    def nudge(self) -> None:
        """Any thread: ask the loop for a reconcile pass (BGP speaker events)."""
        self.events.put(_Nudge())

    def _timeout(self) -> float:
        now = self._clock()
        deadlines = [self._resync_at, self._gc_at, now + 1.0]  # 1 s: heartbeat
        if self._retry_at is not None:
            deadlines.append(self._retry_at)
        if self._extra_pass_at is not None:
            deadlines.append(self._extra_pass_at)
        return max(0.0, min(deadlines) - now)

    def _jittered(self, interval: float) -> float:
        return interval * self._rng.uniform(0.9, 1.1)

    def _publish(self) -> None:
        c = self.counters
        counters: dict[str, float] = {
            "agent_passes_total": c.passes,
            "route_writes_total": c.route_writes,
            "route_failures_total": c.route_failures,
            "route_resyncs_total": c.resyncs,
            "dataplane_errors_total": c.dataplane_errors,
            "kernel_changes_total": c.kernel_changes,
            "kernel_repairs_total": c.kernel_repairs,
            "kernel_events_lost_total": c.kernel_lost,
        }
        if self._backend is not None:
            for name, value in self._backend.counters().items():
                counters[f"ipip_{name}_total"] = value
        for name, value in self._firewall_counters.items():
            counters[f"nft_{name}_total"] = value
        gauges: dict[str, float] = {
            "in_sync": float(self.state.in_sync),
            "converged": float(self._converged),
            "routes_desired": len(self.routes.desired),
            "datastore_revision": self.state.revision,
            "datastore_bad_keys": len(self.state.bad_keys),
            "workloads_ignored": len(self._ignored_endpoints),
        }
        self.board.publish(
            Health(
                heartbeat=self._clock(),
                in_sync=self.state.in_sync,
                converged=self._converged,
                detail=self._detail,
                counters=counters,
                gauges=gauges,
                help={
                    "ipip_dropped_unknown_source_total": "IPIP packets from non-node IPs",
                    "workloads_ignored": "local endpoints whose interface lacks the cali prefix",
                },
            )
        )

    def status(self) -> dict[str, object]:
        h = self.board.get()
        return {
            "node": self.cfg.node_name,
            "pid": os.getpid(),
            "address": str(self.address.address),
            "uplink": self.address.uplink,
            "in_sync": h.in_sync,
            "converged": h.converged,
            "detail": h.detail,
            # The syncer's status now (in_sync says only that it was in sync once): while the
            # datastore is away the agent keeps the dataplane and refuses pod ADDs; say so.
            "datastore": {
                "status": self.state.sync_status.value,
                "detail": self.state.sync_detail,
                "since": self._sync_since,
            },
            "ipip_backend": self._backend.name if self._backend else None,
            "ipip_backend_reason": self.backend_reason,
            "tunnel_address": str(self._tunnel_addr) if self._tunnel_addr else None,
            "vxlan_tunnel_address": str(self._vtep) if self._vtep else None,
            "firewall_counters": dict(self._firewall_counters),
            "ignored_endpoints": {
                key: ignored_reason(name) for key, name in sorted(self._ignored_endpoints.items())
            },
            "bgp": (
                None
                if self.bgp is None
                else {
                    "state_dir": str(self.bgp.state_dir),
                    "speaker": type(self.bgp.speaker).__name__ if self.bgp.speaker else None,
                    "problem": self.bgp.problem,
                }
            ),
        }

    def write_status(self, status: dict[str, object] | None = None) -> None:
        status = self.status() if status is None else status
        _atomic_write(self.cfg.status_file, json.dumps(status, indent=2) + "\n")


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
