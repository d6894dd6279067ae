"""The tunnel manager: ``tunl0`` for IPIP pools, through the backend chosen for this kernel.

Problem: IPIP routes (``<block> via <node> dev tunl0 onlink``) need a ``tunl0`` that
encapsulates: the kernel's ipip module, or tc-BPF programs behind a placeholder device
(:mod:`tortie.dataplane.ipip`). It must exist while some pool uses IPIP, carry this node's
tunnel address (/32), have the uplink's MTU less 20, and accept IPIP only from known nodes.

Invariants: the backend is chosen once, on the first pass that wants IPIP (the choice may
probe the kernel); the known nodes are set before the device is ensured, so a (re)load of the
BPF programs attaches with the full allowlist in place. When the device changed (made again,
reconfigured) the routes manager is told at once (``on_device_changed``), so the routes
through it are rewritten in the same pass; only then, since telling drops the route table's
cache of routes through the device. No pool using IPIP: the backend removes what it made.

Kernel facts: a change of ``tunl0`` (or the BPF placeholder's peer), or of its addresses,
asks for a pass (a deleted ``tunl0`` is made again).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from ipaddress import IPv4Address, IPv4Interface

from tortie.agent.desired import tunnel_wanted
from tortie.agent.manager import BaseManager, Metrics, Result
from tortie.agent.managers.addresses import TunnelAddresses
from tortie.agent.managers.mtu import host_mtu
from tortie.agent.view import View
from tortie.dataplane.errors import DataplaneError
from tortie.dataplane.ipip import IPIP_OVERHEAD, IPIPBackend
from tortie.dataplane.monitor import KernelChanges
from tortie.dataplane.netlink import Netlink
from tortie.model.naming import TUNNEL_DEVICE

log = logging.getLogger(__name__)

BackendFactory = Callable[[], tuple[IPIPBackend, str]]


class TunnelManager(BaseManager):
    name = "tunnel"

    def __init__(
        self,
        backend_factory: BackendFactory,
        netlink: Netlink,
        uplink: str,
        addresses: TunnelAddresses,
        on_device_changed: Callable[[str], None],
    ) -> None:
        self._factory = backend_factory
        self.netlink = netlink
        self.uplink = uplink
        self.addresses = addresses
        self._on_device_changed = on_device_changed
        self.backend: IPIPBackend | None = None
        self.reason = ""
        self._wanted = False
        self._others: set[IPv4Address] = set()
        self._counters: dict[str, int] = {}

    def update(self, view: View) -> None:
        self._wanted = tunnel_wanted(view.pools)
        me = view.local.name
        self._others = {ip for name, ip in view.node_ips.items() if name != me}

    def apply(self) -> Result:
        result = Result()
        try:
            self._apply()
        except DataplaneError as err:
            result.fail(TUNNEL_DEVICE, f"tunnel device: {err}", err)
        return result

    def _apply(self) -> None:
        if not self._wanted:
            if self.backend is not None:
                changes = self.backend.remove()
                if changes:
                    log.info("IPIP off: %s", "; ".join(changes))
            return
        if self.backend is None:
            self.backend, self.reason = self._factory()
            log.info("IPIP backend %s (%s)", self.backend.name, self.reason)
        backend = self.backend
        # Known nodes first: a (re)load then attaches with the full allowlist in place.
        changes = backend.set_known_nodes(self._others)
        addr = self.addresses.ipip
        tunnel = IPv4Interface(f"{addr}/32") if addr else None
        mtu = host_mtu(self.netlink, self.uplink) - IPIP_OVERHEAD
        device_changes = backend.ensure_device(mtu, tunnel)
        if device_changes:
            self._on_device_changed(backend.device)
        changes += device_changes
        if changes:
            log.info("tunnel: %s", "; ".join(changes))

    def _watched(self) -> set[str]:
        if self.backend is None:
            return set()
        names = {self.backend.device}
        peer = getattr(self.backend, "peer", None)  # the BPF placeholder's
        if isinstance(peer, str):
            names.add(peer)
        return names

    def on_kernel(self, changes: KernelChanges) -> list[str]:
        watched = self._watched()
        due = [
            f"{name} changed"
            for link in changes.links
            for name in (link.name, link.old_name)
            if name and name in watched
        ]
        due += [f"address {a.addr} of {a.name}" for a in changes.addrs if a.name in watched]
        return due

    def metrics(self) -> Metrics:
        """The backend's packet counters, read when published (a failed read keeps the last)."""
        if self.backend is not None:
            try:
                self._counters = self.backend.counters()
            except DataplaneError as err:
                log.debug("IPIP counters: %s", err)
        return Metrics(
            counters={f"ipip_{name}_total": value for name, value in self._counters.items()},
            help={"ipip_dropped_unknown_source_total": "IPIP packets from non-node IPs"},
        )

    def status(self) -> Mapping[str, object]:
        return {
            "ipip_backend": self.backend.name if self.backend else None,
            "ipip_backend_reason": self.reason,
        }
