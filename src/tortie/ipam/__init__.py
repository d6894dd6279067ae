"""Block IPAM with Calico's semantics: pools carved into blocks, host affinity, handles.

Problem: give every pod (and every node's tunnel) an address from the IPPools, fast and
locally, from many processes on many nodes at once, with no locks and no double allocation,
and find and reclaim what leaks. Start at :class:`tortie.ipam.client.IPAM`.

Modules, one job each: ``client`` (the API), ``assign`` (auto-assign order, specific
addresses), ``release`` (by handle / address, guarded), ``affinity`` (two-phase block claim
and release), ``block`` (pure block bookkeeping), ``pools`` (pool choice, block carving),
``store`` (typed reads, CAS retry loop), ``view`` (pools, nodes, config, endpoints),
``check`` and ``gc`` (leaks), ``usage`` (``ipam show``), ``clock``, ``errors``, and
``loadgen`` (concurrent load for the benchmark and the multi-process tests).

Invariants and hazards are stated in each module; the stored shapes and key layout are in
:mod:`tortie.model.ipam`.
"""
