"""The Calico v3 resources that describe a lab: IPPool, BGPConfiguration, BGPPeer, Node.

Problem: the lab's datastore must hold what a Calico install would (the default pool with the
lab's encapsulation mode, the BGP settings), and the Nodes the agents will register must agree
with the topology (address, route-reflector role). Building them through
:mod:`tortie.model.resources` means every manifest the lab writes or prints is validated by the
same code that validates a user's ``tortie apply``.

BGP shapes (Calico's documented recipes):

- default: the node-to-node mesh, AS 64512 everywhere.
- ``--route-reflectors R``: nodes 1..R carry ``bgp.routeReflectorClusterID`` (244.0.0.1) and
  the label ``route-reflector: "true"``; the mesh is off; one BGPPeer
  ``peer-with-route-reflectors`` {nodeSelector ``all()``, peerSelector
  ``route-reflector == 'true'``}. :mod:`tortie.bgp.peering` turns that into client -> reflector
  sessions (shown as ``route reflector`` on the clients) and the reverse ``node specific``
  sessions on the reflectors (which are route-reflector clients of theirs).
- ``--tor``: the mesh is off and each rack (subnet) has a node specific BGPPeer
  ``rack-<s>-tor`` {nodeSelector ``rack == 'rack-<s>'``, peerIP = the router's address in that
  subnet, asNumber 64513}, Calico's "per-node peer" example; every node carries its
  ``rack`` label.

Invariants: the output depends only on the topology; ``cluster_manifests`` is what ``lab up``
writes to the datastore; ``node_manifest`` is what an agent of that node registers, plus the
role fields an agent never sets itself (reflector cluster ID, labels). When
:func:`lab_writes_nodes` says so, the lab writes those Nodes *before* the agents start (an
agent keeps user-set fields when it registers, :mod:`tortie.agent.registration`), so no agent
ever runs with the wrong role: a reflector starts BIRD from its first pass, and every node's
first peering already sees the ToR BGPPeers' selectors match.
"""

from __future__ import annotations

from typing import Any

from tortie.lab.topology import RACK_LABEL, RR_CLUSTER_ID, NodeSpec, Topology
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
    # With route reflectors or a ToR the full mesh is switched off, as Calico's guides do.
    return BGPConfiguration.from_document(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "BGPConfiguration",
            "metadata": {"name": "default"},
            "spec": {
                "logSeverityScreen": "Info",
                "nodeToNodeMeshEnabled": not (
                    topology.options.route_reflectors or topology.options.tor
                ),
                "asNumber": topology.nodes[0].as_number,
            },
        }
    )


def peer_with_route_reflectors() -> BGPPeer:
    """Calico's documented recipe: every node peers with the nodes labelled as reflectors."""
    return BGPPeer.from_document(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "BGPPeer",
            "metadata": {"name": "peer-with-route-reflectors"},
            "spec": {"nodeSelector": "all()", "peerSelector": f"{RR_LABEL} == 'true'"},
        }
    )


def mesh_off() -> BGPConfiguration:
    """A BGPConfiguration ``default`` with the node-to-node mesh switched off."""
    return BGPConfiguration.from_document(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "BGPConfiguration",
            "metadata": {"name": "default"},
            "spec": {"nodeToNodeMeshEnabled": False},
        }
    )


def bgp_peers(topology: Topology) -> list[BGPPeer]:
    peers = []
    if topology.options.route_reflectors:
        peers.append(peer_with_route_reflectors())
    if topology.router.tor:
        peers += [tor_peer(topology, s.index) for s in topology.subnets]
    return peers


def tor_peer(topology: Topology, subnet: int) -> BGPPeer:
    """The BGPPeer from the nodes of rack ``subnet`` to the ToR's address in that subnet."""
    s = topology.subnet(subnet)
    return BGPPeer.from_document(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "BGPPeer",
            "metadata": {"name": f"{s.rack}-tor"},
            "spec": {
                "nodeSelector": f"{RACK_LABEL} == '{s.rack}'",
                "peerIP": str(s.gateway),
                "asNumber": topology.router.tor_as,
            },
        }
    )


def node_manifest(topology: Topology, node: NodeSpec) -> Node:
    labels = {
        "kubernetes.io/hostname": node.name,
        LAB_LABEL: topology.name,
        RACK_LABEL: node.rack,
    }
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


def lab_writes_nodes(topology: Topology) -> bool:
    """Whether ``lab up`` writes the Nodes before starting the agents: when they carry a role
    an agent does not set (a reflector cluster ID, the rack label the ToR's BGPPeers select)."""
    return bool(topology.options.route_reflectors or topology.router.tor)


def node_manifests(topology: Topology) -> list[Node]:
    return [node_manifest(topology, n) for n in topology.nodes]


def all_manifests(topology: Topology) -> list[Resource]:
    return [*cluster_manifests(topology), *(node_manifest(topology, n) for n in topology.nodes)]
