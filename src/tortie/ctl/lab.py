"""``tortie lab``: build, inspect, use and remove clusters of namespaces on this host.

Subcommands: ``up``, ``down``, ``status``, ``list``, ``restart``, ``exec``, ``ping``,
``capture``, ``diagram``. Every one
takes ``--name L`` (default: the only lab; ``up`` defaults to ``default``) and ``--root DIR``
(where lab directories live; default ``$TORTIE_LAB_ROOT`` or /run/tortie/labs).

Invariants: handlers only parse, call :mod:`tortie.lab` and print; every failure the user can
fix is a :class:`~tortie.lab.errors.LabError`. ``up`` prints one progress line per step as it
happens. ``--datastore`` of ``lab up`` is the lab's own option: the lab never falls back to
``$TORTIE_DATASTORE`` (that is the user's datastore, not a lab's); without it the lab makes an
SQLite file in its directory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tortie.lab.registry import LabPaths

STALL_ENV = "TORTIE_LAB_STALL_AFTER"  # crash tests only: see tortie.lab.builder.UpSettings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from tortie.lab.topology import MODES, WIRE_PODS

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--name", help="the lab (default: the only lab; for up: 'default')")
    common.add_argument(
        "--root",
        type=Path,
        metavar="DIR",
        help="directory of lab directories (default: $TORTIE_LAB_ROOT or /run/tortie/labs)",
    )
    lab = sub.add_parser("lab", help="clusters of network namespaces on this host")
    lsub = lab.add_subparsers(dest="lab_command", metavar="SUBCOMMAND")
    lsub.required = True

    up = lsub.add_parser("up", parents=[common], help="build a lab")
    up.add_argument("--nodes", type=int, default=2, metavar="N")
    up.add_argument("--subnets", type=int, default=1, metavar="K", help="L2 segments (1..8)")
    up.add_argument("--mode", choices=MODES, default="ipip", help="the pool's encapsulation")
    up.add_argument("--pods-per-node", type=int, default=1, metavar="P")
    up.add_argument("--route-reflectors", type=int, default=0, metavar="R")
    up.add_argument("--tor", action="store_true", help="BIRD 2 as the ToR in the router")
    up.add_argument(
        "--datastore",
        dest="lab_datastore",
        metavar="URL",
        help="the lab's datastore (default: an SQLite file in the lab's directory)",
    )
    up.add_argument(
        "--wire-pods",
        choices=WIRE_PODS,
        default="cni",
        help="cni: through the CNI plugin; manual: Calico's wiring by hand, routed natively",
    )
    up.add_argument(
        "--agents",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="start 'tortie node run' on every node (default: yes with --wire-pods cni)",
    )
    up.add_argument(
        "--agent-cmd",
        metavar="TEMPLATE",
        help="developer: the per-node agent command instead of 'tortie node run' "
        "({python} {name} {ip} {state_dir} {datastore} are filled in)",
    )
    up.add_argument(
        "--nat-outgoing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the pool's natOutgoing (default: yes); without it no table of tortie's "
        "switches connection tracking on",
    )
    up.add_argument("--dry-run", action="store_true", help="print the commands, build nothing")
    up.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    up.set_defaults(func=_up)

    down = lsub.add_parser("down", parents=[common], help="remove a lab (also a crashed one)")
    down.add_argument("-q", "--quiet", action="store_true")
    down.set_defaults(func=_down)

    status = lsub.add_parser("status", parents=[common], help="what the lab is and has")
    status.add_argument("-o", "--output", choices=("text", "json"), default="text")
    status.set_defaults(func=_status)

    lst = lsub.add_parser("list", parents=[common], help="the labs on this host")
    lst.set_defaults(func=_list)

    restart = lsub.add_parser(
        "restart",
        parents=[common],
        help="restart a node's agent (recorded in the lab's state; the dataplane stays)",
    )
    restart.add_argument("node", metavar="NODE")
    restart.add_argument(
        "--agent",
        action="store_true",
        help="restart the node's agent (the default; the only part restarted so far)",
    )
    restart.add_argument("-q", "--quiet", action="store_true")
    restart.set_defaults(func=_restart)

    exe = lsub.add_parser(
        "exec",
        parents=[common],
        help="run a command in a node's or pod's namespace (with the node's environment)",
    )
    exe.add_argument("target", metavar="NODE|POD")
    exe.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    exe.set_defaults(func=_exec)

    ping = lsub.add_parser("ping", parents=[common], help="ping B (a name or address) from A")
    ping.add_argument("source", metavar="A")
    ping.add_argument("dest", metavar="B")
    ping.add_argument("-c", "--count", type=int, default=3)
    ping.set_defaults(func=_ping)

    cap = lsub.add_parser("capture", parents=[common], help="tcpdump lines from a namespace")
    cap.add_argument("target", metavar="NODE|POD")
    cap.add_argument("--iface", metavar="I", help="default: a node's uplink, a pod's eth0")
    cap.add_argument("-c", "--count", type=int, metavar="N", help="stop after N packets")
    cap.add_argument("--timeout", type=float, metavar="S", help="stop after S seconds")
    cap.set_defaults(func=_capture)

    diagram = lsub.add_parser(
        "diagram", parents=[common], help="draw the lab: segments, nodes, pods, blocks, routes"
    )
    diagram.add_argument(
        "-o", "--output", required=True, type=Path, metavar="FILE", help=".svg, .png or .dot"
    )
    diagram.set_defaults(func=_diagram)


def _paths(args: argparse.Namespace) -> LabPaths:
    from tortie.lab.registry import LabPaths, default_root

    return LabPaths(root=args.root or default_root())


def _require_root(what: str) -> None:
    from tortie.lab.errors import NotRootError

    if os.geteuid() != 0:
        raise NotRootError(f"tortie lab {what} needs root (network namespaces); use sudo")


def _printer(quiet: bool) -> tuple[float, Callable[[str], None]]:
    start = time.monotonic()

    def show(line: str) -> None:
        if not quiet:
            print(f"{time.monotonic() - start:6.2f}s  {line}", flush=True)

    return start, show


def _up(args: argparse.Namespace) -> int:
    from tortie.lab.builder import UpSettings, lab_up, plan
    from tortie.lab.errors import LabOptionError
    from tortie.lab.runtime import DEFAULT_AGENT_TEMPLATE
    from tortie.lab.topology import LabOptions, build_topology

    options = LabOptions(
        name=args.name or "default",
        nodes=args.nodes,
        subnets=args.subnets,
        mode=args.mode,
        pods_per_node=args.pods_per_node,
        route_reflectors=args.route_reflectors,
        tor=args.tor,
        datastore=args.lab_datastore or getattr(args, "datastore", None),
        wire_pods=args.wire_pods,
        nat_outgoing=args.nat_outgoing,
        agents=(
            args.agents
            if args.agents is not None
            else args.wire_pods == "cni" or args.agent_cmd is not None
        ),
    )
    if args.dry_run:
        topology = build_topology(options, 1)
        print("# lab id 1 shown; the real id is the first free one on the host")
        print("\n".join(plan(topology)))
        return 0
    stall = os.environ.get(STALL_ENV)
    try:
        stall_after = int(stall) if stall else None
    except ValueError:
        raise LabOptionError(f"${STALL_ENV} must be an integer, got {stall!r}") from None
    settings = UpSettings(
        agent_template=args.agent_cmd or DEFAULT_AGENT_TEMPLATE, stall_after=stall_after
    )
    _, show = _printer(args.quiet)
    state = lab_up(options, _paths(args), show, settings=settings)
    if not args.quiet:
        print(
            f"next: tortie lab status --name {state.name}; tortie lab ping pod1 pod2 "
            f"--name {state.name}; tortie lab down --name {state.name}"
        )
    return 0


def _down(args: argparse.Namespace) -> int:
    from tortie.lab.teardown import lab_down

    _require_root("down")
    paths = _paths(args)
    name = paths.resolve(args.name)
    start, show = _printer(args.quiet)
    lab_down(paths, name, show)
    if not args.quiet:
        print(f"lab {name!r} removed in {time.monotonic() - start:.2f} s")
    return 0


def _status(args: argparse.Namespace) -> int:
    from tortie.lab.ops import open_lab
    from tortie.lab.status import format_status, lab_status

    data = lab_status(open_lab(_paths(args), args.name))
    if args.output == "json":
        print(json.dumps(data, indent=2))
    else:
        print(format_status(data))
    return 0


def _list(args: argparse.Namespace) -> int:
    from tortie.lab.errors import LabError
    from tortie.lab.state import load_state

    paths = _paths(args)
    labs = paths.labs()
    if not labs:
        print(f"no labs under {paths.root}")
        return 0
    print(f"{'NAME':24}  {'ID':>3}  {'PHASE':12}  MODE")
    for name in labs:
        try:
            state = load_state(paths.state_file(name))
            mode = f"{state.options.get('mode')}, {state.options.get('nodes')} nodes"
            print(f"{name:24}  {state.lab_id or '-':>3}  {state.phase:12}  {mode}")
        except (FileNotFoundError, LabError):
            print(f"{name:24}  {'-':>3}  {'no state':12}  (remove with tortie lab down)")
    return 0


def _restart(args: argparse.Namespace) -> int:
    from tortie.lab.agents import restart_agent

    _require_root("restart")
    start, show = _printer(args.quiet)
    record = restart_agent(_paths(args), args.name, args.node, show)
    if not args.quiet:
        took = time.monotonic() - start
        print(f"{args.node}: agent restarted (pid {record.pid}) in {took:.2f} s")
    return 0


def _exec(args: argparse.Namespace) -> int:
    from tortie.lab.errors import LabError
    from tortie.lab.ops import open_lab

    _require_root("exec")
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    lab = open_lab(_paths(args), args.name)
    argv, env = lab.exec_argv(args.target, command)
    sys.stdout.flush()
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as err:
        raise LabError(f"cannot run {argv[0]}: {err} (install util-linux)") from err
    return 127  # not reached


def _ping(args: argparse.Namespace) -> int:
    from tortie.lab.ops import open_lab

    _require_root("ping")
    lab = open_lab(_paths(args), args.name)
    argv = lab.ping_argv(args.source, args.dest, count=args.count)
    _, env = lab.exec_argv(args.source, argv)
    return subprocess.run(argv, env=env, check=False).returncode


def _capture(args: argparse.Namespace) -> int:
    from tortie.lab.capture import Capture
    from tortie.lab.ops import open_lab

    _require_root("capture")
    lab = open_lab(_paths(args), args.name)
    argv = lab.capture_argv(args.target, iface=args.iface, count=args.count)
    _, env = lab.exec_argv(args.target, argv)
    with Capture(argv, env) as cap:
        cap.wait_ready()
        print(cap.stderr[-1], file=sys.stderr, flush=True)
        try:
            for line in cap.lines(args.timeout):
                print(line, flush=True)
        except KeyboardInterrupt:
            pass
    code = cap.returncode
    # Stopped by us (timeout, Ctrl-C): that is success; tcpdump's own failure is not.
    return 0 if code in (0, None, -15, 143) else code


def _diagram(args: argparse.Namespace) -> int:
    from tortie.lab.ops import open_lab
    from tortie.trace.diagram import gather, output_format, to_dot, write_diagram

    _require_root("diagram")
    output_format(args.output)  # refuse a bad suffix before asking the namespaces
    write_diagram(to_dot(gather(open_lab(_paths(args), args.name))), args.output)
    print(f"wrote {args.output}")
    return 0
