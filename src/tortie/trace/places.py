"""Where things are in a lab: its namespaces as places, and who owns which address.

Problem: a route's answer names a device and a next hop ("via 192.168.49.3 dev eth0"); to
follow the packet the trace must know which namespace is on the other side. Two kinds of
links exist in a lab: a pod's veth (eth0 in the pod, ``cali...`` on its node: known from the
lab's state file, which records the host interface each pod really got) and the L2 segments
(uplinks and router legs), where the frame goes to whoever holds the next-hop address. The
owners are read live (``ip -j -4 addr show`` in every namespace), so a re-addressed node or a
missing tunnel address shows up as it is.

Invariants: :func:`lab_places` is pure (topology + state); :func:`address_owners` only asks the
:class:`~tortie.trace.kernel.KernelView`. Loopback and link-local addresses are nobody's
(169.254.1.1 is answered by proxy ARP, not owned).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tortie.lab.errors import UnknownTargetError
from tortie.lab.ops import Lab
from tortie.lab.procs import TOKEN_ENV
from tortie.lab.runtime import LAB_ENV
from tortie.trace.kernel import KernelView, LabRunner
from tortie.trace.model import Evidence, Place

ROUTER = "router"


def lab_env(lab: Lab) -> dict[str, str]:
    """The marks every process the trace starts in a lab carries (``lab down`` finds them)."""
    return {LAB_ENV: lab.state.name, TOKEN_ENV: lab.state.token}


def lab_view(lab: Lab) -> KernelView:
    """A view that asks ``lab``'s namespaces."""
    return KernelView(LabRunner(lab_env(lab)))


def lab_places(lab: Lab) -> dict[str, Place]:
    """Every namespace of ``lab`` a packet can be in (pods, nodes, the router), by name."""
    topo, state = lab.topology, lab.state
    places: dict[str, Place] = {
        ROUTER: Place(ROUTER, "router", topo.router.netns),
    }
    for node in topo.nodes:
        places[node.name] = Place(node.name, "node", node.netns, ifname=node.uplink)
    for pod in topo.pods:
        record = state.pods.get(pod.name)
        host_ifname = (record.host_ifname if record else None) or pod.host_ifname
        places[pod.name] = Place(
            pod.name, "pod", pod.netns, node=pod.node, host_ifname=host_ifname, ifname=pod.ifname
        )
    return places


@dataclass(frozen=True)
class LabMap:
    places: dict[str, Place]
    owners: dict[str, tuple[str, str]]  # address -> (place name, device)
    evidence: tuple[Evidence, ...]

    def place(self, name: str) -> Place:
        try:
            return self.places[name]
        except KeyError:
            names = ", ".join(self.places)
            raise UnknownTargetError(
                f"no node, pod or router named {name!r} (have: {names})"
            ) from None

    def owner(self, address: str) -> tuple[Place, str] | None:
        found = self.owners.get(address)
        return None if found is None else (self.places[found[0]], found[1])

    def pod_behind(self, node: str, dev: str) -> Place | None:
        """The pod whose veth ends in ``dev`` on ``node``."""
        for place in self.places.values():
            if place.kind == "pod" and place.node == node and place.host_ifname == dev:
                return place
        return None


def address_owners(view: KernelView, places: dict[str, Place]) -> LabMap:
    # One question per namespace, asked side by side: the trace's longest fixed cost.
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(view.addresses, places.values()))
    owners: dict[str, tuple[str, str]] = {}
    evidence = []
    for place, (ev, addresses) in zip(places.values(), answers, strict=True):
        evidence.append(ev)
        for dev, addr in addresses:
            if not addr.startswith("169.254."):
                owners.setdefault(addr, (place.name, dev))
    return LabMap(places, owners, tuple(evidence))
