"""The Calico v3 resources that describe a lab: IPPool, BGPConfiguration, BGPPeer, Node.

Problem: the lab's datastore must hold what a Calico install would (the default pool with the
lab's encapsulation mode, the BGP settings), and the Nodes the agents will register must agree
with the topology (address, route-reflector role). Building them through
:mod:`tortie.model.resources` means every manifest the lab writes or prints is validated by the
same code that validates a user's ``tortie apply``.

Invariants: the output depends only on the topology; ``cluster_manifests`` is what ``lab up``
writes to the datastore; ``node_manifest`` is what an agent of that node should register (the
agent does the registering: the lab only writes Nodes when it starts agents).
"""

from __future__ import annotations

from typing import Any

from tortie.lab.topology import RR_CLUSTER_ID, NodeSpec, Topology
from tortie.model.resources import BGPConfiguration, BGPPeer, IPPool, Node, Resource

RR_LABEL = "route-reflector"
LAB_LABEL = "tortie.dev/lab"


def ippool(topology: Topology) -> IPPool:
    pool = topology.pool
    return IPPool.from_document(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "IPPool",
            "metadata": {"name": pool.name},
            "spec": {
                "cidr": str(pool.cidr),
                "blockSize": pool.block_size,
                "ipipMode": pool.ipip_mode,
                "vxlanMode": pool.vxlan_mode,
                "natOutgoing": pool.nat_outgoing,
                "nodeSelector": "all()",
            },
        }
    )


def bgp_configuration(topology: Topology) -> BGPConfiguration:
    # With route reflectors the full mesh is switched off, as Calico's RR guide does.
    return BGPConfiguration.from_document(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "BGPConfiguration",
            "metadata": {"name": "default"},
            "spec": {
                "logSeverityScreen": "Info",
                "nodeToNodeMeshEnabled": topology.options.route_reflectors == 0,
                "asNumber": topology.nodes[0].as_number,
            },
        }
    )


def bgp_peers(topology: Topology) -> list[BGPPeer]:
    if topology.options.route_reflectors == 0:
        return []
    return [
        BGPPeer.from_document(
            {
                "apiVersion": "projectcalico.org/v3",
                "kind": "BGPPeer",
                "metadata": {"name": "peer-with-route-reflectors"},
                "spec": {"nodeSelector": "all()", "peerSelector": f"{RR_LABEL} == 'true'"},
            }
        )
    ]


def node_manifest(topology: Topology, node: NodeSpec) -> Node:
    labels = {"kubernetes.io/hostname": node.name, LAB_LABEL: topology.name}
    bgp: dict[str, Any] = {"ipv4Address": str(node.address)}
    if node.route_reflector:
        labels[RR_LABEL] = "true"
        bgp["routeReflectorClusterID"] = RR_CLUSTER_ID
    return Node.from_document(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "Node",
            "metadata": {"name": node.name, "labels": labels},
            "spec": {
                "bgp": bgp,
                "orchRefs": [{"orchestrator": "k8s", "nodeName": node.name}],
                "addresses": [{"address": str(node.ip), "type": "InternalIP"}],
            },
        }
    )


def cluster_manifests(topology: Topology) -> list[Resource]:
    """What ``lab up`` writes to the datastore: the pool and the BGP settings."""
    return [ippool(topology), bgp_configuration(topology), *bgp_peers(topology)]


def all_manifests(topology: Topology) -> list[Resource]:
    return [*cluster_manifests(topology), *(node_manifest(topology, n) for n in topology.nodes)]
