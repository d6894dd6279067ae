"""tortie.trace: a packet's journey through a live lab, and a picture of the lab, from its kernels.

Importing this package does no work; import the module you need:

- :mod:`.run` - ``tortie trace``: resolves the endpoints, walks request and reply, probes;
- :mod:`.model` - the record (packets, evidence, hops, journeys); :mod:`.parse` - tool output;
- :mod:`.kernel` - asking one namespace (``ip``/``nft``/``tc``/``bpftool``, cached, read-only);
- :mod:`.places` - who is where (namespaces, address owners);
- :mod:`.walk` - the journey, hop by hop; :mod:`.hop` and :mod:`.tunnel` - its hop state and
  its tunnels (IPIP, VXLAN);
- :mod:`.wire` and :mod:`.capture` - ``--capture``: the real probe next to the prediction;
- :mod:`.text` - the words; :mod:`.diagram` - ``tortie lab diagram`` (graphviz).

Layering: ``ctl`` > ``trace`` > ``lab``. The trace reads a lab (its topology, its state file,
its namespaces through :mod:`tortie.lab.ops`) and never changes it; the lab never imports the
trace (import-linter holds both, see ``pyproject.toml``).
"""
