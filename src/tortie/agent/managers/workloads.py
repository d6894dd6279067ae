"""The workloads manager: the host side of this node's pod interfaces, and which are ours.

Problem: a pod's ``cali...`` interface needs proxy ARP, forwarding, ``route_localnet``, strict
``rp_filter`` and no proxy delay (:mod:`tortie.dataplane.workload`). The CNI side sets them at
ADD; this manager is the backstop (pods wired before an upgrade, settings changed by hand) and
re-asserts them after every periodic resync.

Which endpoints are ours (:func:`tortie.model.naming.is_workload_interface`, Felix's
InterfacePrefix) is decided in the view; an endpoint on another interface (``interfaceName:
eth0`` applied by hand) gets no route, anti-spoofing entry or sysctl: this manager logs each
such endpoint once and reports them (status ``ignored_endpoints``, gauge
``workloads_ignored``).

Invariants: links are dumped only while some wanted interface is not configured yet (a dump
costs a netlink round trip per pass and node), not on every pass; an interface configured
once is not configured again until it goes away (or is renamed) or a resync forgets them all.
An interface that vanished while being configured is skipped (its pod is going); any other
failure is a FAILED item retried with backoff. After configuring an interface the routes
manager is told, so the pod's /32 is looked at again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from tortie.agent.desired import ignored_reason
from tortie.agent.manager import BaseManager, Metrics, Result
from tortie.agent.view import View
from tortie.dataplane.errors import DataplaneError
from tortie.dataplane.monitor import KernelChanges
from tortie.dataplane.netlink import Netlink
from tortie.dataplane.workload import NoInterfaceError, configure_workload_interface

log = logging.getLogger(__name__)


class WorkloadsManager(BaseManager):
    name = "workloads"

    def __init__(self, netlink: Netlink, on_configured: Callable[[str], None]) -> None:
        self.netlink = netlink
        self._on_configured = on_configured
        self.configured: set[str] = set()
        self.ignored: dict[str, str] = {}  # "ns/name" -> interface not ours
        self._wanted: set[str] = set()

    def update(self, view: View) -> None:
        self._wanted = view.workload_interfaces
        ignored = view.ignored_workloads
        for key, name in ignored.items():
            if self.ignored.get(key) != name:
                log.warning("workload endpoint %s ignored: %s", key, ignored_reason(name))
        self.ignored = ignored

    def apply(self) -> Result:
        result = Result()
        self.configured &= self._wanted
        if self._wanted <= self.configured:
            return result
        present = {link.name for link in self.netlink.list_links()}
        for ifname in sorted((self._wanted & present) - self.configured):
            try:
                # Looked up at call time: tests replace it (no /proc/sys to write there).
                changes = configure_workload_interface(ifname)
            except NoInterfaceError:
                continue  # gone since the dump: its pod is being deleted
            except DataplaneError as err:
                result.fail(ifname, f"workload interface {ifname}: {err}", err)
                continue
            if changes:
                log.info("workload %s: %s", ifname, "; ".join(changes))
            self.configured.add(ifname)
            self._on_configured(ifname)
        self.configured &= present
        return result

    def on_kernel(self, changes: KernelChanges) -> list[str]:
        for link in changes.links:
            for name in (link.name, link.old_name):
                if name and (not link.present or name == link.old_name):
                    # Gone (or renamed): a new interface of that name needs its settings.
                    self.configured.discard(name)
        return []

    def resync(self) -> None:
        self.configured.clear()

    def metrics(self) -> Metrics:
        return Metrics(
            gauges={"workloads_ignored": len(self.ignored)},
            help={"workloads_ignored": "local endpoints whose interface lacks the cali prefix"},
        )

    def status(self) -> Mapping[str, object]:
        return {
            "ignored_endpoints": {
                key: ignored_reason(name) for key, name in sorted(self.ignored.items())
            }
        }
