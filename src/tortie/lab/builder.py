"""``lab up``: build a lab from its topology, recording every object before it exists.

Problem: a lab is some 10-100 kernel objects, directories, mounts and processes on a host that
other people use. Building must be fast (well under a second for a few nodes), report
progress, and be undoable after any failure, including ``kill -9`` of the builder itself.

Order, and why:
1. claim the name (``mkdir`` of the lab directory), take the lab's lock, write the first state
   (the builder's PID, a random token, the options) - from here ``lab down`` can clean up;
2. claim a host-wide lab id (kernel names ``tl<id>-...``) and derive the topology;
3. the wire namespace with one bridge per subnet; the router with a leg in each subnet;
4. per node: directories and a bpffs pin directory, the namespace, the uplink into its
   subnet's bridge, address, default route via the router, ip_forward; then the node's
   network keeper (:mod:`.keeper`: the default route back after an uplink flap, as a host's
   network manager does);
5. ``--tor``: BIRD in the router namespace (:mod:`.tor`), ready before any agent dials it;
6. the datastore's cluster resources (pool with the lab's mode, BGP settings) and, when the
   nodes have BGP roles (reflectors, racks for the ToR), their Node resources: written
   *before* the agents start, so no agent ever runs with the wrong role (an agent keeps
   user-set fields when it registers);
7. for an etcd on the host's loopback, the forwarder into the nodes (:mod:`.dsforward`); the
   agents (``tortie node run``, on with the CNI wiring);
8. the pods: a namespace each, wired by the CNI plugin or by hand (``--wire-pods manual``);
9. manual wiring only: native routes between nodes (and on the router across subnets);
   ``--tor``: wait until the ToR has a session with every node and a route to every pod.

Invariants: each object is recorded in the state file before the call that creates it
(:mod:`.state`); a failed step leaves the lab as far as it got, with ``phase: failed`` and
the error in the state, and the message says to run ``tortie lab down``; nothing is created
in the host's root network namespace except the namespaces' own bind mounts.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tortie.lab import dsforward, network, reference, tor
from tortie.lab.cni import require_cni
from tortie.lab.errors import (
    LabBuildError,
    LabError,
    LabExistsError,
    NotAvailableError,
    NotRootError,
)
from tortie.lab.kernel import HostKernel, Kernel
from tortie.lab.manifests import RR_LABEL, lab_writes_nodes, node_manifests
from tortie.lab.pods import create_pods
from tortie.lab.procs import record_for
from tortie.lab.registry import LabPaths, allocate_id, lab_lock
from tortie.lab.runtime import (
    DEFAULT_AGENT_TEMPLATE,
    node_dirs,
    prepare_node_dirs,
    start_node_agents,
)
from tortie.lab.seed import default_datastore, seed_datastore
from tortie.lab.state import Journal, LabState
from tortie.lab.steps import Step, run_steps, shell_lines
from tortie.lab.topology import LabOptions, Topology, build_topology, check_options
from tortie.model.resources import Node, NodeBGPSpec

Progress = Callable[[str], None]
REQUIRED_TOOLS = ("ip", "nsenter")


@dataclass(frozen=True)
class UpSettings:
    agent_template: str = DEFAULT_AGENT_TEMPLATE
    # Test hook for crash tests: stop (sleep forever) right after the n-th state save, so a
    # test can kill -9 the build at a known point. Never set in normal use.
    stall_after: int | None = None


def _quiet(_: str) -> None:
    pass


def preflight(options: LabOptions, host: bool = True) -> None:
    """Everything that can be checked before the first object is made.

    ``host`` False (a substitute kernel, in unit tests) skips the checks about this machine.
    """
    check_options(options)
    dsforward.preflight(options.datastore, host)  # a datastore the nodes cannot reach: refuse
    if host and os.geteuid() != 0:
        raise NotRootError(
            "tortie lab up needs root (it creates network namespaces and mounts); run it with sudo"
        )
    for tool in REQUIRED_TOOLS if host else ():
        if shutil.which(tool) is None:
            raise LabError(f"{tool} not found: install iproute2 and util-linux")
    if options.tor and host and shutil.which("bird") is None:
        raise NotAvailableError("--tor runs BIRD 2 as the ToR: install it (apt-get install bird2)")
    if options.tor:
        tor.hold_time_from_env()  # a bad $TORTIE_BGP_HOLD_TIME fails before anything is made
    if options.wire_pods == "cni":
        require_cni(options.agents)


def check_socket_paths(options: LabOptions, lab_dir: Path) -> None:
    """Refuse a lab whose unix sockets would not fit in ``sun_path`` (107 bytes and a NUL,
    unix(7)), before anything is made. The agents put theirs in the node directories (the CNI
    socket, ExaBGP's helper socket or BIRD's control socket under ``bgp/``), the ToR its
    control socket in the lab directory. Found by the fault suite: under a deep ``--root`` the
    lab came up, pods and all, but no node ran a BGP speaker ("too long for a unix socket
    path" only in the agents' status)."""
    from tortie.bgp.bird import CONTROL_NAME
    from tortie.bgp.exabgp import SOCKET_NAME

    sockets: list[Path] = []
    if options.agents:
        # The longest node name (topology: node1..N); NodeRuntime.agent_socket; the agent's
        # BGP directory (AgentConfig.bgp_dir).
        state_dir = Path(node_dirs(lab_dir, f"node{options.nodes}").state_dir)
        sockets += [state_dir / "cni.sock", state_dir / "bgp" / SOCKET_NAME]
        sockets.append(state_dir / "bgp" / CONTROL_NAME)
    if options.tor:
        sockets.append(tor.tor_paths(lab_dir).control)
    for path in sockets:
        if len(os.fsencode(path)) > tor.MAX_SOCKET_PATH:
            raise LabError(
                f"{path}: too long for a unix socket ({tor.MAX_SOCKET_PATH} bytes at most); "
                "use a shorter --root (or $TORTIE_LAB_ROOT) or --name"
            )


def _stall_hook(settings: UpSettings, progress: Progress) -> Callable[[int], None] | None:
    stall = settings.stall_after
    if stall is None:
        return None

    def hook(saves: int) -> None:
        if saves == stall:
            progress(f"stalled after state save {saves} (test hook)")
            while True:
                time.sleep(3600)

    return hook


def lab_up(
    options: LabOptions,
    paths: LabPaths,
    progress: Progress = _quiet,
    kernel: Kernel | None = None,
    settings: UpSettings | None = None,
) -> LabState:
    """Build the lab ``options`` describe; return its final state."""
    settings = settings or UpSettings()
    preflight(options, host=kernel is None)
    lab_dir = paths.lab_dir(options.name)
    check_socket_paths(options, lab_dir)
    kernel = kernel or HostKernel(paths.netns_dir)
    paths.root.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(lab_dir, 0o700)
    except FileExistsError:
        raise LabExistsError(
            f"lab {options.name!r} already exists ({lab_dir}); remove it with "
            f"'tortie lab down --name {options.name}' or choose another --name"
        ) from None
    started = time.monotonic()
    with lab_lock(lab_dir):
        state = LabState(
            name=options.name,
            lab_dir=str(lab_dir),
            token=secrets.token_hex(16),
            options=options.to_json(),
        )
        state.builder = record_for(os.getpid(), "builder")
        journal = Journal(state, after_save=_stall_hook(settings, progress))
        journal.save()
        try:
            _build(
                journal,
                options=options,
                paths=paths,
                kernel=kernel,
                progress=progress,
                settings=settings,
            )
        except BaseException as err:
            journal.set(phase="failed", error=str(err) or type(err).__name__)
            if isinstance(err, LabError):
                raise LabBuildError(
                    f"lab up {options.name!r} failed: {err}\nWhat was built is recorded in "
                    f"{journal.path}; remove it with 'tortie lab down --name {options.name}'"
                ) from err
            raise
        state.timings["total"] = round(time.monotonic() - started, 3)
        journal.set(phase="up")
    progress(f"lab {options.name!r} is up in {state.timings['total']:.2f} s")
    return state


def _build(
    journal: Journal,
    *,
    options: LabOptions,
    paths: LabPaths,
    kernel: Kernel,
    progress: Progress,
    settings: UpSettings,
) -> None:
    state = journal.state
    lab_id, link = allocate_id(paths, Path(state.lab_dir))
    journal.set(lab_id=lab_id, id_link=str(link))
    topology = build_topology(options, lab_id)
    for warning in topology.warnings:
        progress(f"warning: {warning}")
    url = options.datastore or default_datastore(state.lab_dir)
    journal.set(datastore=url, datastore_is_ours=options.datastore is None)

    def phase(name: str, fn: Callable[[], str]) -> None:
        t0 = time.monotonic()
        line = fn()
        state.timings[name] = round(time.monotonic() - t0, 3)
        if line:
            progress(f"{line} ({state.timings[name] * 1000:.0f} ms)")

    phase("wire", lambda: _wire(kernel, journal, topology))
    phase("router", lambda: _router(kernel, journal, topology))
    phase("nodes", lambda: _nodes(kernel, journal, topology, progress))
    if isinstance(kernel, HostKernel):  # real namespaces: each node gets its network manager
        phase("keepers", lambda: _keepers(journal, topology, progress))
    if topology.router.tor:
        phase("tor", lambda: _tor(journal, topology, paths))
    phase("datastore", lambda: _datastore(journal, topology))
    phase(
        "agents",
        lambda: _agents(journal, topology, progress, options.agents, settings.agent_template),
    )
    phase("pods", lambda: _pods(kernel, journal, topology, progress))
    if options.wire_pods == "manual":
        phase("routes", lambda: _routes(kernel, topology))
    if topology.router.tor:
        phase("tor-converged", lambda: _tor_converged(journal, topology, progress))


def _new_namespace(kernel: Kernel, journal: Journal, name: str) -> None:
    journal.record_namespace(name)
    kernel.netns_add(name)
    run_steps(kernel, network.namespace_steps(name))


def _wire(kernel: Kernel, journal: Journal, topology: Topology) -> str:
    _new_namespace(kernel, journal, topology.wire_netns)
    journal.record_links(network.wire_links(topology))
    run_steps(kernel, network.wire_steps(topology))
    bridges = ", ".join(f"{s.bridge} ({s.network})" for s in topology.subnets)
    return f"wire: namespace {topology.wire_netns}, bridges {bridges}"


def _router(kernel: Kernel, journal: Journal, topology: Topology) -> str:
    _new_namespace(kernel, journal, topology.router.netns)
    journal.record_links(network.router_links(topology))
    run_steps(kernel, network.router_steps(topology))
    legs = ", ".join(f"{s.router_ifname} {s.gateway}" for s in topology.subnets)
    return f"router: namespace {topology.router.netns}, {legs}"


def _nodes(kernel: Kernel, journal: Journal, topology: Topology, progress: Progress) -> str:
    for node in topology.nodes:
        prepare_node_dirs(kernel, journal, node.name)
        _new_namespace(kernel, journal, node.netns)
    journal.record_links(network.node_links(topology))
    run_steps(kernel, network.node_steps(topology))
    for node in topology.nodes:
        progress(
            f"{node.name}: namespace {node.netns}, {node.uplink} {node.address} "
            f"via {node.gateway} (subnet {node.subnet})"
        )
    return f"nodes: {len(topology.nodes)}"


def _keepers(journal: Journal, topology: Topology, progress: Progress) -> str:
    from tortie.lab.keeper import start_keepers

    started = start_keepers(journal, topology, progress)
    return f"keepers: {len(started)} (each node's default route back after a flap)"


def _tor(journal: Journal, topology: Topology, paths: LabPaths) -> str:
    hold = tor.hold_time_from_env()
    record = tor.start_tor(journal, topology, hold_time=hold, netns_dir=paths.netns_dir)
    return (
        f"tor: BIRD pid {record.pid} in {topology.router.netns}, AS {topology.router.tor_as}, "
        f"next hop {tor.next_hop_policy(topology.mode)}, hold time {hold} s "
        f"({' '.join(tor.birdc_argv(journal.state.lab_dir, 'show', 'route'))})"
    )


def _tor_converged(journal: Journal, topology: Topology, progress: Progress) -> str:
    from ipaddress import IPv4Address

    ips = [IPv4Address(p.ip) for p in journal.state.pods.values() if p.ip]
    done, line = tor.wait_converged(tor.tor_paths(journal.state.lab_dir).control, topology, ips)
    if not done:
        progress(f"warning: the ToR is not converged after {tor.CONVERGE_TIMEOUT:.0f} s")
    return line


def _datastore(journal: Journal, topology: Topology) -> str:
    written = seed_datastore(journal, topology)
    if lab_writes_nodes(topology):
        written += write_nodes(journal, topology)
    what = ", ".join(written) if written else "already present"
    return f"datastore: {journal.state.datastore} ({what})"


def write_nodes(journal: Journal, topology: Topology) -> list[str]:
    """Write each node's Node resource with its BGP role, before its agent starts.

    Merged into an existing Node (a shared datastore, a re-run): the lab's labels are added,
    the address and reflector cluster ID set, everything else kept; each write is a
    compare-and-swap on the revision read, retried on conflict. Hazard: in a datastore the
    lab does not own these Nodes stay after ``down``, like the ones agents register.
    """
    from tortie.datastore.api import DatastoreError
    from tortie.datastore.factory import open_datastore
    from tortie.datastore.resources import ResourceConflictError, ResourceStore
    from tortie.model.resources import Node

    url = journal.state.datastore
    assert url is not None
    try:
        store = open_datastore(url)
    except DatastoreError as err:
        raise LabBuildError(f"datastore {url}: {err}") from err
    written = []
    try:
        rs = ResourceStore(store)
        for wanted in node_manifests(topology):
            for attempt in range(10):
                current = rs.get(Node, wanted.name)
                try:
                    rs.apply([wanted if current is None else _merge_node(current, wanted)])
                    break
                except ResourceConflictError:
                    if attempt == 9:
                        raise
            written.append(f"Node/{wanted.name}")
    except DatastoreError as err:
        raise LabBuildError(f"datastore {url}: {err}") from err
    finally:
        store.close()
    return written


def _merge_node(current: Node, wanted: Node) -> Node:
    """``current`` (with its revision: the write is a CAS) given ``wanted``'s labels, address
    and reflector role; the reflector label goes when the node is no reflector here."""
    labels = {**current.metadata.labels, **wanted.metadata.labels}
    if RR_LABEL not in wanted.metadata.labels:
        labels.pop(RR_LABEL, None)
    want = wanted.spec.bgp or NodeBGPSpec()
    bgp = (current.spec.bgp or NodeBGPSpec()).model_copy(
        update={
            "ipv4_address": want.ipv4_address,
            "route_reflector_cluster_id": want.route_reflector_cluster_id,
        }
    )
    return current.with_metadata(labels=labels).with_spec(bgp=bgp)


def _agents(
    journal: Journal, topology: Topology, progress: Progress, enabled: bool, template: str
) -> str:
    started = start_node_agents(topology, journal, progress, enabled=enabled, template=template)
    return f"agents: {len(started)} started" if started else ""


def _pods(kernel: Kernel, journal: Journal, topology: Topology, progress: Progress) -> str:
    records = create_pods(kernel, journal, topology, progress)
    return f"pods: {len(records)} ({topology.options.wire_pods} wiring)"


def _routes(kernel: Kernel, topology: Topology) -> str:
    run_steps(kernel, reference.route_steps(topology))
    return f"routes: native, static (manual wiring): {len(topology.nodes)} blocks"


def plan(topology: Topology) -> list[str]:
    """The shell commands ``lab up --wire-pods manual`` runs for ``topology`` (``--dry-run``)."""
    steps: list[Step] = [
        *network.wire_steps(topology),
        *network.router_steps(topology),
        *network.node_steps(topology),
    ]
    for pod in topology.pods:
        steps += reference.topology_pod_steps(topology, pod)
    steps += reference.route_steps(topology)
    setup: list[Step] = []
    for ns in topology.namespaces():
        setup += network.namespace_steps(ns)
    return [f"ip netns add {ns}" for ns in topology.namespaces()] + shell_lines([*setup, *steps])
