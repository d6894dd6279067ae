"""Who a CNI attachment belongs to: its names, its WorkloadEndpoint, and whose interfaces are.

Problem: a CNI request names a pod by container ID, interface name, and (from CNI_ARGS) the
Kubernetes namespace and pod name; everything tortie records about it is derived from those:
the host interface name, the IPAM handle, the WorkloadEndpoint's name. The same pod name comes
back with a new container ID for each sandbox, and a late request for an old sandbox must not
touch the live one. So the endpoint, which names the container, is the record of whose an
interface is, and the judgement of whether an interface found in the kernel may be replaced or
deleted is made here from the endpoint records and what the kernel showed
(:meth:`tortie.dataplane.wiring.Wiring.inspect`).

Invariants:
- Names come from :mod:`tortie.model.naming` (host interface, handle) and
  :func:`tortie.model.resources.workload_endpoint_name`, nowhere else.
- An interface is this pod's to replace or delete only if the kernel proves its veth peer is
  our host interface and no endpoint gives it to another container (:meth:`Endpoints.not_ours`);
  a host interface named by another pod's endpoint is never this pod's
  (:meth:`Endpoints.host_side_taken`).
- An endpoint is deleted only if, at the moment of deletion, it still names this container
  (compare-and-swap on the revision it was read at).

Hazards: an unreadable stored endpoint is treated as absent (logged), so a corrupt record can
make an interface look unowned; the kernel proof (veth peer) still has to hold.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from tortie.dataplane.wiring import PodInterface
from tortie.datastore.api import ConflictError, Datastore, KeyValue, NotFoundError
from tortie.datastore.resources import CorruptResourceError, ResourceStore
from tortie.model.cnierrors import CniError
from tortie.model.cniwire import Code
from tortie.model.keys import resource_key
from tortie.model.naming import host_ifname, pod_handle
from tortie.model.resources import API_VERSION, WorkloadEndpoint, workload_endpoint_name

log = logging.getLogger(__name__)

NETWORK_ANNOTATION = "cni.tortie.dev/network"


@dataclass(frozen=True, slots=True)
class Pod:
    """Who an attachment belongs to, and the names derived from that."""

    container_id: str
    ifname: str
    namespace: str
    pod: str | None
    host_ifname: str
    handle: str
    wep_name: str

    @property
    def orchestrator(self) -> str:
        return "k8s" if self.pod else "cni"

    @classmethod
    def of(
        cls,
        node: str,
        network: str,
        container_id: str,
        ifname: str,
        *,
        namespace: str | None,
        pod: str | None,
    ) -> Pod:
        if not container_id or not ifname:
            raise CniError(Code.INVALID_ENVIRONMENT, "a container ID and an ifname are needed")
        ns = namespace or "default"
        if pod:
            name = workload_endpoint_name(node, "k8s", pod, ifname)
        else:
            name = workload_endpoint_name(node, "cni", container_id, ifname)
        return cls(
            container_id=container_id,
            ifname=ifname,
            namespace=ns,
            pod=pod or None,
            host_ifname=host_ifname(container_id, ifname, ns, pod),
            handle=pod_handle(container_id, network),
            wep_name=name,
        )


class Endpoints:
    """The WorkloadEndpoints of node ``node`` as records of whose an interface is."""

    def __init__(self, store: Datastore, node: str) -> None:
        self.store = store
        self.node = node
        self.resources = ResourceStore(store)

    def build(
        self, pod: Pod, network: str, mac: str, ip: ipaddress.IPv4Address
    ) -> WorkloadEndpoint:
        spec: dict[str, object] = {
            "orchestrator": pod.orchestrator,
            "node": self.node,
            "containerID": pod.container_id,
            "endpoint": pod.ifname,
            "interfaceName": pod.host_ifname,
            "mac": mac,
            "ipNetworks": [f"{ip}/32"],
            "profiles": [f"kns.{pod.namespace}"],
        }
        if pod.pod:
            spec["pod"] = pod.pod
        return WorkloadEndpoint.from_document(
            {
                "apiVersion": API_VERSION,
                "kind": "WorkloadEndpoint",
                "metadata": {
                    "name": pod.wep_name,
                    "namespace": pod.namespace,
                    "labels": {
                        "projectcalico.org/namespace": pod.namespace,
                        "projectcalico.org/orchestrator": pod.orchestrator,
                    },
                    "annotations": {NETWORK_ANNOTATION: network},
                },
                "spec": spec,
            }
        )

    def stored(self, pod: Pod) -> tuple[KeyValue, WorkloadEndpoint] | None:
        """The pod's stored endpoint, whichever container it names (None: absent)."""
        kv = self.store.get(resource_key(WorkloadEndpoint.KIND, pod.wep_name, pod.namespace))
        if kv is None:
            return None
        try:
            return kv, self.resources.decode(WorkloadEndpoint, kv)
        except CorruptResourceError as exc:
            log.warning("ignoring an unreadable endpoint: %s", exc)
            return None

    @staticmethod
    def names_us(pod: Pod, wep: WorkloadEndpoint) -> bool:
        return wep.spec.container_id == pod.container_id

    def ours(self, pod: Pod) -> tuple[KeyValue, WorkloadEndpoint] | None:
        """The pod's stored endpoint if it names this container (None: absent, another's)."""
        stored = self.stored(pod)
        return stored if stored is not None and self.names_us(pod, stored[1]) else None

    def delete(self, pod: Pod, seen: tuple[KeyValue, WorkloadEndpoint]) -> None:
        """Delete the endpoint if, at the moment of deletion, it still names this container:
        compare-and-swap on the revision it was read at, re-reading if it changed."""
        kv: KeyValue | None = seen[0]
        for _ in range(5):
            if kv is None:
                return
            try:
                self.store.delete(kv.key, kv.mod_revision)
                return
            except NotFoundError:
                return
            except ConflictError:
                again = self.ours(pod)  # None: a newer sandbox took it over meanwhile
                kv = None if again is None else again[0]
        raise CniError(Code.TRY_AGAIN_LATER, f"endpoint {pod.wep_name} keeps changing")

    @staticmethod
    def not_ours(pod: Pod, iface: PodInterface, wep: WorkloadEndpoint | None) -> str | None:
        """Why the interface ``pod.ifname`` found in the pod is not this pod's to replace or
        delete (None: it is).

        It is this pod's when it is a veth whose peer is our host interface (the name is the
        pod's: only an attempt for this pod makes it) and no endpoint gives it to another
        container: the endpoint of this pod naming another container, with this interface's
        MAC or address, is that container's live interface (the same pod name claimed for a
        new container in the old one's namespace). An endpoint of another container whose
        interface is not this one is stale (its veth was replaced), so this is an unfinished
        attempt: ours to replace.
        """
        if iface.kind != "veth":
            return f"a {iface.kind or 'link of unknown kind'} that tortie did not make"
        if iface.peer != pod.host_ifname:
            where = (
                f"host interface {iface.peer}" if iface.peer else "an interface not on this node"
            )
            return f"a veth whose other end is {where}, not {pod.host_ifname} (another pod's)"
        if wep is not None and wep.spec.container_id != pod.container_id:
            theirs = {ipaddress.ip_interface(n).ip for n in wep.spec.ip_networks}
            mine = {ipaddress.ip_address(a) for a in iface.addresses}
            if (wep.spec.mac or "").lower() == iface.mac or theirs & mine:
                return (
                    f"it belongs to container {wep.spec.container_id} "
                    f"(endpoint {wep.metadata.namespace}/{wep.metadata.name})"
                )
        return None

    def host_side_taken(self, pod: Pod) -> str | None:
        """Why the existing host interface ``pod.host_ifname`` is not this pod's to replace.

        Calico replaces it (same pod name, an earlier sandbox), and so do we when the pod's
        own endpoint names it or no endpoint does (an unfinished attempt); never when another
        pod's endpoint names it. Only reached when the interface exists, so the list is rare.
        """
        mine = (pod.namespace, pod.wep_name)
        for other in self.resources.list(WorkloadEndpoint):
            key = (other.metadata.namespace, other.metadata.name)
            if (
                key != mine
                and other.spec.node == self.node
                and other.spec.interface_name == pod.host_ifname
            ):
                return (
                    f"it is the interface of endpoint {key[0]}/{key[1]} "
                    f"(container {other.spec.container_id}), another pod"
                )
        return None


