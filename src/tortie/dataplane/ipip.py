"""IPIP (tunl0) behind one interface, with two backends and an automatic choice.

Problem: Calico's IPIP mode routes remote blocks ``via <nodeIP> dev tunl0 onlink`` and needs a
``tunl0`` that encapsulates. Where the kernel has the ipip module, tunl0 is a real tunnel
(:class:`~tortie.dataplane.ipip_kernel.KernelIPIP`); where it has not (these machines), tc-BPF
programs do the same work behind a placeholder tunl0
(:class:`~tortie.dataplane.ipip_bpf.BpfIPIP`). The routes are identical in both, so the route
reconciler never knows which backend is in use.

Invariants: ``ensure_device`` is idempotent and returns what it changed (an empty list when the
node was already set up: an agent restart must not disturb traffic); ``set_known_nodes`` takes
the complete set each time (desired state, not deltas).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from typing import Literal, Protocol

from tortie.dataplane.netlink import Netlink, NetlinkError
from tortie.dataplane.netns import NetnsRef

log = logging.getLogger(__name__)

TUNNEL_DEVICE = "tunl0"
IPIP_OVERHEAD = 20
BackendMode = Literal["auto", "kernel", "bpf"]
TunnelAddr = IPv4Interface | IPv4Address | str | None


class IPIPError(RuntimeError):
    """The node cannot be set up for this backend (e.g. tunl0 exists as something else)."""


class IPIPBackend(Protocol):
    name: str  # "kernel" or "bpf"
    device: str  # "tunl0"

    def ensure_device(self, mtu: int, tunnel_addr: TunnelAddr = None) -> list[str]:
        """Create/configure tunl0 (MTU, up, the /32 tunnel address); return what changed."""
        ...

    def set_known_nodes(self, node_ips: Iterable[IPv4Address]) -> list[str]:
        """The complete set of node IPs IPIP is accepted from; return what changed."""
        ...

    def counters(self) -> dict[str, int]:
        """Packet counters for metrics (names depend on the backend)."""
        ...

    def remove(self) -> list[str]:
        """Undo ensure_device (IPIP turned off): no address, no encapsulation."""
        ...


def tunnel_interface(addr: TunnelAddr) -> IPv4Interface | None:
    """The tunnel address as an interface address; a bare address is a /32 (Calico's form)."""
    if addr is None or isinstance(addr, IPv4Interface):
        return addr
    if isinstance(addr, IPv4Address):
        return IPv4Interface(f"{addr}/32")
    return IPv4Interface(addr if "/" in addr else f"{addr}/32")


def ensure_tunnel_address(netlink: Netlink, device: str, addr: TunnelAddr) -> list[str]:
    """Make ``addr`` the only IPv4 address of ``device``; return what changed."""
    want = tunnel_interface(addr)
    have = netlink.list_addrs(device)
    changes = []
    # Add before removing, so a changed tunnel address never leaves the device without one.
    if want is not None and want not in have:
        netlink.add_addr(device, want)
        changes.append(f"added address {want} to {device}")
    for old in have:
        if old != want:
            netlink.del_addr(device, old)
            changes.append(f"removed address {old} from {device}")
    return changes


def probe_kernel_ipip(netlink: Netlink, device: str = TUNNEL_DEVICE) -> tuple[bool, str]:
    """Can this namespace have a real ipip ``device``? (answer, why) — may create the device."""
    link = netlink.get_link(device)
    if link is not None:
        if link.kind == "ipip":
            return True, f"{device} is an ipip device"
        return False, f"{device} exists as {link.kind or 'a non-tunnel device'}: keeping it"
    try:
        netlink.create_ipip(device)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            return False, f"the kernel cannot create ipip devices ({exc.strerror})"
    # Loading the module creates tunl0 in every namespace, so EEXIST means "it works".
    link = netlink.get_link(device)
    if link is not None and link.kind == "ipip":
        return True, f"created {device}: the kernel has ipip"
    return False, f"{device} did not come up as an ipip device"


def make_ipip_backend(
    mode: BackendMode,
    netlink: Netlink,
    *,
    node_ip: IPv4Address,
    uplink: str,
    pin_dir: Path,
    netns: NetnsRef = None,
    bpf_object: Path | None = None,
    device: str = TUNNEL_DEVICE,
    bpf_attach: Literal["auto", "tcx", "tc"] = "auto",
) -> tuple[IPIPBackend, str]:
    """The backend for ``mode`` and why it was chosen (``auto``: kernel if it can, else bpf)."""
    # Imported here: each backend pulls in modules the other does not need.
    from tortie.dataplane.ipip_bpf import BpfIPIP
    from tortie.dataplane.ipip_kernel import KernelIPIP

    if mode == "kernel":
        return KernelIPIP(netlink, device=device), "configured: kernel"
    if mode == "bpf":
        reason = "configured: bpf"
    else:
        ok, why = probe_kernel_ipip(netlink, device)
        if ok:
            log.info("ipip backend auto -> kernel: %s", why)
            return KernelIPIP(netlink, device=device), f"auto: kernel ({why})"
        reason = f"auto: bpf ({why})"
        log.info("ipip backend auto -> bpf: %s", why)
    backend = BpfIPIP(
        netlink,
        node_ip=node_ip,
        uplink=uplink,
        pin_dir=pin_dir,
        netns=netns,
        bpf_object=bpf_object,
        device=device,
        attach=bpf_attach,
    )
    return backend, reason
