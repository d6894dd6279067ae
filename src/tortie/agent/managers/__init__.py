"""The node agent's managers, one per concern, each behind :class:`tortie.agent.manager.Manager`.

In the order the loop runs them (:func:`tortie.agent.node.NodeAgent` lists them), because a
later one reads what an earlier one published or programmed in the same pass:

- ``addresses``: this node's IPIP and VXLAN tunnel addresses from IPAM, recorded on its Node;
- ``tunnel``: ``tunl0`` (the kernel ipip module or the tc-BPF backend), with that address;
- ``vxlan``: ``vxlan.calico`` and the remote VTEPs' FDB and neighbour entries;
- ``firewall``: tortie's nftables table (node, pool and workload sets);
- ``bgp``: the BGP speaker (what this node announces, what it learned);
- ``routes``: the route table (:mod:`tortie.agent.desired` computes it, the kernel's
  :class:`~tortie.dataplane.routetable.RouteTable` programs it), through the devices above;
- ``workloads``: the host side of local pods' interfaces (sysctls);
- ``mtu``: the pod MTU file the CNI plugin reads;
- ``ipam_gc``: IPAM's leak collection, every few minutes.

Policy, when it comes, is one more module here and one more line in that list.
"""
