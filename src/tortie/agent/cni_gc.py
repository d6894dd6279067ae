"""CNI GC: remove this network's attachments on this node that the runtime no longer has.

Problem: a runtime that lost a pod (a crash between its ADD and its record of it, a DEL it gave
up on) leaves an interface, an address and an endpoint behind. GC hands us the attachments it
still has; everything else of this network on this node is stale. But the list is a snapshot
taken before the request: an ADD that started after it, or is still running, is not on it and
must survive.

Invariants:
- Stale means: an endpoint of this network (its annotation) on this node whose (container,
  interface) is not listed, or an IPAM handle ``<network>.<container>`` of this node whose
  container is not listed (an ADD that died before writing its endpoint).
- :class:`AddTracker` remembers when each container's last ADD started and which are running;
  GC removes an attachment only under that pod's lock and only if no ADD for it is running or
  started after the GC request arrived (the removal itself is the verb handler's DEL).
- Memory stays bounded: entries older than :data:`RECENT_ADD_SECONDS` are dropped by GC, and
  by ADD once there are more than :data:`ADDS_REMEMBERED` (runtimes without GC never prune).

Hazards: one failing removal does not stop the others; GC reports them together as
TRY_AGAIN_LATER, and the runtime's next GC tries again.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator

from tortie.agent.cni_pods import NETWORK_ANNOTATION, Pod
from tortie.datastore.resources import ResourceStore
from tortie.ipam.client import IPAM
from tortie.model.cnierrors import CniError, failure_of
from tortie.model.cniwire import CniRequest, CniResponse, Code
from tortie.model.ipam import ATTR_NAMESPACE, ATTR_NODE, ATTR_POD
from tortie.model.naming import pod_handle_prefix
from tortie.model.resources import WorkloadEndpoint

log = logging.getLogger(__name__)

RECENT_ADD_SECONDS = 600.0  # how long GC remembers that an ADD happened
ADDS_REMEMBERED = 1024  # beyond this many, ADD prunes entries older than that
WHO = "the tortie agent"  # in an internal error's message

# (container ID, ifname) -> (Kubernetes namespace, pod name)
Stale = dict[tuple[str, str], tuple[str | None, str | None]]


class AddTracker:
    """Which containers have an ADD running, and when each one's last ADD started."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._started: dict[str, float] = {}  # container ID -> start of its last ADD
        self._running: dict[str, int] = {}  # container ID -> ADDs in progress

    def now(self) -> float:
        return self._clock()

    @contextlib.contextmanager
    def adding(self, container_id: str) -> Iterator[None]:
        with self._lock:
            self._started[container_id] = self._clock()
            self._running[container_id] = self._running.get(container_id, 0) + 1
        if len(self._started) > ADDS_REMEMBERED:
            self.forget_old()  # runtimes without GC (containerd 1.6) never prune it
        try:
            yield
        finally:
            with self._lock:
                left = self._running.pop(container_id) - 1
                if left:
                    self._running[container_id] = left

    def added_since(self, container_id: str, since: float) -> bool:
        """An ADD for the container is running, or started after ``since``: GC must keep it
        (the runtime's list is a snapshot that may predate it)."""
        with self._lock:
            started = self._started.get(container_id)
            return container_id in self._running or (started is not None and started >= since)

    def forget_old(self) -> None:
        horizon = self._clock() - RECENT_ADD_SECONDS
        with self._lock:
            for cid in [c for c, t in self._started.items() if t < horizon]:
                del self._started[cid]


def stale_attachments(req: CniRequest, node: str, resources: ResourceStore, ipam: IPAM) -> Stale:
    """This network's attachments on ``node`` that ``req.valid_attachments`` does not list."""
    valid = {(a.container_id, a.ifname) for a in req.valid_attachments}
    valid_ids = {cid for cid, _ in valid}
    stale: Stale = {}
    for wep in resources.list(WorkloadEndpoint):
        cid = wep.spec.container_id
        if (
            wep.spec.node == node
            and wep.metadata.annotations.get(NETWORK_ANNOTATION) == req.network
            and cid
            and (cid, wep.spec.endpoint) not in valid
        ):
            stale[(cid, wep.spec.endpoint)] = (wep.metadata.namespace, wep.spec.pod)
    prefix = pod_handle_prefix(req.network)
    for blk in ipam.store.blocks():
        for _ordinal, attr in blk.value.allocated():
            handle = attr.handle_id or ""
            cid = handle[len(prefix) :]
            if (
                handle.startswith(prefix)
                and attr.attrs.get(ATTR_NODE) == node
                and cid not in valid_ids
                and not any(key[0] == cid for key in stale)
            ):
                stale[(cid, "eth0")] = (attr.attrs.get(ATTR_NAMESPACE), attr.attrs.get(ATTR_POD))
    return stale


def collect(
    req: CniRequest,
    *,
    node: str,
    resources: ResourceStore,
    ipam: IPAM,
    adds: AddTracker,
    delete: Callable[[Pod, Callable[[], bool]], bool],
) -> CniResponse:
    """Serve GC: ``delete(pod, keep)`` removes one attachment unless ``keep()`` says no
    (asked under the pod's lock) and returns whether it did."""
    gc_started = adds.now()
    errors: list[str] = []
    removed: list[str] = []
    for (cid, ifname), (namespace, pod_name) in sorted(
        stale_attachments(req, node, resources, ipam).items()
    ):
        try:
            pod = Pod.of(node, req.network, cid, ifname, namespace=namespace, pod=pod_name)
            if delete(pod, functools.partial(adds.added_since, cid, gc_started)):
                removed.append(f"{cid}/{ifname}")
        except Exception as exc:
            errors.append(f"{cid}/{ifname}: {failure_of(exc, WHO).msg}")
    adds.forget_old()
    if removed:
        log.info("GC removed %d attachment(s): %s", len(removed), ", ".join(removed))
    if errors:
        raise CniError(
            Code.TRY_AGAIN_LATER,
            f"GC could not remove {len(errors)} attachment(s)",
            "; ".join(errors),
        )
    return CniResponse()
