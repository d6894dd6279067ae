"""tortie.bgp: BGP route distribution between nodes (Calico's BIRD role), without the kernel.

The agent decides, the speakers speak, the agent programs the kernel:

- :mod:`tortie.bgp.peering` turns Nodes, BGPConfiguration and BGPPeers into this node's
  :class:`~tortie.bgp.types.SpeakerConfig` by Calico's rules (mesh, reflectors, global and
  node-specific peers). Pure.
- :mod:`tortie.bgp.exabgp` runs ExaBGP on an ordinary node; :mod:`tortie.bgp.bird` runs BIRD 2
  on a route reflector. Both implement :class:`~tortie.bgp.types.Speaker`: ``start``,
  ``set_announced``, ``update_config``, ``stop``; learned routes, peer states and health come
  back as events on a callback.
- :mod:`tortie.bgp.status` reads the live speaker for ``tortie node status``.

Layering: this package imports only :mod:`tortie.model` and :mod:`tortie.errors` (never the
datastore, IPAM, the dataplane or the agent). Nothing here runs at import time.
"""
