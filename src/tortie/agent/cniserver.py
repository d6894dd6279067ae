"""The node agent's CNI server: does what the per-pod CNI plugin process asks.

Problem: the CNI plugin must answer ADD in well under 100 ms, but IPAM, the datastore and
netlink need modules that take ~0.35 s just to import. So the plugin (stdlib only) sends one
request over a unix socket (:mod:`tortie.model.cniwire`) and this server, warm inside the
agent, does the work. It is three pieces, put together here:

- :mod:`tortie.agent.cni_transport`: the socket (bind, peer check, read/write, threads);
- :mod:`tortie.agent.cni_verbs`: ADD, DEL, CHECK, GC, STATUS (with :mod:`tortie.agent.cni_pods`
  for whose an interface is and :mod:`tortie.agent.cni_gc`);
- :mod:`tortie.dataplane.wiring`: the pod's kernel plumbing, behind the ``Namespaces`` /
  ``Netlink`` seam (this machine's kernel unless a test gives fakes).

Failures reach the runtime as CNI codes chosen by the error's type, the same mapping the
plugins use (:mod:`tortie.model.cnierrors`).

Invariants: the server is embedded in ``tortie node run`` (:mod:`tortie.agent.run`); there is
no standalone runner. Starting it begins paying the first request's one-off costs in the
background, so the first pod is as fast as the rest.

Hazards: see the pieces' modules (socket replacement, datastore outages, whose interfaces).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from tortie.agent.cni_transport import CniServerError, CniSocket
from tortie.agent.cni_verbs import CniHandler
from tortie.dataplane.kernel_netlink import KernelNamespaces
from tortie.dataplane.netlink import Namespaces
from tortie.dataplane.netns import NetnsRef
from tortie.dataplane.wiring import Wiring
from tortie.datastore.api import Datastore
from tortie.ipam.client import IPAM
from tortie.model.cniwire import CniRequest, CniResponse

log = logging.getLogger(__name__)

__all__ = ["CniServer", "CniServerError"]


class CniServer:
    """Serves CNI requests for node ``node_name`` on ``socket_path``.

    ``store`` is the datastore endpoints are written to and ``ipam`` allocates from it;
    ``mtu()`` gives the pods' MTU (the agent's value: host MTU minus encapsulation), unless
    the CNI config sets one. The host side of pods lives in ``host_netns`` (None: this
    process's namespace; a lab node's namespace otherwise). ``namespaces`` replaces the
    machine's network namespaces (tests give :class:`~tortie.dataplane.fake_netns.FakeNamespaces`).
    """

    def __init__(
        self,
        socket_path: str,
        node_name: str,
        store: Datastore,
        ipam: IPAM,
        mtu: Callable[[], int],
        *,
        host_netns: NetnsRef = None,
        namespaces: Namespaces | None = None,
        max_connections: int = 64,
    ) -> None:
        self.node = node_name
        self.store = store
        self.ipam = ipam
        self.wiring = Wiring(namespaces or KernelNamespaces(), host_netns)
        self.transport = CniSocket(socket_path, self.handle, max_connections=max_connections)
        self.socket_path = self.transport.socket_path
        self.handler = CniHandler(node_name, store, ipam, mtu, self.wiring, where=self.socket_path)

    def handle(self, req: CniRequest) -> CniResponse:
        """Serve one request (the socket's threads call this; so can an embedding agent)."""
        return self.handler.handle(req)

    def start(self) -> None:
        """Listen on the socket (replacing a stale one) and serve in background threads."""
        self.transport.start()
        threading.Thread(target=self._warm_up, name="tortie-cni-warm-up", daemon=True).start()
        log.info("CNI server for node %s listening on %s", self.node, self.socket_path)

    def _warm_up(self) -> None:
        try:
            self.handler.warm_up()
        except Exception:
            log.debug("CNI server warm-up failed", exc_info=True)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, remove our socket file, wait up to ``timeout`` s for requests."""
        self.transport.stop(timeout)

    def __enter__(self) -> CniServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
