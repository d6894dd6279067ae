"""tortie: Calico-style pod networking in Python.

Layers (enforced by import-linter, see pyproject.toml), each importing only those below:

    ctl                  CLI (calicoctl-like)
    lab                  lab clusters, demo, trace
    agent | cni          node daemon | CNI plugin (independent of each other)
    ipam | dataplane | bgp
    datastore            sqlite (default), etcd, memory; list+watch syncer
    model                resources (Calico v3 shapes), naming, validation

Nothing here does work at import time.
"""

__version__ = "0.1.0"
