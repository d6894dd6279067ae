"""The lab's ToR: BIRD 2 in the router namespace, a real BGP router for every rack.

Problem: in BGP mode (pool ``ipipMode: Never``) pod packets leave a node with pod addresses
on the wire. Between two subnets they go through the router, which knows only the node
subnets: without pod routes it sends them to its default route, or drops them (the seed's
fourth drawback: "the gateway must learn the pod routes"). ``--tor`` makes the router learn
them the way a data-centre fabric does: BIRD 2 in the router namespace peers with every node,
learns every pod block, installs it in the router's kernel, and passes the other racks'
blocks on to the nodes.

Choices (what Calico users do to "peer with the ToR"):

- **eBGP, AS per ToR.** The ToR is AS :data:`~tortie.lab.topology.TOR_AS` (64513), the nodes
  keep Calico's default 64512. The node-to-node mesh is off; each rack (subnet) has a BGPPeer
  ``rack-<s>-tor`` with ``nodeSelector: rack == 'rack-<s>'`` and ``peerIP`` the router's
  address in that subnet (:mod:`tortie.lab.manifests`). One BIRD protocol per node, named
  after it (``node1``...), so ``birdc show protocols`` reads like the node list.
- **as-override on the ToR.** Every node is in AS 64512, so a route from node1 reaching node3
  carries 64512 in its AS path, and a BGP speaker drops routes carrying its own AS (BIRD
  reflectors do; ExaBGP does not check). Switches peering with Calico clusters use
  ``as-override``; BIRD has no such knob, so the export filter deletes the nodes' AS from the
  path (BIRD then prepends 64513). The nodes need nothing (Calico's alternative,
  ``numAllowedLocalASNumbers`` on the node, is not supported by tortie).
- **Next hop.** BGP mode: BIRD's eBGP default, i.e. its own address on the receiving node's
  leg, except for a route whose next hop is on that very segment (a third-party next hop,
  RFC 4271 5.1.3): node2 reaches node1's block directly, node3 (other subnet) through
  192.168.50.1, so the agent programs ``<block> via <router> dev eth0``. In the encapsulating
  modes (ipip, crosssubnet) the tunnel must end on the node that owns the block, never on a
  router that would not decapsulate: ``next hop keep`` passes the owner's address through. In
  vxlan mode the agents route from the datastore anyway (keep as well).
- **A real router.** The kernel protocol *exports* BGP routes into the router's main table
  (``proto bird``), unlike the nodes' BIRD, which never touches its kernel. Imports accept
  only prefixes inside the pod pool, so no node can inject a default route.
- **The nodes dial.** BIRD is passive: tortie's rule between its own speakers is that the
  higher address dials, and the router's ``.1`` is the lowest on its segment.
- **Timers.** ``connect delay time 1``, ``connect retry time 2`` and ``error wait time 1, 10``
  (BIRD's defaults would leave a peer that hiccupped unconnected for a minute); hold time
  ``$TORTIE_BGP_HOLD_TIME`` when set (what the agents use too), else Calico's 90 s; keepalive a
  third of it; graceful restart on (a speaker that restarts keeps its routes at the ToR).

Invariants: the config depends only on the topology, the hold time and the mode; the BIRD
process is recorded (role ``tor``, PID, start time, command line) the moment its PID exists
and carries the lab's token, so ``lab down`` stops exactly it; its files (config, control
socket, log) live in ``<lab dir>/tor/`` and go with the lab directory.

Hazards: the control socket path must fit a unix socket address (107 bytes): a very deep
``--root`` is refused with a message. The ToR's next-hop policy is chosen for the lab's
mode at ``up``: a live pool change from an encapsulating mode to ``Never`` leaves it on
``next hop keep`` (same-subnet traffic keeps working, cross-subnet BGP-mode traffic does
not), as a network team would have to change its ToR too.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Literal

from tortie.bgp.bird import BirdControl, BirdError, parse_bgp_routes, parse_protocols
from tortie.lab.errors import LabBuildError, LabOptionError
from tortie.lab.procs import TOKEN_ENV, record_for
from tortie.lab.state import Journal, ProcessRecord
from tortie.lab.topology import Mode, NodeSpec, Topology

Progress = Callable[[str], None]
NextHopPolicy = Literal["self", "keep"]

HOLD_TIME_ENV = "TORTIE_BGP_HOLD_TIME"
DEFAULT_HOLD_TIME = 90  # Calico's (and tortie's agents') default
ROLE = "tor"
TOR_DIR = "tor"
READY_TIMEOUT = 10.0
CONVERGE_TIMEOUT = 30.0
MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class TorPaths:
    dir: Path
    config: Path
    control: Path
    log: Path


def tor_paths(lab_dir: str | os.PathLike[str]) -> TorPaths:
    base = Path(lab_dir) / TOR_DIR
    return TorPaths(base, base / "bird.conf", base / "bird.ctl", base / "bird.log")


def next_hop_policy(mode: Mode) -> NextHopPolicy:
    """``self`` (BIRD's eBGP default: our address unless third-party) in BGP mode; ``keep``
    where packets are tunnelled to the block's owner (see the module docstring)."""
    return "self" if mode == "bgp" else "keep"


def hold_time_from_env(environ: Mapping[str, str] | None = None) -> int:
    """The ToR's hold time: ``$TORTIE_BGP_HOLD_TIME`` (0, or 3..65535) or 90."""
    env = os.environ if environ is None else environ
    text = env.get(HOLD_TIME_ENV, "").strip()
    if not text:
        return DEFAULT_HOLD_TIME
    try:
        value = int(text)
    except ValueError:
        raise LabOptionError(f"${HOLD_TIME_ENV} must be an integer, got {text!r}") from None
    if value != 0 and not 3 <= value <= 65535:
        raise LabOptionError(f"${HOLD_TIME_ENV} must be 0 or 3..65535 (BGP), got {value}")
    return value


def protocol_name(node: NodeSpec) -> str:
    """The ToR's BIRD protocol for ``node``: its name, in BIRD's identifier alphabet."""
    return node.name.replace("-", "_")


def render_config(topology: Topology, hold_time: int = DEFAULT_HOLD_TIME) -> str:
    """BIRD 2's configuration for the lab's ToR."""
    router = topology.router
    node_as = sorted({n.as_number for n in topology.nodes})
    policy = next_hop_policy(topology.mode)
    first = topology.subnets[0]
    lines = [
        f"# Generated by tortie lab for lab {topology.name!r}: the ToR router in namespace "
        f"{router.netns}.",
        f"router id {first.gateway};",
        'timeformat protocol "%s";',
        "log stderr { info, remote, warning, error, auth, fatal, bug };",
        "",
        "protocol device { scan time 10; }",
        "",
        "# A real router: the pod routes learned from the nodes go into this namespace's kernel.",
        "protocol kernel tor_kernel {",
        "    ipv4 { import none; export where source = RTS_BGP; };",
        "    scan time 10;",
        "}",
        "",
        "# From the nodes: pod space only (no node can inject a default route).",
        "filter tor_from_nodes {",
        f"    if net ~ [ {topology.pool.cidr}+ ] then accept;",
        "    reject;",
        "}",
        "",
        "# To the nodes: learned pod routes, with the nodes' own AS taken out of the path",
        "# (as-override: every node is in the same AS and would drop them as a loop).",
        "filter tor_to_nodes {",
        "    if source != RTS_BGP then reject;",
    ]
    lines += [f"    bgp_path.delete({asn});" for asn in node_as]
    lines += [
        "    accept;",
        "}",
        "",
        "template bgp tor_node {",
        f"    local as {router.tor_as};",
        "    passive on;",
        "    connect delay time 1;",
        "    connect retry time 2;",
        "    error wait time 1, 10;",
        f"    hold time {hold_time};",
    ]
    if hold_time:
        lines.append(f"    keepalive time {max(1, hold_time // 3)};")
    lines += [
        "    graceful restart on;",
        "    ipv4 {",
        "        import filter tor_from_nodes;",
        "        export filter tor_to_nodes;",
    ]
    if policy == "keep":
        lines.append("        next hop keep;  # tunnels end on the block's owner")
    else:
        lines.append("        # next hop: our address, or the owner's on its own segment")
    lines += ["    };", "}"]
    for node in topology.nodes:
        subnet = topology.subnet(node.subnet)
        lines += [
            "",
            f"protocol bgp {protocol_name(node)} from tor_node {{",
            f'    description "{node.name}, {node.rack}";',
            f"    local {subnet.gateway} as {router.tor_as};",
            f"    neighbor {node.ip} as {node.as_number};",
            "}",
        ]
    return "\n".join(lines) + "\n"


def check_config(path: Path, bird: str = "bird") -> None:
    """``bird -p -c PATH``: parse the config and exit; raise with BIRD's message if bad."""
    proc = subprocess.run(
        [bird, "-p", "-c", str(path)], capture_output=True, text=True, check=False, timeout=30
    )
    if proc.returncode != 0:
        raise LabBuildError(f"BIRD rejects {path}: {(proc.stderr or proc.stdout).strip()}")


def birdc_argv(lab_dir: str | os.PathLike[str], *command: str) -> list[str]:
    """``birdc`` talking to the lab's ToR (the control socket works from any namespace)."""
    return ["birdc", "-s", str(tor_paths(lab_dir).control), *command]


def start_tor(
    journal: Journal,
    topology: Topology,
    *,
    hold_time: int,
    bird: str = "bird",
    netns_dir: Path = Path("/run/netns"),
) -> ProcessRecord:
    """Write the config, check it, start BIRD in the router namespace, record it, and wait
    until its control socket answers."""
    state = journal.state
    paths = tor_paths(state.lab_dir)
    if len(str(paths.control)) > MAX_SOCKET_PATH:
        raise LabBuildError(
            f"{paths.control}: too long for a unix socket ({MAX_SOCKET_PATH} bytes at most); "
            "use a shorter --root"
        )
    journal.record_dir(paths.dir)
    paths.dir.mkdir(mode=0o700, exist_ok=True)
    tmp = paths.config.with_name(f".{paths.config.name}.tmp")
    tmp.write_text(render_config(topology, hold_time))
    tmp.chmod(0o600)
    tmp.replace(paths.config)
    check_config(paths.config, bird)
    argv = (bird, "-f", "-c", str(paths.config), "-s", str(paths.control))
    env = {**os.environ, TOKEN_ENV: state.token, "TORTIE_LAB": state.name}
    with open(paths.log, "ab") as out:
        proc = subprocess.Popen(
            ["nsenter", f"--net={netns_dir / topology.router.netns}", "--", *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    record = record_for(proc.pid, ROLE, log=str(paths.log), argv=argv)
    if record is None:
        proc.wait()
        raise LabBuildError(f"BIRD (the ToR) exited at once; see {paths.log}:\n{_tail(paths.log)}")
    journal.record_process(record)
    _wait_ready(proc, paths)
    return record


def _wait_ready(proc: subprocess.Popen[bytes], paths: TorPaths) -> None:
    control = BirdControl(paths.control, timeout=2.0)
    deadline = time.monotonic() + READY_TIMEOUT
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LabBuildError(
                    f"BIRD (the ToR) exited with status {proc.returncode}; see {paths.log}:\n"
                    + _tail(paths.log)
                )
            with contextlib.suppress(BirdError):
                control.request("show status")
                return
            time.sleep(0.05)
    finally:
        control.close()
    raise LabBuildError(f"BIRD (the ToR) did not answer on {paths.control}; see {paths.log}")


@dataclass(frozen=True)
class TorView:
    """What the ToR knows: its sessions by node and the pod routes it learned."""

    sessions: dict[str, tuple[str, str]]  # protocol (node) -> (state, info)
    routes: dict[IPv4Network, list[IPv4Address]]  # prefix -> BGP next hops

    @property
    def established(self) -> list[str]:
        return sorted(n for n, (_, info) in self.sessions.items() if info == "Established")

    def covers(self, address: IPv4Address) -> bool:
        return any(address in prefix for prefix in self.routes)


def read_tor(control_path: Path) -> TorView:
    """Ask the ToR's BIRD (``show protocols``, ``show route ... all``) over its socket."""
    control = BirdControl(control_path, timeout=5.0)
    try:
        protocols = parse_protocols(control.request("show protocols"))
        routes = parse_bgp_routes(control.request("show route where source = RTS_BGP all"))
    finally:
        control.close()
    sessions = {r.name: (r.state, r.info) for r in protocols if r.proto == "BGP"}
    learned: dict[IPv4Network, list[IPv4Address]] = {}
    for items in routes.values():
        for prefix, hop in items:
            learned.setdefault(prefix, []).append(hop)
    return TorView(sessions, learned)


def wait_converged(
    control_path: Path,
    topology: Topology,
    pod_ips: Iterable[IPv4Address],
    timeout: float = CONVERGE_TIMEOUT,
) -> tuple[bool, str]:
    """Until every node's session is Established and every pod address is inside a route
    the ToR learned; returns (done, a summary line)."""
    wanted = {protocol_name(n) for n in topology.nodes}
    ips = list(pod_ips)
    deadline = time.monotonic() + timeout
    view = TorView({}, {})
    while True:
        with contextlib.suppress(BirdError):
            view = read_tor(control_path)
        up = set(view.established) & wanted
        covered = [ip for ip in ips if view.covers(ip)]
        done = up == wanted and len(covered) == len(ips)
        if done or time.monotonic() >= deadline:
            line = (
                f"tor: AS {topology.router.tor_as}, {len(up)}/{len(wanted)} sessions "
                f"established, {len(view.routes)} pod route(s) learned, "
                f"{len(covered)}/{len(ips)} pods reachable through it"
            )
            return done, line
        time.sleep(0.1)


def _tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as err:
        return f"(cannot read: {err})"
