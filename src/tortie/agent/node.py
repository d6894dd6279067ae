"""The node agent: the loop (:mod:`tortie.agent.loop`) with this node's managers, in order.

Problem: the loop knows managers only through their contract (:mod:`tortie.agent.manager`);
something must build them from the node's parts (its kernel, its IPIP backend, its nftables
table, its BGP speaker, IPAM over the datastore), wire the few that depend on each other, and
declare the order they run in. This module is that place, and the only one that names them:
a new concern (network policy) is a new manager and one more entry in :meth:`NodeAgent.
_managers`, with its status and metrics coming through the contract.

The order (:mod:`tortie.agent.managers` says what each does): tunnel addresses before the
devices that carry them; the devices (``tunl0``, ``vxlan.calico``) before the routes through
them; BGP before the routes it feeds; the workloads' interfaces after their routes (as before
the managers existed: configuring one makes its route look again on the next pass); the pod
MTU after the devices; IPAM gc last.

Invariants: the parts are injected (tests give a fake kernel, backend, firewall and speaker;
:mod:`tortie.agent.run` the real ones). ``current_pod_mtu`` and :meth:`NodeAgent.status` are
read by other threads (the CNI server, the status writer): they read attributes the loop
replaces whole.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable

from tortie.agent.bgp_driver import BgpDriver
from tortie.agent.config import AgentConfig, NodeAddress
from tortie.agent.desired import LocalNode
from tortie.agent.health import HealthBoard
from tortie.agent.loop import AgentLoop
from tortie.agent.manager import Manager
from tortie.agent.managers.addresses import TunnelAddresses
from tortie.agent.managers.bgp import BgpManager
from tortie.agent.managers.firewall import Firewall, FirewallManager
from tortie.agent.managers.ipam_gc import IpamGcManager
from tortie.agent.managers.mtu import MtuManager, atomic_write
from tortie.agent.managers.routes import RoutesManager
from tortie.agent.managers.tunnel import BackendFactory, TunnelManager
from tortie.agent.managers.vxlan import Vxlan, VxlanManager
from tortie.agent.managers.workloads import WorkloadsManager
from tortie.agent.registration import register_node
from tortie.agent.state import ClusterState
from tortie.agent.trust import DatastoreGuard
from tortie.dataplane.netlink import Netlink
from tortie.dataplane.routetable import RouteTable
from tortie.dataplane.vxlan import vtep_mac_for
from tortie.datastore.api import Datastore
from tortie.datastore.resources import ResourceStore
from tortie.ipam.client import IPAM


class NodeAgent(AgentLoop):
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
        self.address = address
        self.netlink = netlink
        self.resources = ResourceStore(store)
        self.ipam = ipam or IPAM(store)
        self.vtep_mac = vtep_mac_for(cfg.node_name)
        rng = rng or random.Random()
        uplink = address.uplink
        self.addresses = TunnelAddresses(
            self.ipam,
            self.resources,
            cfg.node_name,
            address.address,
            as_number=cfg.as_number,
            vtep_mac=self.vtep_mac,
        )
        self.bgp = BgpManager(bgp, clock) if bgp is not None else None
        table = RouteTable(
            netlink, proto=cfg.route_protocol, cni_grace_period=cfg.cni_grace_period, clock=clock
        )
        self.routes = RoutesManager(table, bgp=self.bgp)
        changed = self.routes.on_device_changed
        self.tunnel = TunnelManager(backend_factory, netlink, uplink, self.addresses, changed)
        self.vxlan = VxlanManager(vxlan_factory, netlink, uplink, self.addresses, changed)
        self.firewall = FirewallManager(firewall) if firewall is not None else None
        self.workloads = WorkloadsManager(netlink, changed)
        self.mtu = MtuManager(netlink, uplink, cfg.mtu_file)
        self.gc = IpamGcManager(self.ipam, clock=clock, rng=rng)
        super().__init__(
            store,
            ClusterState(cfg.node_name),
            LocalNode(cfg.node_name, address.address, uplink),
            self._managers(),
            resync_interval=cfg.resync_interval,
            board=board,
            guard=guard,
            clock=clock,
            rng=rng,
            wallclock=wallclock,
        )

    def _managers(self) -> list[Manager]:
        """The managers in the order they run (module docstring)."""
        listed: list[Manager | None] = [
            self.addresses,
            self.tunnel,
            self.vxlan,
            self.firewall,
            self.bgp,
            self.routes,
            self.workloads,
            self.mtu,
            self.gc,
        ]
        return [m for m in listed if m is not None]

    @property
    def current_pod_mtu(self) -> int:
        """The pods' MTU (host MTU less encapsulation); the CNI server's threads read it."""
        return self.mtu.current

    def register(self) -> None:
        register_node(
            self.resources,
            self.cfg.node_name,
            self.address.address,
            as_number=self.cfg.as_number,
            labels=self.cfg.labels or None,
        )

    def status(self) -> dict[str, object]:
        """The status file: ``tortie node status`` and the lab read it."""
        doc: dict[str, object] = {
            "node": self.cfg.node_name,
            "pid": os.getpid(),
            "address": str(self.address.address),
            "uplink": self.address.uplink,
            **self._loop_status(),
            # Absent managers still answer: their keys say they are off.
            "bgp": None,
            "firewall_counters": {},
        }
        for manager in self.managers:
            doc.update(manager.status())
        return doc

    def _loop_status(self) -> dict[str, object]:
        h = self.board.get()  # what the loop published last (any thread may read it)
        return {
            "in_sync": h.in_sync,
            "converged": h.converged,
            "detail": h.detail,
            # The syncer's status now (in_sync says only that it was in sync once): while the
            # datastore is away the agent keeps the dataplane and refuses pod ADDs; say so.
            "datastore": {
                "status": self.state.sync_status.value,
                "detail": self.state.sync_detail,
                "since": self.sync_since,
            },
        }

    def write_status(self, status: dict[str, object] | None = None) -> None:
        status = self.status() if status is None else status
        atomic_write(self.cfg.status_file, json.dumps(status, indent=2) + "\n")
