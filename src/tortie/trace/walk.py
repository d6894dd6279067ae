"""Following one packet through a lab, hop by hop, asking each namespace's kernel.

Problem: the seed tells the ping's journey (pod eth0 -> cali -> route -> tunl0 encapsulates ->
uplink -> wire -> the other node decapsulates -> /32 route -> cali -> pod). The trace must tell
the same story *from the live state*, so at every namespace it asks the kernel what it would do
(``ip route get DST from SRC iif DEV``), and explains the answer with what else is in force
there: proxy ARP for 169.254.1.1, the anti-spoofing and natOutgoing rules of tortie's nftables
table, the tunnel (tunl0's encapsulation, or vxlan.calico's neighbour and FDB entries), and on
the receiving node the decapsulation gate (the tc-BPF allowlist or nftables ``node_ips``).

The walk, per namespace ("place"): ingress checks (anti-spoofing on ``cali*``; a reply's
conntrack undoing a masquerade) -> the route lookup on the outermost header -> if the answer is
``local`` and the packet is encapsulated: decapsulate and look the inner packet up again,
arriving on the tunnel device -> natOutgoing (first packet of a connection only) -> the
out-device's encapsulation and the outer packet's own lookup -> which namespace is on the other
side (the pod's veth peer, or whoever owns the next-hop address).

Invariants:
- pure over a :class:`~tortie.trace.kernel.KernelView`: every fact is something the view
  was asked, and goes into the step as evidence;
- nothing is assumed from the lab's mode: a route via tunl0 is IPIP because the kernel said so;
- a walk ends: delivered (a ``local`` answer), dropped (a refusal, a blackhole, a failed
  check), left the lab (no namespace owns the next hop), or loop (:data:`MAX_HOPS`).

The tunnels' part (encapsulation, decapsulation) is :mod:`.tunnel`; the hop's state
is :mod:`.hop`.
"""

from __future__ import annotations

from typing import Literal

from tortie.trace.hop import CALI_PREFIX, TUNL0, End, HopState, Next, route_step
from tortie.trace.kernel import KernelView
from tortie.trace.model import Evidence, Hop, Journey, Masquerade, Packet, Place, Step
from tortie.trace.parse import NftTable, Route
from tortie.trace.places import LabMap
from tortie.trace.tunnel import decapsulate, encap_ipip, encap_vxlan

MAX_HOPS = 16
Direction = Literal["request", "reply"]


