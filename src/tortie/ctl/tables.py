"""Table output for ``tortie get``: calicoctl's columns per kind, aligned.

Each kind has a narrow column set (``-o table``) and a wide one (``-o wide``); a column is a
header and a function from the resource's document (``to_document()``'s shape, as
:mod:`tortie.datastore.documents` reads it) to its cell text. Kinds without an entry fall back
to NAME (and NAMESPACE when namespaced). Working on documents, not models, keeps ``tortie
get`` from importing pydantic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

Document = Mapping[str, Any]
Column = tuple[str, Callable[[Document], str]]


def _at(doc: Document, *path: str) -> object:
    """The value at ``path``, or None where the document omits it (``omitempty``)."""
    value: object = doc
    for step in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(step)
    return value


def _text(*path: str) -> Callable[[Document], str]:
    def cell(doc: Document) -> str:
        value = _at(doc, *path)
        return "" if value is None else str(value)

    return cell


def _flag(*path: str) -> Callable[[Document], str]:
    return lambda doc: "true" if _at(doc, *path) else "false"


def _first(*cells: Callable[[Document], str], default: str = "") -> Callable[[Document], str]:
    """The first non-empty of ``cells`` (calicoctl's "peer IP or selector")."""
    return lambda doc: next((text for cell in cells if (text := cell(doc))), default)


def _joined(*path: str) -> Callable[[Document], str]:
    def cell(doc: Document) -> str:
        value = _at(doc, *path)
        return ",".join(map(str, value)) if isinstance(value, list) else ""

    return cell


_NAME: Column = ("NAME", _text("metadata", "name"))
_NAMESPACE: Column = ("NAMESPACE", _text("metadata", "namespace"))

_POOL_NARROW: list[Column] = [
    _NAME,
    ("CIDR", _text("spec", "cidr")),
    ("SELECTOR", _text("spec", "nodeSelector")),
]
_POOL_WIDE: list[Column] = [
    _NAME,
    ("CIDR", _text("spec", "cidr")),
    ("BLOCKSIZE", _text("spec", "blockSize")),
    ("NAT", _flag("spec", "natOutgoing")),
    ("IPIPMODE", _text("spec", "ipipMode")),
    ("VXLANMODE", _text("spec", "vxlanMode")),
    ("DISABLED", _flag("spec", "disabled")),
    ("SELECTOR", _text("spec", "nodeSelector")),
]
_NODE_WIDE: list[Column] = [
    _NAME,
    ("ASN", _first(_text("spec", "bgp", "asNumber"), default="(64512)")),
    ("IPV4", _text("spec", "bgp", "ipv4Address")),
    ("IPV4IPIPTUNNEL", _text("spec", "bgp", "ipv4IPIPTunnelAddr")),
    ("RRCLUSTERID", _text("spec", "bgp", "routeReflectorClusterID")),
]
_PEER: list[Column] = [
    _NAME,
    ("PEERIP", _first(_text("spec", "peerIP"), _text("spec", "peerSelector"))),
    (
        "NODE",
        _first(_text("spec", "node"), _text("spec", "nodeSelector"), default="(global)"),
    ),
    ("ASN", _text("spec", "asNumber")),
]
_BGPCONF: list[Column] = [
    _NAME,
    ("LOGSEVERITY", _text("spec", "logSeverityScreen")),
    ("MESHENABLED", _flag("spec", "nodeToNodeMeshEnabled")),
    ("ASNUMBER", _text("spec", "asNumber")),
]
_WEP: list[Column] = [
    _NAMESPACE,
    ("WORKLOAD", _first(_text("spec", "pod"), _text("spec", "workload"))),
    ("NODE", _text("spec", "node")),
    ("NETWORKS", _joined("spec", "ipNetworks")),
    ("INTERFACE", _text("spec", "interfaceName")),
]
_IPAMCONF: list[Column] = [
    _NAME,
    ("STRICTAFFINITY", _flag("spec", "strictAffinity")),
    ("MAXBLOCKSPERHOST", _text("spec", "maxBlocksPerHost")),
]

# Kind (exact spelling) -> (narrow, wide) columns.
_COLUMNS: dict[str, tuple[list[Column], list[Column]]] = {
    "IPPool": (_POOL_NARROW, _POOL_WIDE),
    "Node": ([_NAME], _NODE_WIDE),
    "BGPPeer": (_PEER, _PEER),
    "BGPConfiguration": (_BGPCONF, _BGPCONF),
    "WorkloadEndpoint": (_WEP, [*_WEP, _NAME]),
    "IPAMConfiguration": (_IPAMCONF, _IPAMCONF),
}


def columns_for(kind: str, wide: bool, namespaced: bool) -> list[Column]:
    narrow_wide = _COLUMNS.get(kind)
    if narrow_wide is not None:
        return narrow_wide[1] if wide else narrow_wide[0]
    return [_NAMESPACE, _NAME] if namespaced else [_NAME]


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


def table(docs: Sequence[Document], kind: str, wide: bool, namespaced: bool) -> str:
    """``docs`` (resources of ``kind``, exact spelling) as calicoctl's table."""
    cols = columns_for(kind, wide, namespaced)
    rows = [[f(d) for _, f in cols] for d in docs]
    return render_table([h for h, _ in cols], rows)
