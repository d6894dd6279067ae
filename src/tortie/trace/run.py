"""``tortie trace``: the packet's journey through a lab, request and reply, as the seed tells it.

Problem: the seed (/work/shared/seed/README.md) explains IPIP and BGP mode by following one
ping: pod eth0 -> cali -> route -> tunl0 encapsulates -> uplink -> the other node decapsulates
-> /32 route -> cali -> pod eth0, with captures showing outer+inner headers on the wire and
the bare inner packet at the pod. ``trace`` tells that story for any two endpoints of a live
lab, from the live state of each namespace (see :mod:`.walk` for the walk and
:mod:`.kernel` for how the kernel is asked), and with ``--capture`` puts a real probe's
packets next to the prediction (:mod:`.capture`).

The modules: :mod:`.model` (the record), :mod:`.parse` (tool output),
:mod:`.kernel` (asking a namespace), :mod:`.places` (who is where),
:mod:`.walk` (the journey), :mod:`.hop` and :mod:`.tunnel` (its hop state,
its tunnels), :mod:`.wire` and :mod:`.capture` (the probe),
:mod:`.text` (the words). This one resolves the endpoints and puts them together.

Invariants: SRC must be inside the lab (a pod, a node, the router, or an address one of them
holds); DST may be any address, but ``--capture`` only probes destinations inside the lab. A
node named as SRC sends from the address its kernel chooses (``ip route get DST``'s ``src``,
e.g. its tunnel address towards a tunl0 route), exactly as ``ping`` from the node would. The
reply is walked only when the request is delivered, from where it was delivered, back to the
address the request carried (a masqueraded request's reply is un-NATed on its way back).

Hazard: the trace describes the first packet of a new flow; conntrack state of an earlier
flow (e.g. a masquerade entry that outlives a rule change) is not consulted.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from ipaddress import AddressValueError, IPv4Address
from typing import Any

from tortie.lab.errors import LabError, UnknownTargetError
from tortie.lab.ops import Lab
from tortie.trace.capture import CaptureReport, new_probe, run_capture
from tortie.trace.kernel import KernelView, Runner
from tortie.trace.model import (
    ICMP_REPLY,
    ICMP_REQUEST,
    PROTO_ICMP,
    Endpoint,
    Header,
    Journey,
    Packet,
    Place,
)
from tortie.trace.places import LabMap, address_owners, lab_env, lab_places, lab_view
from tortie.trace.walk import Walker
from tortie.trace.wire import capture_points


@dataclass(frozen=True)
class TraceResult:
    lab: str
    mode: str
    pool: str
    src: Endpoint
    dst: Endpoint
    request: Journey
    reply: Journey | None
    capture: CaptureReport | None = None

    @property
    def delivered(self) -> bool:
        """Both ways: the request reached DST and the reply came back to SRC."""
        return (
            self.request.outcome == "delivered"
            and self.reply is not None
            and self.reply.outcome == "delivered"
        )

    @property
    def differences(self) -> tuple[str, ...]:
        return self.capture.differences if self.capture else ()

    def to_json(self) -> dict[str, Any]:
        return {
            "lab": self.lab,
            "mode": self.mode,
            "pool": self.pool,
            "src": self.src.to_json(),
            "dst": self.dst.to_json(),
            "delivered": self.delivered,
            "request": self.request.to_json(),
            "reply": self.reply.to_json() if self.reply else None,
            "capture": self.capture.to_json() if self.capture else None,
            "differences": list(self.differences),
        }


def _is_address(text: str) -> bool:
    try:
        IPv4Address(text)
    except AddressValueError:
        return False
    return True


def resolve_endpoint(lab: Lab, labmap: LabMap, text: str) -> Endpoint:
    """SRC or DST as typed: a pod, node or router name, or an address (of the lab or not).

    A node or the router named as an endpoint gets its first address here; as SRC the
    caller replaces it with the kernel's choice (``explicit_address`` False)."""
    if text in labmap.places:
        place = labmap.places[text]
        if place.kind == "pod":
            return Endpoint(text, lab.address(text), place, True)
        if place.kind == "node":
            return Endpoint(text, lab.address(text), place, False)
        first = str(lab.topology.subnets[0].gateway)
        return Endpoint(text, first, place, False)
    if _is_address(text):
        owner = labmap.owner(text)
        return Endpoint(text, text, owner[0] if owner else None, True)
    names = ", ".join([*labmap.places, "or an IPv4 address"])
    raise UnknownTargetError(f"{text!r} is not in lab {lab.state.name!r} (give: {names})")


