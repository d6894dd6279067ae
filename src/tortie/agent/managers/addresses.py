"""The tunnel addresses manager: this node's IPIP and VXLAN tunnel addresses, from IPAM.

Problem: IPIP and VXLAN need an address per node from the pools (IPAM handles
``ipip-tunnel-addr-<node>`` and ``vxlan-tunnel-addr-<node>``), recorded on the node's Node
resource so other nodes route (and build FDB entries) to them; when no pool needs one any more
it is released. Calico's node does this in its startup and IPAM tunnel-address code.

Invariants: the IPAM calls (datastore writes) run only when the pool set changed since the
last success, or after a failure, never on every pass. A failure (the datastore unavailable, the
pool exhausted) is a FAILED item retried with backoff; the addresses published so far stay.

Runs first: the tunnel and VXLAN managers read :attr:`TunnelAddresses.ipip` and
:attr:`TunnelAddresses.vtep` in the same pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Interface

from tortie.agent.manager import BaseManager, Result
from tortie.agent.registration import register_node
from tortie.agent.view import View
from tortie.datastore.resources import ResourceStore
from tortie.errors import TortieError
from tortie.ipam.client import IPAM

Signature = tuple[tuple[str, str, str], ...]


class TunnelAddresses(BaseManager):
    name = "addresses"

    def __init__(
        self,
        ipam: IPAM,
        resources: ResourceStore,
        node_name: str,
        address: IPv4Interface,
        *,
        as_number: int | None,
        vtep_mac: str,
    ) -> None:
        self.ipam = ipam
        self.resources = resources
        self.node_name = node_name
        self.address = address
        self.as_number = as_number
        self.vtep_mac = vtep_mac
        self.ipip: IPv4Address | None = None
        self.vtep: IPv4Address | None = None
        self._done: Signature | None = None  # the pool set of the last success
        self._want: Signature = ()

    def update(self, view: View) -> None:
        self._want = tuple(sorted((str(p.cidr), p.ipip_mode, p.vxlan_mode) for p in view.pools))

    def apply(self) -> Result:
        result = Result()
        if self._want == self._done:
            return result
        try:
            self._sync()
        except TortieError as err:
            result.fail("tunnel-address", f"tunnel address: {err}", err)
        else:
            self._done = self._want
        return result

    def _sync(self) -> None:
        """Ensure (or release) our tunnel addresses in IPAM and record them on our Node."""
        me = self.node_name
        ipip = self.ipam.ensure_tunnel_address(me, "ipip")
        vtep = self.ipam.ensure_tunnel_address(me, "vxlan")
        ipip_v4 = ipip if isinstance(ipip, IPv4Address) else None
        vtep_v4 = vtep if isinstance(vtep, IPv4Address) else None
        register_node(
            self.resources,
            me,
            self.address,
            as_number=self.as_number,
            tunnel_address=ipip_v4,
            vxlan=(vtep_v4, self.vtep_mac if vtep_v4 else None),
        )
        self.ipip = ipip_v4
        self.vtep = vtep_v4

    def status(self) -> Mapping[str, object]:
        return {
            "tunnel_address": str(self.ipip) if self.ipip else None,
            "vxlan_tunnel_address": str(self.vtep) if self.vtep else None,
        }
