"""tortie.agent: the node agent (``tortie node run``).

- :mod:`tortie.agent.run` - start-up and shutdown; :mod:`tortie.agent.loop` - the reconciler.
- :mod:`tortie.agent.cniserver` - the CNI server the plugin asks: its socket
  (:mod:`tortie.agent.cni_transport`), its verbs (:mod:`tortie.agent.cni_verbs`,
  :mod:`tortie.agent.cni_pods`, :mod:`tortie.agent.cni_gc`); the kernel work is
  :mod:`tortie.dataplane.wiring` (this package never talks to the kernel itself:
  import-linter forbids pyroute2 here).
"""
