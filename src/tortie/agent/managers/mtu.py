"""The MTU manager: the pod MTU the CNI plugin gives new pods, from the uplink and the pools.

Problem: a pod's interface must leave room for the encapsulation its traffic may get: the
uplink's MTU less 20 for IPIP, less 50 for VXLAN (Calico's ``veth_mtu``). The CNI server
reads :attr:`MtuManager.current` (an int attribute swap: no lock), and the value is written to
``<state-dir>/mtu`` for whoever wants it.

Invariants: the file is rewritten only when its content changes, atomically (a reader never
sees half a number). A change of the uplink (its MTU, its addresses) asks for a pass.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

from tortie.agent.desired import tunnel_wanted, vxlan_wanted
from tortie.agent.manager import BaseManager, Result
from tortie.agent.view import View
from tortie.dataplane.errors import DataplaneError
from tortie.dataplane.ipip import IPIP_OVERHEAD
from tortie.dataplane.monitor import KernelChanges
from tortie.dataplane.netlink import Netlink
from tortie.dataplane.vxlan import VXLAN_OVERHEAD

DEFAULT_MTU = 1500


def host_mtu(netlink: Netlink, uplink: str) -> int:
    """The uplink's MTU (1500 while it is not there)."""
    link = netlink.get_link(uplink)
    return link.mtu if link is not None else DEFAULT_MTU


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class MtuManager(BaseManager):
    name = "mtu"

    def __init__(self, netlink: Netlink, uplink: str, path: Path) -> None:
        self.netlink = netlink
        self.uplink = uplink
        self.path = path
        # Read by CNI server threads: an int attribute swap is atomic, no lock needed.
        self.current = DEFAULT_MTU
        self._overhead = 0

    def update(self, view: View) -> None:
        if vxlan_wanted(view.pools):
            self._overhead = VXLAN_OVERHEAD
        elif tunnel_wanted(view.pools):
            self._overhead = IPIP_OVERHEAD
        else:
            self._overhead = 0

    def apply(self) -> Result:
        result = Result()
        try:
            self.current = host_mtu(self.netlink, self.uplink) - self._overhead
        except DataplaneError as err:
            result.fail(self.uplink, f"pod MTU: {err}", err)
            return result
        text = f"{self.current}\n"
        with contextlib.suppress(OSError):
            if self.path.read_text() == text:
                return result
        try:
            atomic_write(self.path, text)
        except OSError as err:
            result.fail("file", f"pod MTU file {self.path}: {err.strerror or err}")
        return result

    def on_kernel(self, changes: KernelChanges) -> list[str]:
        """The uplink changed (its MTU, or it came and went): the pod MTU may follow."""
        due = [
            f"{name} changed"
            for link in changes.links
            for name in (link.name, link.old_name)
            if name == self.uplink
        ]
        due += [f"address {a.addr} of {a.name}" for a in changes.addrs if a.name == self.uplink]
        return due

    def status(self) -> Mapping[str, object]:
        return {}
