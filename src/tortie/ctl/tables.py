"""Table output for ``tortie get``: calicoctl's columns per kind, aligned.

Each kind has a narrow column set (``-o table``) and a wide one (``-o wide``); a column is a
header and a function from the resource to its cell text. Kinds without an entry fall back
to NAME (and NAMESPACE when namespaced).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tortie.model.resources import (
    BGPConfiguration,
    BGPPeer,
    IPAMConfiguration,
    IPPool,
    Node,
    Resource,
    WorkloadEndpoint,
)

Column = tuple[str, Callable[[Resource], str]]


def _name(r: Resource) -> str:
    return r.metadata.name


def _ns(r: Resource) -> str:
    return r.metadata.namespace or ""


def _bool(v: bool) -> str:
    return "true" if v else "false"


def _pool(f: Callable[[IPPool], str]) -> Callable[[Resource], str]:
    return lambda r: f(r) if isinstance(r, IPPool) else ""


def _node(f: Callable[[Node], str]) -> Callable[[Resource], str]:
    return lambda r: f(r) if isinstance(r, Node) else ""


def _peer(f: Callable[[BGPPeer], str]) -> Callable[[Resource], str]:
    return lambda r: f(r) if isinstance(r, BGPPeer) else ""


def _bgpc(f: Callable[[BGPConfiguration], str]) -> Callable[[Resource], str]:
    return lambda r: f(r) if isinstance(r, BGPConfiguration) else ""


def _wep(f: Callable[[WorkloadEndpoint], str]) -> Callable[[Resource], str]:
    return lambda r: f(r) if isinstance(r, WorkloadEndpoint) else ""


def _ipamc(f: Callable[[IPAMConfiguration], str]) -> Callable[[Resource], str]:
    return lambda r: f(r) if isinstance(r, IPAMConfiguration) else ""


def _node_bgp(r: Node, field: str) -> str:
    bgp = r.spec.bgp
    value = getattr(bgp, field, None) if bgp is not None else None
    return "" if value is None else str(value)


def _opt(v: object) -> str:
    return "" if v is None else str(v)


_POOL_NARROW: list[Column] = [
    ("NAME", _name),
    ("CIDR", _pool(lambda p: p.spec.cidr)),
    ("SELECTOR", _pool(lambda p: p.spec.node_selector)),
]
_POOL_WIDE: list[Column] = [
    ("NAME", _name),
    ("CIDR", _pool(lambda p: p.spec.cidr)),
    ("BLOCKSIZE", _pool(lambda p: str(p.spec.block_size))),
    ("NAT", _pool(lambda p: _bool(p.spec.nat_outgoing))),
    ("IPIPMODE", _pool(lambda p: p.spec.ipip_mode)),
    ("VXLANMODE", _pool(lambda p: p.spec.vxlan_mode)),
    ("DISABLED", _pool(lambda p: _bool(p.spec.disabled))),
    ("SELECTOR", _pool(lambda p: p.spec.node_selector)),
]
_NODE_WIDE: list[Column] = [
    ("NAME", _name),
    ("ASN", _node(lambda n: _node_bgp(n, "as_number") or "(64512)")),
    ("IPV4", _node(lambda n: _node_bgp(n, "ipv4_address"))),
    ("IPV4IPIPTUNNEL", _node(lambda n: _node_bgp(n, "ipv4_ipip_tunnel_addr"))),
    ("RRCLUSTERID", _node(lambda n: _node_bgp(n, "route_reflector_cluster_id"))),
]
_PEER: list[Column] = [
    ("NAME", _name),
    ("PEERIP", _peer(lambda p: _opt(p.spec.peer_ip) or _opt(p.spec.peer_selector))),
    ("NODE", _peer(lambda p: _opt(p.spec.node) or _opt(p.spec.node_selector) or "(global)")),
    ("ASN", _peer(lambda p: _opt(p.spec.as_number))),
]
_BGPCONF: list[Column] = [
    ("NAME", _name),
    ("LOGSEVERITY", _bgpc(lambda c: c.spec.log_severity_screen)),
    ("MESHENABLED", _bgpc(lambda c: _bool(c.spec.node_to_node_mesh_enabled))),
    ("ASNUMBER", _bgpc(lambda c: str(c.spec.as_number))),
]
_WEP: list[Column] = [
    ("NAMESPACE", _ns),
    ("WORKLOAD", _wep(lambda w: _opt(w.spec.pod) or _opt(w.spec.workload))),
    ("NODE", _wep(lambda w: _opt(w.spec.node))),
    ("NETWORKS", _wep(lambda w: ",".join(w.spec.ip_networks))),
    ("INTERFACE", _wep(lambda w: _opt(w.spec.interface_name))),
]
_IPAMCONF: list[Column] = [
    ("NAME", _name),
    ("STRICTAFFINITY", _ipamc(lambda c: _bool(c.spec.strict_affinity))),
    ("MAXBLOCKSPERHOST", _ipamc(lambda c: str(c.spec.max_blocks_per_host))),
]

_COLUMNS: dict[type[Resource], tuple[list[Column], list[Column]]] = {
    IPPool: (_POOL_NARROW, _POOL_WIDE),
    Node: ([("NAME", _name)], _NODE_WIDE),
    BGPPeer: (_PEER, _PEER),
    BGPConfiguration: (_BGPCONF, _BGPCONF),
    WorkloadEndpoint: (_WEP, [*_WEP, ("NAME", _name)]),
    IPAMConfiguration: (_IPAMCONF, _IPAMCONF),
}


def columns_for(cls: type[Resource], wide: bool, namespaced: bool) -> list[Column]:
    narrow_wide = _COLUMNS.get(cls)
    if narrow_wide is not None:
        return narrow_wide[1] if wide else narrow_wide[0]
    return [("NAMESPACE", _ns), ("NAME", _name)] if namespaced else [("NAME", _name)]


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by three spaces, like calicoctl (no trailing blanks)."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = []
    for row in [list(headers), *rows]:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=True)]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def table(resources: Sequence[Resource], cls: type[Resource], wide: bool, namespaced: bool) -> str:
    cols = columns_for(cls, wide, namespaced)
    rows = [[f(r) for _, f in cols] for r in resources]
    return render_table([h for h, _ in cols], rows)
