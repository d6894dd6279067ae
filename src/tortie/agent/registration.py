"""Registering this node in the datastore (Calico's ``calico-node`` startup).

Problem: other nodes route to us by what our Node resource says (``bgp.ipv4Address``), the
BGP mesh peers with that address, and IPIP needs our tunnel address recorded there. The
agent writes those fields on start and whenever they change, without clobbering what a user
set on the same resource (labels, AS number, route reflector cluster ID).

Invariant: read-modify-write with the read revision as a compare-and-swap precondition,
retried on conflict, so a concurrent ``tortie apply`` of the Node is never lost.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface

from tortie.datastore.resources import ResourceConflictError, ResourceStore
from tortie.model.resources import Node, NodeBGPSpec, NodeSpec, ObjectMeta

MAX_ATTEMPTS = 10


def register_node(
    resources: ResourceStore,
    name: str,
    address: IPv4Interface,
    *,
    as_number: int | None = None,
    tunnel_address: IPv4Address | bool | None = False,
    vxlan: tuple[IPv4Address | None, str | None] | None = None,
    labels: dict[str, str] | None = None,
) -> Node:
    """Create or update Node ``name``; returns it as stored.

    ``tunnel_address``: an address to record, ``None`` to clear it, ``False`` to leave it.
    ``vxlan``: (VTEP address, VTEP MAC) to record (``None`` members clear), or None to leave.
    ``as_number``/``labels``: set when given, else left as the user had them.
    """
    for attempt in range(MAX_ATTEMPTS):
        current = resources.get(Node, name)
        wanted = _wanted(
            current,
            name,
            address=address,
            as_number=as_number,
            tunnel_address=tunnel_address,
            vxlan=vxlan,
            labels=labels,
        )
        if current is not None and _same(current, wanted):
            return current
        try:
            return resources.apply([wanted])[0]  # type: ignore[return-value]
        except ResourceConflictError:
            if attempt == MAX_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _same(a: Node, b: Node) -> bool:
    return a.to_document()["spec"] == b.to_document()["spec"] and (
        a.metadata.labels == b.metadata.labels
    )


def _wanted(
    current: Node | None,
    name: str,
    *,
    address: IPv4Interface,
    as_number: int | None,
    tunnel_address: IPv4Address | bool | None,
    vxlan: tuple[IPv4Address | None, str | None] | None,
    labels: dict[str, str] | None,
) -> Node:
    # The current Node carries its resourceVersion, which makes the apply a CAS.
    base = current if current is not None else Node(metadata=ObjectMeta(name=name), spec=NodeSpec())
    bgp = base.spec.bgp or NodeBGPSpec()
    changes: dict[str, object] = {"ipv4_address": str(address)}
    if as_number is not None:
        changes["as_number"] = as_number
    if tunnel_address is not False:
        changes["ipv4_ipip_tunnel_addr"] = (
            str(tunnel_address) if isinstance(tunnel_address, IPv4Address) else None
        )
    bgp = bgp.model_copy(update=changes)
    spec_changes: dict[str, object] = {"bgp": bgp}
    if vxlan is not None:
        vtep, mac = vxlan
        spec_changes["ipv4_vxlan_tunnel_addr"] = str(vtep) if vtep is not None else None
        spec_changes["vxlan_tunnel_mac_addr"] = mac
    node = base.with_spec(**spec_changes)
    if labels:
        node = node.with_metadata(labels={**node.metadata.labels, **labels})
    return node
