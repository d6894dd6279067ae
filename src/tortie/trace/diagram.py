"""``tortie lab diagram``: a picture of a live lab (graphviz), drawn from what its kernels hold.

Problem: a newcomer wants to *see* the seed's setup: the L2 segments and the router between
them, each node with its uplink address and tunnel device (tunl0 or vxlan.calico), its
blocks, the routes the agent programmed, and the pods hanging off their cali interfaces. The
topology alone would draw what the lab *should* be; this draws what it *is*: addresses, routes
(protocol 80, the agent's) and devices are read live from each namespace, and the blocks are
the node's blackhole routes (how a node claims a block in the kernel).

Three parts: :func:`gather` (asks the namespaces through
:class:`~tortie.trace.kernel.KernelView`), :func:`to_dot` (pure: a DOT graph) and
:func:`write_diagram` (``.dot`` as is, ``.svg``/``.png`` through graphviz's ``dot`` CLI).

Invariants: read-only; the DOT text depends only on the gathered picture (stable order, so a
diff of two ``.dot`` files is a diff of two labs); every label is HTML-escaped.

Hazard: ``dot`` is Debian's ``graphviz`` package; without it only ``.dot`` output works and the
error says what to install.
"""

from __future__ import annotations

import html
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tortie.lab.errors import LabError
from tortie.lab.ops import Lab
from tortie.model.naming import ROUTE_PROTOCOL, TUNNEL_DEVICE
from tortie.trace.kernel import KernelView
from tortie.trace.model import Place
from tortie.trace.parse import LinkInfo, Route, parse_addresses, parse_links, parse_routes
from tortie.trace.places import lab_places, lab_view

AGENT_PROTO = str(ROUTE_PROTOCOL)
FORMATS = ("svg", "png", "dot")
TUNNEL_KINDS = ("ipip", "vxlan")
# Route colours: the seed's two modes at a glance (tunnel vs native), VXLAN apart.
COLOUR_IPIP = "#c0504d"
COLOUR_VXLAN = "#4f81bd"
COLOUR_NATIVE = "#2e7d32"
COLOUR_OTHER = "#555555"


@dataclass(frozen=True)
class PodPicture:
    name: str
    netns: str
    addresses: tuple[str, ...]
    host_ifname: str | None
    default_route: str  # as the pod's kernel has it ("default via 169.254.1.1 dev eth0")


@dataclass(frozen=True)
class NodePicture:
    name: str
    netns: str
    subnet: int
    addresses: tuple[tuple[str, str], ...]  # (device, address/prefix)
    tunnels: tuple[str, ...]  # "tunl0 (tc-BPF placeholder)", "vxlan.calico VNI 4096 ..."
    blocks: tuple[str, ...]
    routes: tuple[Route, ...]  # proto 80, without blackholes and local pods' /32s
    pods: tuple[PodPicture, ...]


@dataclass(frozen=True)
class SubnetPicture:
    index: int
    network: str
    bridge: str
    router_leg: str  # "eth0 192.168.49.1/24"


@dataclass(frozen=True)
class LabPicture:
    name: str
    mode: str
    pool: str
    router_netns: str
    router_legs: tuple[tuple[str, str], ...]
    subnets: tuple[SubnetPicture, ...]
    nodes: tuple[NodePicture, ...]


def _addresses(view: KernelView, place: Place) -> list[tuple[str, str]]:
    return parse_addresses(view.addresses(place)[0].output, with_prefix=True)


def _default_route(view: KernelView, place: Place) -> str:
    routes = parse_routes(view.ask(place, ["ip", "-j", "-4", "route", "show", "default"]).output)
    return routes[0].describe() if routes else "no default route"


def _tunnel_text(link: LinkInfo) -> str:
    if link.kind == "vxlan":
        return (
            f"{link.name}: VXLAN VNI {link.vxlan_id}, UDP {link.vxlan_port}, "
            f"local {link.vxlan_local}"
        )
    if link.kind == "ipip":
        return f"{link.name}: IPIP (kernel ipip device)"
    return f"{link.name}: IPIP (tc-BPF placeholder, {link.kind})"


