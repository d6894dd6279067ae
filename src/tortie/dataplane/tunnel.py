"""A tunnel device's own address: tunl0's and vxlan.calico's, the same rule for both.

Problem: each encapsulating device carries one IPv4 address that IPAM gave the node (Calico's
``ipv4IPIPTunnelAddr`` / ``ipv4VXLANTunnelAddr``), used as the source of what the node itself
sends into the tunnel. IPIP (:mod:`.ipip_kernel`, :mod:`.ipip_bpf`) and VXLAN (:mod:`.vxlan`)
keep it the same way, so the rule lives here, below both, and neither imports the other.

Invariants: the address is the device's *only* IPv4 address (we own the tunnel devices, so any
other address is stale); a bare address is a /32, Calico's form; :func:`ensure_tunnel_address`
is idempotent and returns what it changed (``[]`` on a node already set up).

Hazard: a changed address is added before the old one is removed, so the device never has
none in between (a node's own packets into the tunnel would pick another source meanwhile).
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface

from tortie.dataplane.netlink import Netlink

TunnelAddr = IPv4Interface | IPv4Address | str | None


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
