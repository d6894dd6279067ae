"""tortie.lab: clusters of network namespaces on one host, built, inspected and removed.

Importing this package does no work; import the module you need:

- :mod:`.topology` - the pure description of a lab (names, addresses, pods, pool);
- :mod:`.manifests` - its Calico resources (IPPool, BGPConfiguration, BGPPeer, Node);
- :mod:`.builder` - ``lab up``; :mod:`.teardown` - ``lab down``;
- :mod:`.state` - the write-ahead state file; :mod:`.registry` - lab dirs, ids, locks;
- :mod:`.network` - the underlay steps; :mod:`.reference` - the ideal pod path (Calico's
  wiring by hand, native routes); :mod:`.steps` - steps as data; :mod:`.kernel` - running them;
- :mod:`.runtime` - per-node dirs, environment and the agent seam; :mod:`.cni` - the CNI
  plugin seam; :mod:`.pods` - pod sandboxes and their wiring; :mod:`.seed` - the datastore;
- :mod:`.ops` - targets, ``exec``/``ping``/``capture`` commands; :mod:`.capture` - tcpdump;
  :mod:`.status` - ``lab status``; :mod:`.procs` - our processes and only ours.

The lab drives node agents and the CNI plugin as processes; it never imports tortie.agent or
tortie.cni.
"""
