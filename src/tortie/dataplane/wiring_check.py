"""CHECK for a pod's wiring: what differs from what :mod:`tortie.dataplane.wiring` builds.

Problem: CNI CHECK asks whether a pod's networking is still as ADD left it; the answer must
name every difference a person can act on (an interface down, a sysctl reset, a route gone),
not just "broken". These functions compare one namespace's kernel (through the
:class:`~tortie.dataplane.netlink.Netlink` seam) with what a pod's attachment should be (its
interface names and address).

Invariants: read only, never a change; each problem is one sentence naming the interface and
the value found. Host side: a veth, up, MAC ee:ee:ee:ee:ee:ee, the workload sysctls, and the
host routing the pod's address through it. Pod side: the interface up, the /32, the gateway's
link route and the default route via 169.254.1.1.

Hazards: ``route get`` answers with the best route, which may be a block's blackhole or the
default: the device is compared, not just success.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from tortie.dataplane.netlink import Netlink
from tortie.dataplane.routes import MAIN_TABLE
from tortie.dataplane.workload import workload_sysctls
from tortie.model.naming import GATEWAY, HOST_MAC

_GATEWAY = IPv4Address(GATEWAY)


def routes_to(host: Netlink, ip: IPv4Address) -> str | None:
    route = host.route_get(ip)
    if route is None or route.oif is None:
        return None
    link = host.get_link_by_index(route.oif)
    return None if link is None else link.name


def check_host(host: Netlink, name: str, ip: IPv4Address) -> list[str]:
    """Problems of the host side ``name`` of a pod whose address is ``ip``."""
    found = host.get_link(name)
    if found is None:
        return [f"host interface {name} does not exist"]
    out = []
    if found.kind != "veth":
        out.append(f"host interface {name} is a {found.kind}, not a veth")
    if not found.up:
        out.append(f"host interface {name} is down")
    if (found.mac or "").lower() != HOST_MAC:
        out.append(f"host interface {name} has MAC {found.mac}, not {HOST_MAC}")
    wanted = workload_sysctls(name)
    try:
        have = host.read_sysctls(list(wanted))
    except OSError as exc:
        return [*out, f"cannot read sysctls of {name}: {exc}"]
    out += [
        f"{key.rsplit('/', 1)[1]} of {name} is {have[key]}, not {value}"
        for key, value in wanted.items()
        if have.get(key) != value
    ]
    try:
        device = routes_to(host, ip)
    except OSError:
        device = None
    if device != name:
        out.append(f"the host routes {ip} via {device or 'nothing'}, not {name}")
    return out


def check_pod_side(pod: Netlink, name: str, ip: IPv4Address) -> list[str]:
    """Problems of the pod side ``name`` (in the pod's namespace) whose address is ``ip``."""
    found = pod.get_link(name)
    if found is None:
        return [f"the pod has no interface {name}"]
    out = []
    if not found.up:
        out.append(f"{name} in the pod is down")
    if IPv4Interface(f"{ip}/32") not in pod.list_addrs(name):
        out.append(f"{name} in the pod does not have {ip}/32")
    routes = {(r.dst, r.gateway) for r in pod.dump_routes(table=MAIN_TABLE) if r.oif == found.index}
    if (IPv4Network(f"{GATEWAY}/32"), None) not in routes:
        out.append(f"the pod has no route {GATEWAY} dev {name} scope link")
    if (IPv4Network("0.0.0.0/0"), _GATEWAY) not in routes:
        out.append(f"the pod has no route default via {GATEWAY} dev {name}")
    return out
