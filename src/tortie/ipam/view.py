"""What IPAM reads from the cluster's resources: pools, nodes, its configuration, endpoints.

Problem: pool choice needs IPPools and Node labels, the allocator needs IPAMConfiguration, and
leak checking needs WorkloadEndpoints and Nodes. This module is the one place that reads them
(through :class:`tortie.datastore.resources.ResourceStore`), so the allocator never parses
resource documents itself.

Invariants: reads only, except :meth:`ClusterView.configure`, which replaces the ``default``
IPAMConfiguration with a compare-and-swap (via ResourceStore). A missing configuration means
the defaults (strict affinity off, 20 blocks per host). ``max_blocks_per_host == 0`` means no
limit, as in Calico.

Hazard: the view is not a snapshot; callers that need consistency guard their writes with
the revisions of the IPAM keys they read, which is what matters for correctness (pool or
label changes racing an allocation only affect which pool is picked).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from tortie.datastore.api import Datastore
from tortie.datastore.resources import ResourceStore
from tortie.ipam.clock import Clock
from tortie.model.resources import IPAMConfiguration, IPPool, Node, WorkloadEndpoint

CONFIG_NAME = "default"
DEFAULT_MAX_BLOCKS_PER_HOST = 20


@dataclass(frozen=True, slots=True)
class IPAMSettings:
    strict_affinity: bool = False
    max_blocks_per_host: int = DEFAULT_MAX_BLOCKS_PER_HOST

    def limit_reached(self, owned: int) -> bool:
        return self.max_blocks_per_host > 0 and owned >= self.max_blocks_per_host


class ClusterView:
    def __init__(self, store: Datastore, clock: Clock) -> None:
        self.resources = ResourceStore(
            store, clock=lambda: datetime.fromtimestamp(clock.now(), UTC)
        )

    def pools(self) -> list[IPPool]:
        return self.resources.list(IPPool)

    def node(self, name: str) -> Node | None:
        return self.resources.get(Node, name)

    def node_labels(self, name: str) -> dict[str, str] | None:
        """The Node's labels, or None when there is no such Node."""
        node = self.node(name)
        return None if node is None else dict(node.metadata.labels)

    def nodes(self) -> dict[str, Node]:
        return {n.metadata.name: n for n in self.resources.list(Node)}

    def workload_endpoints(self) -> list[WorkloadEndpoint]:
        return self.resources.list(WorkloadEndpoint)

    def settings(self) -> IPAMSettings:
        cfg = self.resources.get(IPAMConfiguration, CONFIG_NAME)
        if cfg is None:
            return IPAMSettings()
        return IPAMSettings(
            strict_affinity=bool(cfg.spec.strict_affinity),
            max_blocks_per_host=int(cfg.spec.max_blocks_per_host),
        )

    def configure(
        self, *, strict_affinity: bool | None = None, max_blocks_per_host: int | None = None
    ) -> IPAMSettings:
        """Change the given settings, keeping the others; returns the result."""
        current = self.resources.get(IPAMConfiguration, CONFIG_NAME)
        if current is None:
            doc: dict[str, object] = {
                "apiVersion": "projectcalico.org/v3",
                "kind": "IPAMConfiguration",
                "metadata": {"name": CONFIG_NAME},
                "spec": {},
            }
        else:
            doc = current.to_document()
        spec = dict(doc.get("spec") or {})  # type: ignore[call-overload]
        if strict_affinity is not None:
            spec["strictAffinity"] = strict_affinity
        if max_blocks_per_host is not None:
            spec["maxBlocksPerHost"] = max_blocks_per_host
        doc["spec"] = spec
        # The document carries resourceVersion when read back: the apply is a CAS on it.
        self.resources.apply([IPAMConfiguration.from_document(doc)])
        return self.settings()
