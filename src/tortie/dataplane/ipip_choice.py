"""Choosing the IPIP backend: ``kernel`` (the ipip module's tunl0) or ``bpf`` (tc-BPF), or
``auto``: the kernel's if this namespace can have one, else BPF.

Problem: the agent configures a mode (Calico has only the kernel's tunl0; these machines have
no ipip module), and ``auto`` must find out whether the kernel can make an ipip device without
damaging anything. The backends (:mod:`.ipip_kernel`, :mod:`.ipip_bpf`) implement the
:class:`~tortie.dataplane.ipip.IPIPBackend` protocol of :mod:`.ipip`; this module sits above
all three, so a backend never imports the choice (import-linter keeps it so: the choice
imported by ``ipip.py`` once made ``ipip`` <-> ``ipip_bpf``/``ipip_kernel`` a cycle).

Invariants: the probe never touches a ``tunl0`` that exists as something else (it answers "no",
and the BPF backend then refuses the device with an error that says what to do); the reason for
the choice is returned with the backend, and ``auto``'s is logged.

Hazard: probing may *create* tunl0: asking the kernel for an ipip device loads the module where
it exists, and loading it creates ``tunl0`` in every namespace (hence EEXIST means "it works").
"""

from __future__ import annotations

import errno
import logging
from ipaddress import IPv4Address
from pathlib import Path
from typing import Literal

from tortie.dataplane.ipip import BackendMode, IPIPBackend
from tortie.dataplane.netlink import Netlink, NetlinkError
from tortie.dataplane.netns import NetnsRef
from tortie.model.naming import TUNNEL_DEVICE

log = logging.getLogger(__name__)


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
