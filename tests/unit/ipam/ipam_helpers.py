"""Helpers for the IPAM tests: write the resources IPAM reads; lose races on purpose."""

from __future__ import annotations

from typing import Any

from tortie.datastore.memory import MemoryDatastore
from tortie.datastore.resources import ResourceStore
from tortie.model.resources import (
    IPPool,
    Node,
    WorkloadEndpoint,
    workload_endpoint_name,
)


class Cluster:
    """Writes the resources IPAM reads (pools, nodes, endpoints) into a store."""

    def __init__(self, store: MemoryDatastore) -> None:
        self.store = store
        self.resources = ResourceStore(store)

    def pool(self, name: str, cidr: str, block_size: int = 26, **spec: Any) -> IPPool:
        doc = {
            "apiVersion": "projectcalico.org/v3",
            "kind": "IPPool",
            "metadata": {"name": name},
            "spec": {"cidr": cidr, "blockSize": block_size, **spec},
        }
        pool = IPPool.from_document(doc)
        self.resources.apply([pool])
        return pool

    def delete_pool(self, name: str) -> None:
        self.resources.delete(IPPool, name)

    def node(self, name: str, labels: dict[str, str] | None = None, **bgp: Any) -> Node:
        doc: dict[str, Any] = {
            "apiVersion": "projectcalico.org/v3",
            "kind": "Node",
            "metadata": {"name": name, "labels": labels or {}},
            "spec": {"bgp": bgp} if bgp else {},
        }
        node = Node.from_document(doc)
        self.resources.apply([node])
        return node

    def delete_node(self, name: str) -> None:
        self.resources.delete(Node, name)

    def endpoint(
        self, node: str, pod: str, ips: list[str], namespace: str = "default"
    ) -> WorkloadEndpoint:
        doc = {
            "apiVersion": "projectcalico.org/v3",
            "kind": "WorkloadEndpoint",
            "metadata": {
                "name": workload_endpoint_name(node, "k8s", pod, "eth0"),
                "namespace": namespace,
            },
            "spec": {
                "node": node,
                "pod": pod,
                "interfaceName": "cali" + pod.replace("-", "")[:11],
                "ipNetworks": [f"{ip}/32" if "/" not in ip else ip for ip in ips],
            },
        }
        wep = WorkloadEndpoint.from_document(doc)
        self.resources.apply([wep])
        return wep

    def delete_endpoint(self, node: str, pod: str, namespace: str = "default") -> None:
        self.resources.delete(
            WorkloadEndpoint, workload_endpoint_name(node, "k8s", pod, "eth0"), namespace
        )


class HookedStore(MemoryDatastore):
    """A memory store that runs ``hook`` once, just before the first transaction that
    ``when(compares, ops)`` selects: a deterministic way to lose a race."""

    def __init__(self) -> None:
        super().__init__()
        self._hooks: list[tuple[Any, Any]] = []

    def on_txn(self, when: Any, hook: Any) -> None:
        self._hooks.append((when, hook))

    def txn(self, compares: Any, ops: Any) -> Any:
        for i, (when, hook) in enumerate(self._hooks):
            if when(compares, ops):
                del self._hooks[i]
                hook()
                break
        return super().txn(compares, ops)
