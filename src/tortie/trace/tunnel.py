"""Tunnels in a trace: how tunl0 and vxlan.calico wrap a packet, and how a node unwraps it.

Problem: the seed's IPIP story turns on two moments: tunl0 encapsulating (outer IPv4, protocol
4, from this node to the route's gateway) and the other node decapsulating (only from a known
node). VXLAN adds two tables in between (the VTEP's neighbour entry gives a MAC, the FDB gives
the node that MAC lives on). These functions tell those moments from the live state of one
namespace: the device's kind (the kernel's ipip device, or tortie's tc-BPF placeholder with its
``ipip_encap``/``ipip_decap`` programs), the BPF allowlist map, the nftables ``node_ips`` set,
the neighbour and FDB entries, the vxlan device's VNI, port and local address.

Invariants: every function only asks the :class:`~tortie.trace.kernel.KernelView` and adds
steps to the hop in progress; it returns an :class:`~tortie.trace.hop.End` when the packet
goes no further, else what the walk needs next (the outer packet's next hop).

Hazard: the tc-BPF backend decapsulates at the uplink's tc ingress, before netfilter, so there
the BPF allowlist is the gate and nftables' ``node_ips`` (the input chain's rule: the gate of
the kernel-module backend) is shown for information only.
"""

from __future__ import annotations

from tortie.trace.hop import TUNL0, End, HopState, route_step
from tortie.trace.kernel import ENCAP_PROGRAM, KernelView, Lookup
from tortie.trace.model import PROTO_IPIP, PROTO_UDP, Evidence, Header, Step
from tortie.trace.parse import Route


def outer_route(s: HopState, lookup: Lookup, dst: str) -> str | End:
    """The encapsulated packet's own lookup: its out-device and next hop."""
    s.add(route_step(lookup, "outer route"))
    if lookup.route is None or lookup.route.type != "unicast" or lookup.route.dev is None:
        return End("dropped", f"{s.place.name} cannot route the outer packet to {dst}")
    s.out_dev = lookup.route.dev
    return lookup.route.next_hop


def encap_ipip(view: KernelView, s: HopState, route: Route) -> str | End:
    """A route via tunl0: the outer header (proto 4, to the route's gateway), its lookup."""
    link = view.links(s.place).get(TUNL0)
    if route.gateway is None:
        s.add(Step("drop", "tunl0 route without a gateway: no outer destination", "drop"))
        return End("dropped", "IPIP route without a gateway")
    evidence: tuple[Evidence, ...]
    if link is not None and link.kind == "ipip":
        how = "the kernel's ipip device"
        evidence = ()
    else:
        evidence, programs = view.tc_programs(s.place, TUNL0, "egress", ENCAP_PROGRAM)
        if ENCAP_PROGRAM not in programs:
            s.add(
                Step(
                    "drop",
                    "tunl0 is neither an ipip device nor has the BPF encapsulation "
                    "program: the packet goes nowhere",
                    "drop",
                    evidence,
                )
            )
            return End("dropped", "tunl0 cannot encapsulate")
        how = f"tc-BPF: tunl0 is a placeholder whose egress program {ENCAP_PROGRAM} does it"
    # The outer packet is the node's own: the kernel picks its source (the module's
    # NBMA tunl0 and the BPF program's FIB lookup agree: the uplink's address).
    outer_lookup = view.route_get(s.place, route.gateway)
    outer_src = outer_lookup.route.prefsrc if outer_lookup.route else None
    if outer_src is None:
        s.add(route_step(outer_lookup, "outer route"))
        return End("dropped", f"{s.place.name} has no route to {route.gateway}")
    outer = Header(outer_src, route.gateway, PROTO_IPIP)
    s.add(
        Step(
            "encap",
            f"tunl0 encapsulates ({how}): outer IPv4 {outer.src} > {outer.dst}, protocol 4 "
            "(IPIP); the outer destination is the route's gateway, the inner packet is "
            "unchanged",
            "ipip",
            evidence,
            {"device": TUNL0, "outer": outer.to_json()},
        )
    )
    s.pkt = s.pkt.encapsulated(outer)
    return outer_route(s, outer_lookup, outer.dst)


def encap_vxlan(view: KernelView, s: HopState, route: Route) -> str | End:
    """A route via a vxlan device: VTEP neighbour -> MAC -> FDB -> the remote node."""
    dev = s.out_dev or ""
    link = view.links(s.place)[dev]
    vtep = route.gateway
    if vtep is None:
        return End("dropped", f"{dev} route without a gateway (the remote VTEP)")
    n_ev, neigh = view.neighbour(s.place, dev, vtep)
    f_ev, fdb = view.fdb(s.place, dev)
    mac = neigh.lladdr if neigh else None
    remotes = [ip for m, ip in fdb if m == mac]
    if mac is None or not remotes:
        why = f"no neighbour entry for {vtep}" if mac is None else f"no FDB entry for {mac}"
        s.add(
            Step(
                "drop",
                f"{dev}: {why} (learning is off): the frame is dropped",
                "drop",
                (n_ev, f_ev),
            )
        )
        return End("dropped", f"{dev} on {s.place.name}: {why}")
    remote = remotes[0]
    outer_lookup = view.route_get(s.place, remote, link.vxlan_local)
    prefsrc = outer_lookup.route.prefsrc if outer_lookup.route else None
    local = link.vxlan_local or prefsrc or ""
    outer = Header(local, remote, PROTO_UDP, link.vxlan_port, link.vxlan_id, mac)
    state = ",".join(neigh.state) if neigh else ""
    s.add(
        Step(
            "encap",
            f"{dev} (VXLAN, VNI {link.vxlan_id}): neighbour {vtep} is {mac} ({state}); the "
            f"FDB sends {mac} to {remote}: outer UDP {local} > {remote}:{link.vxlan_port}, "
            f"VNI {link.vxlan_id}, inner Ethernet to {mac}",
            "vxlan",
            (n_ev, f_ev),
            {"device": dev, "outer": outer.to_json()},
        )
    )
    s.pkt = s.pkt.encapsulated(outer)
    return outer_route(s, outer_lookup, remote)


