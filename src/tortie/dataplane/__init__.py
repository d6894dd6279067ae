"""tortie.dataplane: the kernel side of a node (routes, tunl0/IPIP, workload interfaces).

The agent computes desired state and pushes it here; this package programs the kernel and
reports observed state back. It never reads the datastore or IPAM (import-linter enforces it).

Modules, one job each (import the one you need: this package imports nothing on its own, so
the CNI plugin can use the stdlib-only helpers without paying for pyroute2):

- ``routes``: RouteSpec (desired), KernelRoute (observed), RouteOp; DEFAULT_PROTO = 80.
- ``netlink``: the Netlink and Namespaces protocols (the seam), Link, NetlinkError.
- ``kernel_netlink``: Pyroute2Netlink(netns): the real kernel of one namespace; routes, reads,
  links and addresses over ``rtnl`` / ``rtnl_link`` (raw rtnetlink), vxlan/FDB/neighbours over
  pyroute2 (lazy); KernelNamespaces: this machine's namespaces.
- ``fake_netlink``: FakeNetlink, an in-memory kernel for unit tests; ``fake_netns``:
  FakeNamespaces, several of them tied by veths (pod wiring without root).
- ``wiring``: Wiring, a pod's veth, addresses, routes and sysctls (the CNI server's kernel
  side), and the rules of whose namespace and interface it is; ``wiring_check``: CNI CHECK's
  comparison of a pod's kernel with what the wiring builds.
- ``routetable``: RouteTable, Felix-style reconciler (deltas, mark-and-sweep, grace period).
- ``ipip`` / ``ipip_kernel`` / ``ipip_bpf``: the IPIPBackend protocol, the ipip-module and
  tc-BPF backends; ``ipip_choice``: make_ipip_backend(auto|kernel|bpf) above them all.
- ``tunnel``: a tunnel device's own address (tunl0's and vxlan.calico's, one rule).
- ``bpfsys`` (bpf(2) via ctypes), ``bpffs`` (pin filesystem), ``tc`` (filter attach),
  ``tcx`` (tcx link attach, kernel 6.6+), ``bpfhooks`` (what runs on every tc hook, both kinds).
- ``workload``: host-side sysctls/MTU of ``cali*`` interfaces.
- ``vxlan``: VXLANManager: the ``vxlan.calico`` device, remote VTEP FDB/neighbour entries.
- ``nftables`` / ``nft_exec``: NftablesManager: tortie's own nft table (IPIP/VXLAN allowlist,
  anti-spoofing, natOutgoing) on sets and maps, so the rule count never grows; executors over
  libnftables (ctypes) or the ``nft`` CLI.
- ``netns``: doing work inside another network namespace; sysctls there.

BPF C sources live in ``bpf/`` at the repository root (``make -C bpf``).
"""