def pool_text(lab: Lab) -> str:
    """The pool as the datastore has it now (a mode switched live shows as such), or as the
    lab built it when the datastore cannot be read."""
    from tortie.datastore.api import DatastoreError
    from tortie.datastore.factory import open_datastore
    from tortie.datastore.resources import ResourceStore
    from tortie.model.resources import IPPool

    pool = lab.topology.pool
    built = f"{pool.cidr}, ipipMode {pool.ipip_mode}, vxlanMode {pool.vxlan_mode}"
    if not lab.state.datastore:
        return f"{built} (as built)"
    try:
        store = open_datastore(lab.state.datastore)
        try:
            found = ResourceStore(store).get(IPPool, pool.name)
        finally:
            store.close()
    except DatastoreError as err:
        return f"{built} (as built; the datastore said: {err})"
    if found is None:
        return f"{built} (as built; {pool.name} is no longer in the datastore)"
    spec = found.spec
    return f"{spec.cidr}, ipipMode {spec.ipip_mode}, vxlanMode {spec.vxlan_mode}"


def _check_namespaces(lab: Lab, labmap: LabMap) -> None:
    """Refuse a lab whose namespaces cannot be entered (down, half built, crashed)."""
    broken = [ev for ev in labmap.evidence if not ev.ok]
    if broken:
        names = ", ".join(f"{ev.place} ({ev.output.splitlines()[0] if ev.output else '?'})"
                          for ev in broken)  # fmt: skip
        raise LabError(
            f"lab {lab.state.name!r} (phase {lab.state.phase}) is not whole: cannot ask "
            f"{names}; see 'tortie lab status --name {lab.state.name}'"
        )


def _kernel_source(
    view: KernelView, labmap: LabMap, source: Endpoint, place: Place, dst: str
) -> Endpoint:
    """A node (or the router) sends from the address its kernel picks for ``dst``; with no
    route there, from its first address, so the walk shows the kernel's refusal."""
    chosen = view.route_get(place, dst)
    if chosen.route is not None and chosen.route.prefsrc:
        note = "the source its kernel chose"
        return Endpoint(source.label, chosen.route.prefsrc, place, False, note)
    own = [addr for addr, (name, _) in labmap.owners.items() if name == place.name]
    if not own:
        raise LabError(f"{place.name} has no IPv4 address to send from")
    return Endpoint(source.label, own[0], place, True, f"its first address: no route to {dst}")


def trace(
    lab: Lab, src: str, dst: str, capture: bool = False, runner: Runner | None = None
) -> TraceResult:
    """Trace ``src`` -> ``dst`` (and the reply) in ``lab``; with ``capture``, probe it too."""
    view = KernelView(runner) if runner is not None else lab_view(lab)
    labmap = address_owners(view, lab_places(lab))
    _check_namespaces(lab, labmap)
    source = resolve_endpoint(lab, labmap, src)
    target = resolve_endpoint(lab, labmap, dst)
    if capture and target.place is None:
        raise LabError(
            f"--capture probes only addresses inside the lab; {target.address} is not one"
        )
    place = source.place
    if place is None:
        raise LabError(
            f"SRC {src} is no address of lab {lab.state.name!r}: a trace starts in one of its "
            "namespaces (a pod, a node, the router, or an address one of them holds)"
        )
    if not source.explicit_address:
        source = _kernel_source(view, labmap, source, place, target.address)
    walker = Walker(view, labmap)
    packet = Packet(Header(source.address, target.address, PROTO_ICMP), ICMP_REQUEST)
    request = walker.walk("request", place, packet, source.explicit_address)
    reply = None
    if request.outcome == "delivered" and request.end and request.delivered:
        got = request.delivered.inner
        back = Packet(Header(got.dst, got.src, PROTO_ICMP), ICMP_REPLY)
        reply = walker.walk("reply", request.end, back, True, request.masquerade)
    result = TraceResult(
        lab=lab.state.name,
        mode=lab.topology.mode,
        pool=pool_text(lab),
        src=source,
        dst=target,
        request=request,
        reply=reply,
    )
    if not capture:
        return result
    # ping -I only when the user named the source address; otherwise ping chooses, as the
    # walk let the kernel choose.
    probe = new_probe(place, target.address, src if _is_address(src) else None)
    points = capture_points([request, reply])
    report = run_capture(points, probe, lab_env(lab), result.delivered)
    return replace(result, capture=report)
