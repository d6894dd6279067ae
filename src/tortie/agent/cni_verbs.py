"""The CNI verbs, served inside the node agent: ADD, DEL, CHECK, GC, STATUS.

Problem: the per-pod ``tortie`` plugin process only relays the runtime's request
(:mod:`tortie.model.cniwire`); the work needs IPAM, the datastore and the kernel, warm in the
agent. :class:`CniHandler` does it, whatever carried the request
(:mod:`tortie.agent.cni_transport` for the socket): IPAM by handle ``<network>.<containerID>``,
the kernel plumbing (:class:`tortie.dataplane.wiring.Wiring`), and the pod's WorkloadEndpoint
(:mod:`tortie.agent.cni_pods`).

Verbs:
- ADD: assign (or reuse the handle's) address, wire the pod, write the endpoint. Any failure
  undoes all of it (host veth deleted, which takes the pod side and routes with it; address
  released) before the error is returned. Refused before any change (IPAM included): a
  namespace that is the node's own or not a network namespace (code 4, CNI_NETNS is invalid);
  an interface of the requested name in the pod that is not provably this container's (code
  103; the spec: "if an interface of the requested name already exists in the container, the
  plugin MUST return with an error"); a host interface of our name that another pod's endpoint
  names (103).
- DEL: idempotent; "not found" is success. Deletes the host veth only if it is this
  container's (its endpoint names this container, or the host routes this handle's address
  through it), which takes the pod end with it; otherwise a veth left in the pod's namespace,
  only if provably this pod's (:meth:`tortie.agent.cni_pods.Endpoints.not_ours`). Releases the
  handle, and deletes the endpoint only if it names this container: a late DEL for an old
  sandbox of a pod never touches the live sandbox's endpoint or interface (same pod name, same
  ``cali`` name). A DEL into the node's own namespace is refused like ADD; one whose namespace
  is gone, or no longer a namespace (an unmounted pin is an empty file), does the host side only.
- CHECK: compares the kernel, IPAM and the endpoint with the prevResult (namespace refused
  as for ADD).
- GC: DEL for every attachment of this network on this node missing from the runtime's list
  (:mod:`tortie.agent.cni_gc`).
- STATUS: datastore reachable and a pool with free addresses for this node.

Invariants:
- Whose is it: an interface is replaced or deleted only when the endpoint records, the kernel's
  veth peering and IPAM together prove it this pod's; the judgement is made on what
  :meth:`Wiring.inspect` saw, and only the inspected ifindex is removed.
- The pod's namespace is opened once per request; all work goes through that open file.
- One pod at a time: requests for one pod (same host interface name) are serialised; other
  pods proceed in parallel. IPAM writes on this node are serialised by one lock: they would
  only collide on the same block's compare-and-swap and retry, which is slower than waiting.
- Every failure becomes a CNI error by its type (:func:`tortie.model.cnierrors.failure_of`),
  never a crash of the agent: bad input changes nothing.

Hazards: a datastore outage makes ADD/DEL fail with code 11 (try again later); the runtime
retries DEL, and the IPAM handle stays until one succeeds (``tortie ipam check`` finds what
a runtime gave up on).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterator

from tortie.agent import cni_gc
from tortie.agent.cni_gc import WHO, AddTracker
from tortie.agent.cni_pods import Endpoints, Pod, our_address, requested_ips
from tortie.dataplane.wiring import Existing, PodLink, Wiring
from tortie.datastore.api import Datastore, DatastoreError
from tortie.datastore.factory import parse_url
from tortie.ipam.client import IPAM
from tortie.ipam.errors import NoPoolsError
from tortie.ipam.pools import select_pools
from tortie.model.cnierrors import CniError, failure_of
from tortie.model.cniwire import CniRequest, CniResponse, Code, failure
from tortie.model.ipam import ATTR_NAMESPACE, ATTR_POD
from tortie.model.naming import GATEWAY, HOST_MAC

log = logging.getLogger(__name__)


class KeyedLocks:
    """One lock per key, created on demand and dropped when no one holds or waits for it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


def same_datastore(a: str, b: str) -> bool:
    try:
        pa, pb = parse_url(a), parse_url(b)
    except DatastoreError:
        return a == b
    return (pa.backend, pa.path, pa.endpoints) == (pb.backend, pb.path, pb.endpoints)


