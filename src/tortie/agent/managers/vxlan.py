"""The VXLAN manager: ``vxlan.calico`` and the remote VTEPs, for VXLAN pools.

Problem: VXLAN routes (``<block> via <remote VTEP> dev vxlan.calico onlink``) need the device
(with this node's VTEP address and MAC, and the uplink's MTU less 50) and, per remote node
that published its VTEP, a permanent FDB entry (its MAC -> its node IP) and neighbour entry
(its VTEP address -> its MAC), as Felix's VXLAN manager programs them
(:class:`~tortie.dataplane.vxlan.VXLANManager` does the kernel side).

Invariants: the device exists only while some pool uses VXLAN and this node has its VTEP
address; otherwise it is removed. A remote node without a published VTEP MAC gets no entries
(its routes are reported unroutable by the routes manager until it publishes). When the device
changed, the routes manager is told in the same pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from ipaddress import IPv4Interface
from typing import Protocol

from tortie.agent.desired import vxlan_wanted
from tortie.agent.manager import BaseManager, Result
from tortie.agent.managers.addresses import TunnelAddresses
from tortie.agent.managers.mtu import host_mtu
from tortie.agent.view import View
from tortie.dataplane.errors import DataplaneError
from tortie.dataplane.monitor import KernelChanges
from tortie.dataplane.netlink import Netlink
from tortie.dataplane.vxlan import VXLAN_OVERHEAD, RemoteVTEP
from tortie.model.naming import VXLAN_DEVICE

log = logging.getLogger(__name__)


class Vxlan(Protocol):
    """What the manager needs of the VXLAN device driver (VXLANManager)."""

    device: str

    def ensure_device(
        self, mtu: int, vtep_addr: IPv4Interface | None = None, mac: str | None = None
    ) -> list[str]: ...
    def set_remote_vteps(self, vteps: Iterable[RemoteVTEP]) -> list[str]: ...
    def remove(self) -> list[str]: ...


class VxlanManager(BaseManager):
    name = "vxlan"

    def __init__(
        self,
        factory: Callable[[], Vxlan] | None,
        netlink: Netlink,
        uplink: str,
        addresses: TunnelAddresses,
        on_device_changed: Callable[[str], None],
    ) -> None:
        self._factory = factory
        self.netlink = netlink
        self.uplink = uplink
        self.addresses = addresses
        self._on_device_changed = on_device_changed
        self.driver: Vxlan | None = None
        self._wanted = False
        self._remotes: list[RemoteVTEP] = []

    def update(self, view: View) -> None:
        self._wanted = vxlan_wanted(view.pools)
        me = view.local.name
        self._remotes = [
            RemoteVTEP(view.node_ips[name], addr, mac)
            for name, (addr, mac) in view.vteps.items()
            if name != me and name in view.node_ips and mac
        ]

    def apply(self) -> Result:
        result = Result()
        if self._wanted and self.driver is None and self._factory is None:
            result.fail(
                VXLAN_DEVICE,
                "vxlan device: a pool uses VXLAN but this agent has no VXLAN manager",
            )
            return result
        try:
            self._apply()
        except DataplaneError as err:
            result.fail(VXLAN_DEVICE, f"vxlan device: {err}", err)
        return result

    def _apply(self) -> None:
        vtep = self.addresses.vtep
        if not self._wanted or vtep is None:
            if self.driver is not None:
                changes = self.driver.remove()
                if changes:
                    log.info("VXLAN off: %s", "; ".join(changes))
            return
        if self.driver is None:
            assert self._factory is not None
            self.driver = self._factory()
        mtu = host_mtu(self.netlink, self.uplink) - VXLAN_OVERHEAD
        device_changes = self.driver.ensure_device(
            mtu, IPv4Interface(f"{vtep}/32"), self.addresses.vtep_mac
        )
        if device_changes:
            self._on_device_changed(self.driver.device)
        changes = device_changes + self.driver.set_remote_vteps(self._remotes)
        if changes:
            log.info("vxlan: %s", "; ".join(changes))

    def on_kernel(self, changes: KernelChanges) -> list[str]:
        if self.driver is None:
            return []
        device = self.driver.device
        due = [
            f"{name} changed"
            for link in changes.links
            for name in (link.name, link.old_name)
            if name == device
        ]
        due += [f"address {a.addr} of {a.name}" for a in changes.addrs if a.name == device]
        return due
