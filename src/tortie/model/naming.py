"""The names tortie marks its kernel and datastore state with: a storage format, kept here once.

Problem: the agent is restarted (upgrades, crashes) while pods keep running, and it must then
tell its own kernel state from everyone else's without any memory of having made it. It does
so by names and numbers alone: an interface called ``cali<11 hex>`` is a pod's host side, a
route with protocol 80 is the agent's, the nftables table ``tortie`` is its, ``tunl0`` and
``vxlan.calico`` are its tunnels, the pod's gateway is 169.254.1.1 answered by a host side
whose MAC is ee:ee:ee:ee:ee:ee, IPAM handles say whose an address is. These markers are
written by one version of tortie and read by the next, so they are a storage format: changing
one orphans the kernel state (or addresses) an older agent made, which the new one neither
repairs nor cleans up. They are also Calico's, so a node moved between Calico and tortie
keeps its pods. Hence every one of them is defined here and nowhere else
(``tests/unit/model/test_naming.py`` fails if a module defines one again).

Invariants:
- Calico's rules, as its source has them: the host-side veth name is ``cali`` + the first 11
  hex digits of sha1("<namespace>.<pod>") (``VethNameForWorkload`` in libcalico-go's
  ``lib/backend/k8s/conversion/workload_endpoint_default.go``); route protocol 80 is the
  number Felix marks its routes with (:mod:`tortie.dataplane.routes`); the pod handle is
  ``<network>.<containerID>``, tunnel handles ``ipip-tunnel-addr-<node>`` and
  ``vxlan-tunnel-addr-<node>``; devices ``tunl0``, ``vxlan.calico``, ``vxlan-v6.calico``.
- tortie's own additions: a pod without a pod name (plain CNI) hashes its container ID; an
  attachment on another interface than ``eth0`` hashes ``.<ifname>`` too, so a pod's second
  attachment never takes its first one's name. For ``eth0`` the name is Calico's exactly.
- Stdlib only, no work at import: the CNI plugin (stdlib, per-pod process) imports this.

Hazards: a name that is only a prefix (``cali``) claims everything that starts with it: the
agent treats any ``cali*`` interface as a pod's (as Felix does), so nothing else on a node may
use that prefix. Interface names are at most 15 bytes (IFNAMSIZ - 1): every name made here is.
"""

from __future__ import annotations

# -- interfaces ---------------------------------------------------------------------------------

WORKLOAD_PREFIX = "cali"  # host side of every pod's veth (Felix's InterfacePrefix)
DEFAULT_IFNAME = "eth0"  # the pod side, unless the runtime asks for another (CNI_IFNAME)
TUNNEL_DEVICE = "tunl0"  # IPIP (the kernel module's fallback device, or tortie's placeholder)
VXLAN_DEVICE = "vxlan.calico"  # IPv4 VXLAN
VXLAN_V6_DEVICE = "vxlan-v6.calico"  # IPv6 VXLAN: Calico's name, for when tortie has IPv6
HOST_IFNAME_HEX = 11  # hex digits of sha1 after the prefix: 4 + 11 = 15 bytes, IFNAMSIZ - 1

# -- the pod's link to the host -------------------------------------------------------------------

GATEWAY = "169.254.1.1"  # every pod's gateway: nobody owns it, the host answers by proxy ARP
HOST_MAC = "ee:ee:ee:ee:ee:ee"  # every host side's MAC (the pod's gateway MAC)

# -- routes, firewall, BPF ----------------------------------------------------------------------

ROUTE_PROTOCOL = 80  # rtm_protocol of every route the agent owns (Felix's default)
NFT_TABLE = "tortie"  # the agent's nftables table (family inet): all of it is the agent's
RUN_DIR = "/run/tortie"  # the agent's state, per node: <RUN_DIR>/<node>/
BPF_PIN_SUBDIR = "bpf"  # <node state dir>/bpf: the bpffs directory of the agent's pins
BPF_PROGRAM_DIR_PREFIX = "ipip-"  # <pin dir>/ipip-<sha256(object)[:16]>/: one object's pins
TCX_LINK_PREFIX = "tcx-"  # <pin dir>/tcx-<program>: the pinned tcx link of that program

# -- IPAM handles -------------------------------------------------------------------------------

DEFAULT_POD_NETWORK = "k8s-pod-network"  # Calico's network name in its conflist
IPIP_TUNNEL_HANDLE_PREFIX = "ipip-tunnel-addr-"
VXLAN_TUNNEL_HANDLE_PREFIX = "vxlan-tunnel-addr-"


def is_workload_interface(name: str, prefix: str = WORKLOAD_PREFIX) -> bool:
    """Whether the agent may manage ``name`` for a workload: the prefix and something after it
    (the names tortie's CNI gives, ``cali`` + 11 hex). Never the uplink, ``tunl0``, ``lo``."""
    return name.startswith(prefix) and len(name) > len(prefix)


def host_ifname(container_id: str, ifname: str, pod_namespace: str | None, pod: str | None) -> str:
    """The host side's name: ``cali`` + 11 hex of sha1("<namespace>.<pod>") (Calico's rule).

    Without a pod name the hash is of the container ID. An interface other than ``eth0``
    (a second attachment of one pod) hashes ``.<ifname>`` too, so the two cannot collide.
    """
    import hashlib  # here: the plugin imports this module and rarely needs the name

    basis = f"{pod_namespace or 'default'}.{pod}" if pod else container_id
    if ifname != DEFAULT_IFNAME:
        basis += f".{ifname}"
    return WORKLOAD_PREFIX + hashlib.sha1(basis.encode()).hexdigest()[:HOST_IFNAME_HEX]


def pod_handle(container_id: str, network: str = DEFAULT_POD_NETWORK) -> str:
    """Calico's IPAM handle for a pod's addresses: ``<network>.<containerID>``."""
    return f"{pod_handle_prefix(network)}{container_id}"


def pod_handle_prefix(network: str) -> str:
    """What every pod handle of ``network`` starts with (GC lists them by it)."""
    return f"{network}."