def requested_ips(values: Sequence[str]) -> list[ipaddress.IPv4Address]:
    """The address the runtime asks for (CNI ``ips``), at most one, IPv4."""
    out: list[ipaddress.IPv4Address] = []
    for text in values:
        try:
            address = ipaddress.ip_interface(text).ip
        except ValueError:
            raise CniError(
                Code.INVALID_NETWORK_CONFIG, f"requested address {text!r} is not an IP address"
            ) from None
        if not isinstance(address, ipaddress.IPv4Address):
            raise CniError(
                Code.UNSUPPORTED_FIELD, f"requested address {text}: tortie pods are IPv4 only"
            )
        if address not in out:
            out.append(address)
    if len(out) > 1:
        raise CniError(
            Code.UNSUPPORTED_FIELD,
            f"{len(out)} addresses requested ({', '.join(map(str, out))}): a tortie pod has one",
        )
    return out


def our_address(prev: dict[str, object], pod: Pod) -> ipaddress.IPv4Address:
    """Our IPv4 address in a (canonical) prevResult: the one on the pod's ``ifname``."""
    interfaces = prev.get("interfaces")
    ips = prev.get("ips")
    if not isinstance(interfaces, list) or not isinstance(ips, list):
        raise CniError(Code.CHECK_FAILED, "prevResult lists no interfaces or addresses")
    ours = {
        i
        for i, iface in enumerate(interfaces)
        if isinstance(iface, dict) and iface.get("name") == pod.ifname and iface.get("sandbox")
    }
    for ip in ips:
        if isinstance(ip, dict) and ip.get("interface") in ours:
            try:
                address = ipaddress.ip_interface(str(ip.get("address"))).ip
            except ValueError:
                continue
            if isinstance(address, ipaddress.IPv4Address):
                return address
    raise CniError(Code.CHECK_FAILED, f"prevResult has no IPv4 address on the pod's {pod.ifname}")