class CniHandler:
    """Serves CNI requests for node ``node`` (any thread; see the module's invariants)."""

    def __init__(
        self,
        node: str,
        store: Datastore,
        ipam: IPAM,
        mtu: Callable[[], int],
        wiring: Wiring,
        *,
        where: str = "",
    ) -> None:
        self.node = node
        self.store = store
        self.ipam = ipam
        self.mtu = mtu
        self.wiring = wiring
        self.where = where  # the socket the agent serves on, for messages
        self.endpoints = Endpoints(store, node)
        self.adds = AddTracker()
        self._pod_locks = KeyedLocks()
        self._ipam_lock = threading.Lock()

    def handle(self, req: CniRequest) -> CniResponse:
        """Serve one request; every failure is answered as a CNI error."""
        started = time.monotonic()
        try:
            self._check_target(req)
            if req.command == "ADD":
                response = self._add(req)
            elif req.command == "DEL":
                self.delete(self._pod_of(req), req.netns)
                response = CniResponse()
            elif req.command == "CHECK":
                self._check(req)
                response = CniResponse()
            elif req.command == "GC":
                response = cni_gc.collect(
                    req,
                    node=self.node,
                    resources=self.endpoints.resources,
                    ipam=self.ipam,
                    adds=self.adds,
                    delete=lambda pod, keep: self.delete(pod, "", keep),
                )
            elif req.command == "STATUS":
                self._status()
                response = CniResponse()
            else:
                raise CniError(Code.INVALID_ENVIRONMENT, f"unknown command {req.command!r}")
        except Exception as exc:
            fail = failure_of(exc, WHO)
            if fail.code == Code.INTERNAL:
                log.exception("CNI %s %s failed", req.command, req.container_id)
            else:
                log.warning("CNI %s %s failed: %s", req.command, req.container_id, fail.msg)
            return failure(fail.code, fail.msg, fail.details)
        log.info(
            "CNI %s %s %s: ok in %.1f ms",
            req.command,
            req.container_id,
            req.ifname,
            (time.monotonic() - started) * 1000,
        )
        return response

    def warm_up(self) -> None:
        """Pay the first request's one-off costs now (the endpoint model's validators, the
        wiring's first sockets), so the first pod is as fast as the rest."""
        self.wiring.host_link_exists("lo")
        pod = Pod.of(self.node, "warm-up", "warm-up", "eth0", namespace=None, pod=None)
        self.endpoints.build(pod, "warm-up", HOST_MAC, ipaddress.IPv4Address("192.0.2.1"))

    def _check_target(self, req: CniRequest) -> None:
        if req.node and req.node != self.node:
            raise CniError(
                Code.INVALID_NETWORK_CONFIG,
                f"the CNI config is for node {req.node!r}, but the agent on "
                f"{self.where} serves node {self.node!r}",
                "fix 'nodename' in the conflist (tortie install-cni --nodename)",
            )
        if req.datastore and not same_datastore(req.datastore, self.store.url):
            raise CniError(
                Code.INVALID_NETWORK_CONFIG,
                f"the CNI config names datastore {req.datastore}, but the agent uses "
                f"{self.store.url}",
                "reinstall the CNI config (tortie install-cni --datastore) or restart the agent",
            )

    def _pod_of(self, req: CniRequest) -> Pod:
        return Pod.of(
            self.node,
            req.network,
            req.container_id,
            req.ifname,
            namespace=req.pod_namespace,
            pod=req.pod,
        )

    # -- ADD -------------------------------------------------------------------------------------
    def _add(self, req: CniRequest) -> CniResponse:
        if not req.netns:
            raise CniError(Code.INVALID_ENVIRONMENT, "ADD needs CNI_NETNS")
        pod = self._pod_of(req)
        requested = requested_ips(req.ips)
        mtu = req.mtu or self.mtu()
        with (
            self.adds.adding(pod.container_id),
            self._pod_locks.hold(pod.host_ifname),
            self.wiring.open_pod_netns(req.netns) as netns,
        ):
            assert netns is not None
            # Judge what is in the way before taking an address: a refusal changes nothing.
            existing = self.wiring.inspect(netns, pod.ifname, pod.host_ifname)
            self._may_replace(pod, existing, req.netns)
            ip = self._address_for(pod, req, requested)
            try:
                link = PodLink(pod.host_ifname, pod.ifname, netns, ip, mtu)
                mac = self.wiring.attach(link, existing)
                self.endpoints.resources.apply([self.endpoints.build(pod, req.network, mac, ip)])
            except BaseException as exc:
                self._undo_add(pod, netns, exc)
                raise
        result = {
            "interfaces": [
                {"name": pod.host_ifname, "mac": HOST_MAC, "mtu": mtu},
                {"name": pod.ifname, "mac": mac, "sandbox": req.netns, "mtu": mtu},
            ],
            "ips": [{"address": f"{ip}/32", "gateway": GATEWAY, "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": GATEWAY}],
            "dns": {},
        }
        return CniResponse(result=result)

    def _may_replace(self, pod: Pod, existing: Existing, netns: str) -> None:
        """Raise INTERFACE_EXISTS unless what ``existing`` found is this pod's to replace.
        (The common ADD finds nothing and reads no endpoint.)"""
        if existing.pod_side is not None:
            stored = self.endpoints.stored(pod)
            wep = None if stored is None else stored[1]
            why = self.endpoints.not_ours(pod, existing.pod_side, wep)
            if why is not None:
                raise CniError(
                    Code.INTERFACE_EXISTS,
                    f"the pod's namespace {netns} already has an interface {pod.ifname}: {why}",
                    "CNI forbids replacing it. Give another CNI_IFNAME, or the right CNI_NETNS "
                    "(each sandbox has its own namespace)",
                )
            return  # the pod side's peer is our host interface: it goes with it
        if existing.host_index is not None:
            why = self.endpoints.host_side_taken(pod)
            if why is not None:
                raise CniError(
                    Code.INTERFACE_EXISTS,
                    f"the host interface {pod.host_ifname} already exists: {why}",
                    "not replaced; delete that endpoint (or that pod) first",
                )

    def _address_for(
        self, pod: Pod, req: CniRequest, requested: list[ipaddress.IPv4Address]
    ) -> ipaddress.IPv4Address:
        """The handle's address if it has one (a repeated ADD), else a new one."""
        with self._ipam_lock:
            held = [a for a in self.ipam.addresses_for_handle(pod.handle) if a.version == 4]
            if held and (not requested or held[0] == requested[0]):
                return held[0]
            if held:
                self.ipam.release_by_handle(pod.handle)
            attrs = {ATTR_NAMESPACE: pod.namespace, ATTR_POD: pod.pod} if pod.pod else {}
            got = self.ipam.assign(
                node=self.node,
                handle=pod.handle,
                pools=list(req.pools) or None,
                attrs=attrs,
                ip=requested[0] if requested else None,
            )
        address = got[0]
        assert isinstance(address, ipaddress.IPv4Address)
        return address

    def _undo_add(self, pod: Pod, netns: str, cause: BaseException) -> None:
        """Best effort: each step runs even if an earlier one fails (the runtime's DEL, or
        GC, finishes what this cannot)."""
        log.warning("ADD %s failed (%s); undoing it", pod.container_id, cause)
        steps: list[tuple[str, Callable[[], object]]] = [
            ("delete the host interface", lambda: self.wiring.detach_host_side(pod.host_ifname)),
            ("delete the pod interface", lambda: self._detach_peer_of_ours(pod, netns)),
            ("release the address", lambda: self._release(pod)),
        ]
        for what, step in steps:
            try:
                step()
            except Exception:
                log.exception("undo ADD %s: cannot %s", pod.container_id, what)

    def _detach_peer_of_ours(self, pod: Pod, netns: str) -> bool:
        """Delete the pod's interface only if its peer is our host interface (deleting the
        host end usually took it already)."""
        found = self.wiring.inspect(netns, pod.ifname, pod.host_ifname).pod_side
        if found is None or found.kind != "veth" or found.peer != pod.host_ifname:
            return False
        return self.wiring.detach_pod_side(netns, pod.ifname, found.index)

    def _release(self, pod: Pod) -> object:
        with self._ipam_lock:
            return self.ipam.release_by_handle(pod.handle)

    # -- DEL -------------------------------------------------------------------------------------
    def delete(self, pod: Pod, netns: str, keep: Callable[[], bool] | None = None) -> bool:
        """Remove the attachment; False if ``keep()`` (asked under the pod's lock) says no.

        Kernel first, then IPAM, then the endpoint: a DEL interrupted anywhere is finished by
        the runtime's retry, and the endpoint (which says whose the interface is) goes last.
        """
        with self._pod_locks.hold(pod.host_ifname), contextlib.ExitStack() as stack:
            if keep is not None and keep():
                return False
            # Refuses the node's own namespace before anything changes; None: no namespace
            # given, or it is gone.
            ns = (
                stack.enter_context(self.wiring.open_pod_netns(netns, gone_ok=True))
                if netns
                else None
            )
            stored = self.endpoints.stored(pod)
            names_us = stored is not None and self.endpoints.names_us(pod, stored[1])
            seen = stored if names_us else None
            # Deleting the host end deletes the pod end too: one kernel deletion (~10 ms of
            # RCU synchronisation each), and no work inside the pod's namespace.
            removed = self._owns_host_side(pod, seen is not None) and (
                self.wiring.detach_host_side(pod.host_ifname)
            )
            if ns is not None and not removed:
                # A veth left in the pod whose host end we did not delete: an ADD that died
                # half-way. Deleted only if provably this pod's, never by name alone.
                found = self.wiring.inspect(ns, pod.ifname, pod.host_ifname).pod_side
                wep = None if stored is None else stored[1]
                if found is not None and self.endpoints.not_ours(pod, found, wep) is None:
                    self.wiring.detach_pod_side(ns, pod.ifname, found.index)
            self._release(pod)
            if seen is not None:
                self.endpoints.delete(pod, seen)
        return True

    def _owns_host_side(self, pod: Pod, owned: bool) -> bool:
        """Is the host interface ``pod.host_ifname`` this container's to delete?

        The name is per pod, not per sandbox, so a late DEL of an old sandbox sees the live
        sandbox's interface under the same name. It is ours if the endpoint still names this
        container (a newer sandbox's ADD would have replaced the endpoint, and ADD and DEL of
        one pod never overlap), or if the host routes one of our handle's addresses through
        it (an ADD that died before writing its endpoint).
        """
        if owned:
            return True
        addresses = self.ipam.addresses_for_handle(pod.handle)
        v4 = [a for a in addresses if isinstance(a, ipaddress.IPv4Address)]
        return (
            bool(v4)
            and self.wiring.host_link_exists(pod.host_ifname)
            and any(self.wiring.routes_to(ip) == pod.host_ifname for ip in v4)
        )

    # -- CHECK -----------------------------------------------------------------------------------
    def _check(self, req: CniRequest) -> None:
        pod = self._pod_of(req)
        if req.prev_result is None:
            raise CniError(Code.INVALID_NETWORK_CONFIG, "CHECK needs prevResult")
        if not req.netns:
            raise CniError(Code.UNKNOWN_CONTAINER, "CHECK needs the pod's CNI_NETNS")
        ip = our_address(req.prev_result, pod)
        with (
            self._pod_locks.hold(pod.host_ifname),
            self.wiring.open_pod_netns(req.netns) as netns,
        ):
            assert netns is not None
            problems = self.wiring.check(PodLink(pod.host_ifname, pod.ifname, netns, ip, 0))
            if ip not in self.ipam.addresses_for_handle(pod.handle):
                problems.append(f"IPAM does not hold {ip} for handle {pod.handle}")
            seen = self.endpoints.ours(pod)
            if seen is None:
                problems.append(f"no workload endpoint {pod.wep_name} for this container")
            elif f"{ip}/32" not in seen[1].spec.ip_networks:
                problems.append(f"endpoint {pod.wep_name} does not list {ip}/32")
        if problems:
            raise CniError(
                Code.CHECK_FAILED,
                f"pod networking is not as ADD left it ({len(problems)} problem(s))",
                "; ".join(problems),
            )

    # -- STATUS ----------------------------------------------------------------------------------
    def _status(self) -> None:
        try:
            pools = self.ipam.view.pools()
            candidates = select_pools(
                pools,
                version=4,
                node=self.node,
                node_labels=lambda: self.ipam.view.node_labels(self.node),
                requested=None,
            )
            usage = {row.cidr: row.free for row in self.ipam.usage() if row.grouping == "IP Pool"}
        except NoPoolsError as exc:
            raise CniError(Code.PLUGIN_NOT_AVAILABLE, f"no IPv4 pool for this node: {exc}") from exc
        except DatastoreError as exc:
            raise CniError(
                Code.PLUGIN_NOT_AVAILABLE, f"the datastore is not reachable: {exc}"
            ) from exc
        if not any(usage.get(p.spec.cidr, 0) > 0 for p in candidates):
            cidrs = ", ".join(p.spec.cidr for p in candidates)
            raise CniError(
                Code.PLUGIN_NOT_AVAILABLE,
                f"no free addresses left in the pools for this node ({cidrs})",
            )
