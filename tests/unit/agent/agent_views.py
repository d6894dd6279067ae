"""A small cluster for the managers' unit tests: a memory datastore, IPAM, and the View a pass
of the agent's loop would hand the managers (built as the syncer would fill the state)."""

from __future__ import annotations

from ipaddress import IPv4Interface

from tortie.agent.desired import LocalNode
from tortie.agent.registration import register_node
from tortie.agent.state import ClusterState
from tortie.agent.view import View
from tortie.datastore.memory import MemoryDatastore
from tortie.datastore.resources import ResourceStore
from tortie.datastore.syncer import InSync, Update
from tortie.ipam.client import IPAM
from tortie.model.loader import load_documents

POOL = """
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pool}
spec: {cidr: 10.244.0.0/16, ipipMode: %s, vxlanMode: %s, natOutgoing: %s}
"""

WEP = """
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: node1-k8s-%s-eth0, namespace: default}
spec: {node: node1, pod: %s, endpoint: eth0, interfaceName: %s,
       ipNetworks: [%s/32], orchestrator: k8s}
"""

LOCAL = LocalNode("node1", IPv4Interface("192.168.49.2/24"), "eth0")


class Cluster:
    def __init__(self) -> None:
        self.store = MemoryDatastore()
        self.res = ResourceStore(self.store)
        self.ipam = IPAM(self.store)
        register_node(self.res, "node1", LOCAL.address)

    def pool(self, ipip: str = "Never", vxlan: str = "Never", nat: bool = True) -> None:
        self.res.apply(load_documents(POOL % (ipip, vxlan, str(nat).lower()), "pool.yaml"))

    def node(self, name: str, ip: str, vxlan: tuple[str, str] | None = None) -> None:
        from ipaddress import IPv4Address

        register_node(
            self.res,
            name,
            IPv4Interface(ip),
            vxlan=(IPv4Address(vxlan[0]), vxlan[1]) if vxlan else None,
        )

    def workload(self, pod: str, interface: str, ip: str) -> None:
        self.res.apply(load_documents(WEP % (pod, pod, interface, ip), "wep.yaml"))

    def view(self) -> View:
        state = ClusterState("node1")
        listing = self.store.list("/tortie/")
        for kv in listing.items:
            state.apply(Update(kv.key, kv.value, kv.mod_revision))
        state.apply(InSync(listing.revision))
        return View(state, LOCAL)