def _node_picture(view: KernelView, place: Place, subnet: int, pods: list[Place]) -> NodePicture:
    routes = parse_routes(
        view.ask(place, ["ip", "-j", "-4", "route", "show", "proto", AGENT_PROTO]).output
    )
    links = parse_links(view.ask(place, ["ip", "-j", "-d", "link", "show"]).output)
    tunnels = [
        _tunnel_text(link)
        for link in links.values()
        if link.kind in TUNNEL_KINDS or link.name == TUNNEL_DEVICE
    ]
    pod_devs = {p.host_ifname for p in pods}
    return NodePicture(
        name=place.name,
        netns=place.netns,
        subnet=subnet,
        addresses=tuple((d, a) for d, a in _addresses(view, place) if d not in pod_devs),
        tunnels=tuple(sorted(tunnels)),
        blocks=tuple(r.dst for r in routes if r.type == "blackhole"),
        routes=tuple(r for r in routes if r.type == "unicast" and r.dev not in pod_devs),
        pods=tuple(
            PodPicture(
                p.name,
                p.netns,
                tuple(a for _, a in _addresses(view, p)),
                p.host_ifname,
                _default_route(view, p),
            )
            for p in pods
        ),
    )


def gather(lab: Lab, view: KernelView | None = None) -> LabPicture:
    """The lab as its namespaces report it now."""
    view = view or lab_view(lab)
    topo = lab.topology
    places = lab_places(lab)
    router = places["router"]
    legs = tuple(_addresses(view, router))
    subnets = tuple(
        SubnetPicture(
            s.index,
            str(s.network),
            s.bridge,
            " ".join(
                next(((d, a) for d, a in legs if d == s.router_ifname), (s.router_ifname, ""))
            ),
        )
        for s in topo.subnets
    )
    nodes = tuple(
        _node_picture(
            view,
            places[n.name],
            n.subnet,
            [places[p.name] for p in topo.pods_on(n.name)],
        )
        for n in topo.nodes
    )
    pool = f"{topo.pool.cidr} ipipMode {topo.pool.ipip_mode}, vxlanMode {topo.pool.vxlan_mode}"
    return LabPicture(lab.state.name, topo.mode, pool, router.netns, legs, subnets, nodes)


# -- DOT -------------------------------------------------------------------------------------


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _route_colour(route: Route, tunnels: tuple[str, ...]) -> str:
    if route.dev == TUNNEL_DEVICE:
        return COLOUR_IPIP
    if any(t.startswith(f"{route.dev}: VXLAN") for t in tunnels):
        return COLOUR_VXLAN
    if route.gateway:
        return COLOUR_NATIVE
    return COLOUR_OTHER


TABLE = '<table border="1" cellborder="0" cellspacing="0" cellpadding="3"{attrs}>'


def _table(rows: list[str], attrs: str = "") -> str:
    """A graphviz HTML-like label: one bordered table, one cell per row."""
    return f"<{TABLE.format(attrs=attrs)}{''.join(rows)}</table>>"


def _node_label(node: NodePicture) -> str:
    rows = [f'<tr><td bgcolor="#dfe7f1"><b>{_e(node.name)}</b>  (netns {_e(node.netns)})</td></tr>']
    rows += [f'<tr><td align="left">{_e(d)} {_e(a)}</td></tr>' for d, a in node.addresses]
    rows += [f'<tr><td align="left"><i>{_e(t)}</i></td></tr>' for t in node.tunnels]
    blocks = ", ".join(node.blocks) or "none"
    rows.append(f'<tr><td align="left"><b>blocks</b>: {_e(blocks)}</td></tr>')
    rows.append(f'<tr><td align="left"><b>routes (proto {AGENT_PROTO})</b></td></tr>')
    for route in node.routes:
        colour = _route_colour(route, node.tunnels)
        text = route.describe().replace(f" proto {AGENT_PROTO}", "")
        rows.append(f'<tr><td align="left"><font color="{colour}">{_e(text)}</font></td></tr>')
    if not node.routes:
        rows.append('<tr><td align="left">(none)</td></tr>')
    return _table(rows)


