"""Host-side settings of a workload (pod) interface, which the agent re-asserts.

Problem: a Calico pod's default route is ``via 169.254.1.1``, an address nobody has: the host
side of the pod's veth (``caliXXXXXXXXXXX``) answers ARP for it by proxy ARP, and forwards
what the pod sends. The CNI plugin sets this up when the pod is created; the agent re-asserts
it on every resync so a reboot, an operator or a bug cannot leave a pod unreachable.

The settings, as Felix sets them:
- ``proxy_arp=1``: answer the pod's ARP for 169.254.1.1 (and anything else) with our MAC. The
  kernel only answers if it has a route to the asked address through *another* interface, so
  the node needs a default route (real nodes have one; lab nodes must get one).
- ``neigh/.../proxy_delay=0``: otherwise the kernel delays proxy replies (up to 0.8 s) and a
  pod's first packet waits.
- ``forwarding=1``: route what the pod sends.
- ``route_localnet=1``: allow DNAT to the host's 127.0.0.0/8 (node-local services).
- ``rp_filter=1``: strict reverse-path filter, so a pod cannot spoof another source address.

Hazard: pyroute2's netlink call for proxy_arp reports success and changes nothing on these
kernels; we write ``/proc/sys`` from inside the namespace instead (:mod:`tortie.dataplane.netns`).
Stdlib only, and cheap to import: the CNI plugin uses this on its per-pod fast path.
"""

from __future__ import annotations

import errno

from tortie.dataplane.errors import DataplaneError, kernel_call
from tortie.dataplane.netlink import Netlink
from tortie.dataplane.netns import NetnsRef, ensure_sysctls


class NoInterfaceError(DataplaneError, FileNotFoundError):
    """The workload interface is not there (a pod deleted meanwhile): errno ENOENT."""

    def __init__(self, ifname: str) -> None:
        super().__init__(f"no interface {ifname}", errno=errno.ENOENT)
        self.ifname = ifname


def workload_sysctls(ifname: str, *, allow_spoofing: bool = False) -> dict[str, str]:
    """The sysctls (path form) a workload interface must have."""
    return {
        f"net/ipv4/conf/{ifname}/proxy_arp": "1",
        f"net/ipv4/neigh/{ifname}/proxy_delay": "0",
        f"net/ipv4/conf/{ifname}/forwarding": "1",
        f"net/ipv4/conf/{ifname}/route_localnet": "1",
        f"net/ipv4/conf/{ifname}/rp_filter": "0" if allow_spoofing else "1",
    }


def configure_workload_interface(
    ifname: str,
    *,
    netns: NetnsRef = None,
    netlink: Netlink | None = None,
    mtu: int | None = None,
    allow_spoofing: bool = False,
) -> list[str]:
    """Re-assert the host side of a workload interface; return what changed.

    Sysctls always; MTU and admin-up too when ``netlink`` is given (for ``netns``'s kernel).
    Raises :class:`~tortie.dataplane.errors.DataplaneError` (an OSError) for what the kernel
    refused; ``errno`` ENOENT when the interface does not exist (its sysctl directory is
    missing: a pod deleted meanwhile).
    """
    wanted = workload_sysctls(ifname, allow_spoofing=allow_spoofing)
    try:
        with kernel_call(f"workload interface {ifname}: sysctls"):
            written = ensure_sysctls(wanted, netns)
    except DataplaneError as exc:
        if exc.errno == errno.ENOENT:
            raise NoInterfaceError(ifname) from exc
        raise
    changes = [f"{key.rsplit('/', 1)[1]}={wanted[key]} on {ifname}" for key in written]
    if netlink is not None:
        link = netlink.get_link(ifname)
        if link is None:
            raise NoInterfaceError(ifname)
        if mtu is not None and link.mtu != mtu:
            netlink.set_link(ifname, mtu=mtu)
            changes.append(f"{ifname} mtu {link.mtu} -> {mtu}")
        if not link.up:
            netlink.set_link(ifname, up=True)
            changes.append(f"{ifname} up")
    return changes