def decapsulate(view: KernelView, s: HopState) -> End | None:
    """The outer packet is for this node: unwrap it (or say why it is dropped)."""
    outer = s.pkt.outer
    assert outer is not None
    if outer.proto == PROTO_IPIP:
        return decap_ipip(view, s, outer)
    return decap_vxlan(view, s, outer)


def node_ips_step(view: KernelView, s: HopState, src: str, gate: bool, what: str) -> bool | None:
    """Is ``src`` in nftables' ``node_ips``? ``gate``: whether that rule decides here (None:
    no table)."""
    ev, table = view.nft_table(s.place)
    if table is None or not table.has_set("node_ips"):
        s.add(Step("firewall", f"{what}: no tortie nftables table here", "none", (ev,)))
        return None
    ok = table.contains_addr("node_ips", src)
    has = "has" if ok else "does not have"
    verdict = ("accept" if ok else "drop") if gate else "info"
    note = f" -> {verdict}" if gate else " (not consulted here: decapsulated before netfilter)"
    s.add(
        Step(
            "firewall",
            f"{what}: set node_ips {has} {src}{note}",
            verdict,
            (ev,),
            {"set": "node_ips", "element": src, "member": ok},
        )
    )
    return ok


def decap_ipip(view: KernelView, s: HopState, outer: Header) -> End | None:
    link = view.links(s.place).get(TUNL0)
    if link is None:
        s.add(Step("drop", "IPIP for this node but no tunl0 here: dropped", "drop"))
        return End("dropped", f"{s.place.name} has no tunl0")
    if link.kind == "ipip":
        ok = node_ips_step(view, s, outer.src, True, "IPIP allowlist (input chain)")
        if ok is False:
            return End("dropped", f"{outer.src} is not a known node (nftables node_ips)")
        s.add(Step("decap", "tunl0 (the kernel's ipip device) strips the outer header", "ipip"))
    else:
        evidence, allow = view.bpf_allowlist(s.place, s.in_dev or "")
        if allow is None:
            s.add(
                Step(
                    "drop",
                    f"no {s.in_dev} tc ingress decapsulation program: the IPIP "
                    "packet is not for tunl0",
                    "drop",
                    evidence,
                )
            )
            return End("dropped", "no BPF decapsulation on the uplink")
        ok = outer.src in allow
        listed = ", ".join(sorted(allow)) or "empty"
        s.add(
            Step(
                "decap",
                f"{s.in_dev} tc ingress program ipip_decap: outer source {outer.src} is "
                f"{'in' if ok else 'NOT in'} its allowlist (map ipip_allow: {listed}) -> "
                + (
                    "outer header removed, inner packet injected into tunl0's ingress"
                    if ok
                    else "dropped"
                ),
                "ipip" if ok else "drop",
                evidence,
                {"allowlist": sorted(allow), "member": ok},
            )
        )
        node_ips_step(view, s, outer.src, False, "nftables IPIP rule")
        if not ok:
            return End("dropped", f"{outer.src} is not in the BPF allowlist")
    s.pkt = s.pkt.decapsulated()
    s.iif = TUNL0
    return None


def decap_vxlan(view: KernelView, s: HopState, outer: Header) -> End | None:
    ok = node_ips_step(view, s, outer.src, True, "VXLAN allowlist (input chain, udp 4789)")
    if ok is False:
        return End("dropped", f"{outer.src} is not a known node (nftables node_ips)")
    devices = [
        link
        for link in view.links(s.place).values()
        if link.kind == "vxlan" and link.vxlan_id == outer.vni and link.vxlan_port == outer.dport
    ]
    if not devices:
        s.add(Step("drop", f"no vxlan device with VNI {outer.vni} on port {outer.dport}", "drop"))
        return End("dropped", f"no VXLAN VNI {outer.vni} on {s.place.name}")
    dev = devices[0]
    mac_ok = outer.inner_mac is None or outer.inner_mac == dev.mac
    s.add(
        Step(
            "decap",
            f"{dev.name} (VNI {outer.vni}) takes the UDP {outer.dport} payload: inner frame to "
            f"{outer.inner_mac}, {dev.name}'s address is {dev.mac}"
            + (" -> accepted" if mac_ok else " -> not ours: dropped"),
            "vxlan" if mac_ok else "drop",
            (),
            {"device": dev.name, "mac": dev.mac},
        )
    )
    if not mac_ok:
        return End("dropped", f"the sender's neighbour entry names a MAC {dev.name} lacks")
    s.pkt = s.pkt.decapsulated()
    s.iif = dev.name
    return None
