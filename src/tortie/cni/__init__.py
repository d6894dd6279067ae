"""tortie.cni: the CNI plugins a container runtime runs, and their installation.

- :mod:`tortie.cni.plugin` - the ``tortie`` plugin: a stdlib-only process per pod and verb
  that asks the node agent's CNI server (:mod:`tortie.agent.cniserver`) to do the work.
- :mod:`tortie.cni.invocation`, :mod:`tortie.cni.config`, :mod:`tortie.cni.spec` - reading
  and validating a call; CNI versions, errors and result shapes.
- :mod:`tortie.cni.client` - the socket to the agent.
- :mod:`tortie.cni.ipam_plugin` - ``tortie-ipam``, tortie's IPAM for other plugins.
- :mod:`tortie.cni.install` - launchers and the conflist (``tortie install-cni``).

Importing this package does no work; the plugin's modules import nothing outside the
standard library (see each module for why).
"""