def _pod_label(pod: PodPicture) -> str:
    addrs = ", ".join(pod.addresses) or "no address"
    rows = [
        f"<tr><td><b>{_e(pod.name)}</b> (netns {_e(pod.netns)})</td></tr>",
        f"<tr><td>eth0 {_e(addrs)}</td></tr>",
        f"<tr><td>{_e(pod.default_route)}</td></tr>",
    ]
    return _table(rows, ' bgcolor="#fff8e1"')


def _router_label(picture: LabPicture) -> str:
    rows = [f'<tr><td bgcolor="#e0e0e0"><b>router</b> (netns {_e(picture.router_netns)})</td></tr>']
    rows += [f"<tr><td>{_e(d)} {_e(a)}</td></tr>" for d, a in picture.router_legs]
    return _table(rows)


def _id(*parts: str | int) -> str:
    return '"' + "_".join(str(p) for p in parts).replace('"', "") + '"'


def to_dot(picture: LabPicture) -> str:
    title = f"lab {picture.name}: mode {picture.mode}, pool {picture.pool}"
    lines = [
        "graph lab {",
        f'  graph [label="{_e(title)}", labelloc=t, fontname="Helvetica", fontsize=14,'
        " rankdir=TB, nodesep=0.35, ranksep=0.55];",
        '  node [fontname="Helvetica", fontsize=10, shape=plain];',
        '  edge [fontname="Helvetica", fontsize=9, color="#777777"];',
        f"  router [label={_router_label(picture)}];",
    ]
    for subnet in picture.subnets:
        bridge = _id("bridge", subnet.index)
        lines += [
            f"  subgraph cluster_subnet{subnet.index} {{",
            f'    label="subnet {subnet.index}: {_e(subnet.network)}"; style=rounded;'
            ' color="#999999";',
            f'    {bridge} [shape=box, style="rounded,filled", fillcolor="#eeeeee",'
            f' label="bridge {_e(subnet.bridge)}\\n{_e(subnet.network)}"];',
        ]
        for node in (n for n in picture.nodes if n.subnet == subnet.index):
            lines.append(f"    {_id(node.name)} [label={_node_label(node)}];")
            for pod in node.pods:
                lines.append(f"    {_id(pod.name)} [label={_pod_label(pod)}];")
        lines.append("  }")
        lines.append(f'  router -- {bridge} [label="{_e(subnet.router_leg)}"];')
        for node in (n for n in picture.nodes if n.subnet == subnet.index):
            uplink = " ".join(next(iter(node.addresses), ("", "")))
            lines.append(f'  {bridge} -- {_id(node.name)} [label="{_e(uplink)}"];')
            for pod in node.pods:
                lines.append(
                    f'  {_id(node.name)} -- {_id(pod.name)} [label="{_e(pod.host_ifname or "?")}"];'
                )
    lines.append(
        '  legend [label=<<table border="0" cellspacing="2"><tr><td align="left">'
        f'<font color="{COLOUR_IPIP}">via tunl0 (IPIP)</font>  '
        f'<font color="{COLOUR_VXLAN}">via vxlan.calico (VXLAN)</font>  '
        f'<font color="{COLOUR_NATIVE}">native, no encapsulation</font></td></tr></table>>];'
    )
    lines.append("}")
    return "\n".join(lines) + "\n"


def output_format(path: Path) -> str:
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise LabError(f"-o {path}: give a file ending in .svg, .png or .dot")
    return fmt


def write_diagram(dot_text: str, path: Path) -> None:
    """``.dot``: the text; ``.svg``/``.png``: rendered by graphviz's ``dot``."""
    fmt = output_format(path)
    if fmt == "dot":
        path.write_text(dot_text)
        return
    dot = shutil.which("dot")
    if dot is None:
        raise LabError(
            "graphviz's dot is not installed (apt-get install graphviz); "
            f"or write the graph itself: -o {path.with_suffix('.dot')}"
        )
    proc = subprocess.run(
        [dot, f"-T{fmt}", "-o", str(path)],
        input=dot_text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise LabError(f"dot -T{fmt} failed: {proc.stderr.strip()[-500:]}")