class Walker:
    def __init__(self, view: KernelView, labmap: LabMap) -> None:
        self.view = view
        self.map = labmap

    def walk(
        self,
        direction: Direction,
        start: Place,
        packet: Packet,
        explicit_src: bool = True,
        undo: Masquerade | None = None,
    ) -> Journey:
        """Follow ``packet`` from ``start`` (where it is sent) until it ends."""
        hops: list[Hop] = []
        place, iif, arrives, pkt = start, None, None, packet
        masquerade: Masquerade | None = None
        for _ in range(MAX_HOPS):
            state = HopState(place, iif, arrives, pkt, iif, explicit_src or iif is not None)
            result = self._hop(direction, state, undo if direction == "reply" else None)
            masquerade = masquerade or state.masquerade
            if isinstance(result, End):
                hops.append(state.hop(leaves=False))
                delivered = state.pkt if result.outcome == "delivered" else None
                return Journey(
                    direction,
                    packet,
                    tuple(hops),
                    result.outcome,
                    result.reason,
                    place,
                    delivered,
                    masquerade,
                )
            hops.append(state.hop(leaves=True))
            place, iif, arrives, pkt = result.place, result.iif, state.pkt, state.pkt
        return Journey(
            direction,
            packet,
            tuple(hops),
            "loop",
            f"still travelling after {MAX_HOPS} hops: a routing loop?",
            None,
            None,
            masquerade,
        )

    # -- one hop --------------------------------------------------------------------------------

    def _hop(self, direction: Direction, s: HopState, undo: Masquerade | None) -> End | Next:
        if s.in_dev is not None and s.in_dev.startswith(CALI_PREFIX):
            end = self._antispoof(s)
            if end is not None:
                return end
        if undo is not None:
            self._undo_masquerade(s, undo)
        route: Route | None = None
        for _ in range(3):  # at most this many layers of encapsulation
            hdr = s.pkt.top
            src = hdr.src if s.explicit_src or s.pkt.outer is not None else None
            lookup = self.view.route_get(s.place, hdr.dst, src, s.iif)
            s.add(route_step(lookup))
            route = lookup.route
            if route is None:
                return End("dropped", f"{s.place.name}'s kernel has no route: {lookup.error}")
            if route.type != "local":
                break
            if s.pkt.outer is None:
                s.add(Step("deliver", f"{hdr.dst} is {s.place.name}'s own address: delivered"))
                return End("delivered", f"delivered to {s.place.name}")
            end = decapsulate(self.view, s)
            if end is not None:
                return end
        assert route is not None
        if route.type != "unicast" or route.dev is None:
            s.add(Step("drop", f"a {route.type} route: the kernel discards the packet", "drop"))
            return End("dropped", f"{route.type} route on {s.place.name}")
        s.out_dev = route.dev
        if direction == "request":
            s.masquerade = self._nat_outgoing(s)
        return self._leave(s, route)

    def _leave(self, s: HopState, route: Route) -> End | Next:
        """Encapsulation by the out-device, then the namespace on the other side."""
        assert s.out_dev is not None
        next_hop = route.next_hop
        link = self.view.links(s.place).get(s.out_dev)
        if s.out_dev == TUNL0 or (link is not None and link.kind == "ipip"):
            found = encap_ipip(self.view, s, route)
        elif link is not None and link.kind == "vxlan":
            found = encap_vxlan(self.view, s, route)
        else:
            found = next_hop
        if isinstance(found, End):
            return found
        return self._next_place(s, found, route)

    # -- checks -----------------------------------------------------------------------------------

    def _table(self, place: Place) -> tuple[Evidence, NftTable | None]:
        return self.view.nft_table(place)

    def _antispoof(self, s: HopState) -> End | None:
        ev, table = self._table(s.place)
        src, dev = s.pkt.inner.src, s.in_dev or ""
        if table is None or not table.has_set("workload_src"):
            s.add(
                Step(
                    "firewall",
                    "anti-spoofing: no tortie nftables table here: nothing checked",
                    "none",
                    (ev,),
                )
            )
            return None
        ok = table.contains_pair("workload_src", dev, src)
        verdict = "accept" if ok else "drop"
        has = "has" if ok else "does not have"
        s.add(
            Step(
                "firewall",
                f'anti-spoofing (prerouting, iifname "cali*"): set workload_src {has} '
                f'"{dev}" . {src} -> {verdict}',
                verdict,
                (ev,),
                {"set": "workload_src", "element": [dev, src], "member": ok},
            )
        )
        if ok:
            return None
        return End("dropped", f"{src} is not {dev}'s workload address (anti-spoofing)")

    def _undo_masquerade(self, s: HopState, undo: Masquerade) -> None:
        pkt = s.pkt
        if s.place.name != undo.place or pkt.outer is not None or pkt.inner.dst != undo.new_src:
            return
        s.pkt = pkt.with_inner(dst=undo.original_src)
        s.add(
            Step(
                "nat",
                f"conntrack: a reply of the masqueraded connection: destination {undo.new_src} "
                f"-> {undo.original_src} again (before routing)",
                "unmasquerade",
                (),
                undo.to_json(),
            )
        )

    def _nat_outgoing(self, s: HopState) -> Masquerade | None:
        """natOutgoing on the connection's first packet: pool source, destination outside."""
        if s.place.kind != "node" or s.pkt.outer is not None:
            return None
        if s.in_dev is not None and not s.in_dev.startswith(CALI_PREFIX):
            # From the wire or a tunnel: a pod source means a pool destination (the first
            # node masquerades everything else), so the rule cannot match; say nothing.
            return None
        ev, table = self._table(s.place)
        if table is None or not table.has_set("nat_pool_cidrs"):
            return None
        src, dst = s.pkt.inner.src, s.pkt.inner.dst
        if not table.contains_addr("nat_pool_cidrs", src):
            return None  # not from a natOutgoing pool (e.g. a node's own address): no rule
        pools = ", ".join(table.elements("pool_cidrs")) or "none"
        if table.contains_addr("pool_cidrs", dst):
            s.add(
                Step("nat", f"natOutgoing: no: {dst} is inside the pools ({pools})", "none", (ev,))
            )
            return None
        chosen = self.view.route_get(s.place, dst)
        new_src = chosen.route.prefsrc if chosen.route else None
        if new_src is None:
            s.add(Step("nat", f"natOutgoing applies but {s.out_dev} has no address", "drop", (ev,)))
            return None
        s.add(
            Step(
                "nat",
                f"natOutgoing (postrouting): {src} is in a natOutgoing pool and {dst} is outside "
                f"the pools ({pools}) -> masquerade: source becomes {new_src} ({s.out_dev}'s "
                "address)",
                "masquerade",
                (ev, *chosen.evidence()),
                {"from": src, "to": new_src},
            )
        )
        s.pkt = s.pkt.with_inner(src=new_src)
        return Masquerade(s.place.name, src, new_src)

    # -- the other side ---------------------------------------------------------------------------

    def _next_place(self, s: HopState, next_hop: str, route: Route) -> End | Next:
        out = s.out_dev or ""
        if s.place.kind == "pod":
            return self._to_node(s, route)
        pod = self.map.pod_behind(s.place.name, out) if s.place.kind == "node" else None
        if pod is not None:
            s.add(
                Step(
                    "l2",
                    f"{out} is the host end of {pod.name}'s veth: the frame comes out "
                    f"of {pod.name}'s {pod.ifname}",
                    "veth",
                )
            )
            return Next(pod, pod.ifname or "eth0")
        if out.startswith(CALI_PREFIX):
            return End("dropped", f"{out} on {s.place.name} leads to no pod of this lab")
        owner = self.map.owner(next_hop)
        ev, neigh = self.view.neighbour(s.place, out, next_hop)
        if owner is None:
            s.add(
                Step(
                    "l2", f"next hop {next_hop} belongs to no namespace of this lab", "gone", (ev,)
                )
            )
            return End("left-lab", f"next hop {next_hop} is outside the lab")
        place, dev = owner
        cached = (
            f"lladdr {neigh.lladdr} ({','.join(neigh.state)})"
            if neigh and neigh.lladdr
            else "not resolved yet: ARP asks first"
        )
        s.add(
            Step(
                "l2",
                f"next hop {next_hop} is {place.name}'s {dev}; neighbour table: {cached}",
                "forward",
                (ev,),
                {"nextHop": next_hop, "to": place.name},
            )
        )
        return Next(place, dev)

    def _to_node(self, s: HopState, route: Route) -> End | Next:
        """A pod's packet: out of eth0 into the veth, answered by proxy ARP on its node."""
        pod = s.place
        if pod.node is None or pod.host_ifname is None:
            return End("dropped", f"{pod.name} is on no node")
        node = self.map.place(pod.node)
        cali = pod.host_ifname
        if route.gateway is not None and not self._proxy_arp(s, node, cali, route.gateway):
            return End("dropped", f"nobody answers ARP for {route.gateway} on {pod.name}")
        return Next(node, cali)

    def _proxy_arp(self, s: HopState, node: Place, cali: str, gateway: str) -> bool:
        p_ev, proxy = self.view.sysctl(node, f"net.ipv4.conf.{cali}.proxy_arp")
        link = self.view.links(node).get(cali)
        mac = link.mac if link else None
        n_ev, neigh = self.view.neighbour(s.place, s.out_dev or "eth0", gateway)
        back = self.view.route_get(node, gateway)
        back_dev = back.route.dev if back.route else None
        answered = proxy == 1 and back_dev is not None and back_dev != cali
        cache = (
            f"{neigh.lladdr} ({','.join(neigh.state)})"
            if neigh and neigh.lladdr
            else "empty: the first packet's ARP request gets the answer"
        )
        owner = self.map.owner(gateway)
        nobody = "nobody's address" if owner is None else f"{owner[0].name}'s address"
        s.add(
            Step(
                "arp",
                f"gateway {gateway} is {nobody}: {cali} on {node.name} answers ARP for it "
                f"(proxy_arp={proxy}, MAC {mac}) because {node.name} routes {gateway} via "
                f"{back_dev}, not back into {cali}; {s.place.name}'s neighbour cache: {cache}",
                "answered" if answered else "unanswered",
                (p_ev, n_ev, *back.evidence()),
                {"proxyArp": proxy, "mac": mac, "podNeighbour": neigh.lladdr if neigh else None},
            )
        )
        return answered
