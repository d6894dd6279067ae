"""The ``kernel`` IPIP backend: a real ipip ``tunl0`` (the ipip module), as Calico uses it.

Problem: where the kernel has ipip, tunl0 is an NBMA tunnel: the outer destination is the
route's gateway (``via <nodeIP> dev tunl0 onlink``), so the device only needs MTU, up and the
/32 tunnel address. Loading the module creates ``tunl0`` in every namespace by itself (the
fallback device), so "create" tolerates EEXIST, and the device cannot be deleted: removal
means down and no address.

Not done here: accepting IPIP only from known node IPs (Felix does that with an iptables rule).
``set_known_nodes`` records the set; enforcing it is for the policy layer (or the bpf decap
program in filter mode, later).
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from ipaddress import IPv4Address

from tortie.dataplane.ipip import IPIPError
from tortie.dataplane.netlink import Link, Netlink, NetlinkError
from tortie.dataplane.tunnel import TunnelAddr, ensure_tunnel_address
from tortie.model.naming import TUNNEL_DEVICE


class KernelIPIP:
    name = "kernel"

    def __init__(self, netlink: Netlink, *, device: str = TUNNEL_DEVICE) -> None:
        self.netlink = netlink
        self.device = device
        self.known_nodes: frozenset[IPv4Address] = frozenset()

    def _link(self) -> Link:
        link = self.netlink.get_link(self.device)
        if link is None:
            raise IPIPError(f"{self.device} vanished")
        if link.kind != "ipip":
            raise IPIPError(
                f"{self.device} exists as {link.kind}, not an ipip tunnel: delete it, or use "
                "--ipip-backend bpf",
                retryable=False,
            )
        return link

    def ensure_device(self, mtu: int, tunnel_addr: TunnelAddr = None) -> list[str]:
        changes = []
        if self.netlink.get_link(self.device) is None:
            try:
                self.netlink.create_ipip(self.device)
                changes.append(f"created ipip {self.device}")
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise
        link = self._link()
        if link.mtu != mtu:
            self.netlink.set_link(self.device, mtu=mtu)
            changes.append(f"{self.device} mtu {link.mtu} -> {mtu}")
        if not link.up:
            self.netlink.set_link(self.device, up=True)
            changes.append(f"{self.device} up")
        changes += ensure_tunnel_address(self.netlink, self.device, tunnel_addr)
        return changes

    def set_known_nodes(self, node_ips: Iterable[IPv4Address]) -> list[str]:
        new = frozenset(node_ips)
        changes = [] if new == self.known_nodes else [f"known nodes: {len(new)}"]
        self.known_nodes = new
        return changes

    def counters(self) -> dict[str, int]:
        link = self.netlink.get_link(self.device)
        if link is None:
            return {}
        return {
            "tx_packets": link.tx_packets,
            "rx_packets": link.rx_packets,
            "tx_dropped": link.tx_dropped,
            "rx_dropped": link.rx_dropped,
        }

    def remove(self) -> list[str]:
        link = self.netlink.get_link(self.device)
        if link is None:
            return []
        changes = ensure_tunnel_address(self.netlink, self.device, None)
        if link.up:
            self.netlink.set_link(self.device, up=False)
            changes.append(f"{self.device} down")
        return changes
