"""``tortie node run|status|bpf``: the node agent's command line, and what it set up.

``node status`` reads the agent's status file: a starting agent writes one too, with
``"phase": "starting"`` and what it waits for (the datastore, its registration), printed
instead of "not running"; a running agent whose datastore went away says so (its
``datastore.status``), since its dataplane stays but no pod can be added meanwhile.

Options follow calico-node's environment knobs where they exist (IP, IP_AUTODETECTION_METHOD,
AS, NODENAME) with tortie's own additions (IPIP backend, health port, state directory).
``--name`` defaults to ``$TORTIE_NODENAME`` then the host name, as Calico's NODENAME does.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from ipaddress import IPv4Interface
from pathlib import Path

from tortie.ctl.common import datastore_url
from tortie.errors import TortieError


class NodeOptionError(TortieError):
    pass


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    node = sub.add_parser("node", help="run or inspect the node agent")
    nsub = node.add_subparsers(dest="node_command", metavar="SUBCOMMAND")
    nsub.required = True
    run = nsub.add_parser("run", help="run the node agent in the foreground")
    run.add_argument("--name", help="node name (default: $TORTIE_NODENAME or the host name)")
    run.add_argument("--ip", help="the node's IPv4 address with prefix, e.g. 192.168.49.2/24")
    run.add_argument(
        "--ip-autodetect",
        default="first-found",
        metavar="METHOD",
        help="first-found | interface=REGEX | cidr=CIDR[,CIDR] | can-reach=IP",
    )
    run.add_argument("--as", dest="as_number", type=int, help="this node's AS number")
    run.add_argument(
        "--ipip-backend",
        choices=("auto", "kernel", "bpf"),
        default="auto",
        help="tunl0 implementation (auto: the ipip module if the kernel has it, else tc-BPF)",
    )
    run.add_argument(
        "--bgp",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run a BGP speaker and route by what it learns (default); --no-bgp: routes "
        "from the datastore's block affinities",
    )
    run.add_argument(
        "--bgp-hold-time",
        type=int,
        default=int(os.environ.get("TORTIE_BGP_HOLD_TIME", "90")),
        metavar="SECONDS",
        help="BGP hold time: a dead node's routes are withdrawn within it (default 90, "
        "or $TORTIE_BGP_HOLD_TIME)",
    )
    run.add_argument("--health-port", type=int, help="serve /healthz, /readyz, /metrics here")
    run.add_argument("--health-host", default="127.0.0.1")
    run.add_argument("--state-dir", type=Path, help="default: /run/tortie/<node>")
    run.add_argument("--bpf-object", type=Path, help="default: $TORTIE_BPF_OBJECT or bpf/build")
    run.add_argument(
        "--bpf-attach-type",
        choices=("auto", "tcx", "tc"),
        default="auto",
        help="how the tc-BPF IPIP programs are attached: tcx links (Linux 6.6+) or tc filters "
        "(auto: tcx where the kernel has it; Calico's bpfAttachType)",
    )
    run.add_argument("--resync-interval", type=float, default=90.0, metavar="SECONDS")
    run.add_argument(
        "--kernel-monitor",
        action=argparse.BooleanOptionalAction,
        default=os.environ.get("TORTIE_KERNEL_MONITOR", "on").lower() not in ("0", "off", "no"),
        help="watch links, routes and the nft table and repair at once (default; "
        "$TORTIE_KERNEL_MONITOR=off turns it off); off: only the periodic resync repairs",
    )
    run.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="K=V",
        help="a label to set on the Node (repeatable)",
    )
    run.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    run.set_defaults(func=_run)
    register_status(nsub)
    register_bpf(nsub)


def node_name(given: str | None) -> str:
    """The same rule as ``tortie install-cni``: flag, $TORTIE_NODENAME, $NODENAME, host name."""
    return (
        given
        or os.environ.get("TORTIE_NODENAME")
        or os.environ.get("NODENAME")
        or socket.gethostname()
    )


def _run(args: argparse.Namespace) -> int:
    from tortie.agent.config import AgentConfig
    from tortie.agent.run import run_agent

    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    ip = None
    if args.ip:
        try:
            ip = IPv4Interface(args.ip)
        except ValueError as err:
            raise NodeOptionError(f"--ip {args.ip}: {err} (expected A.B.C.D/P)") from err
        if ip.network.prefixlen == 32 and "/" not in args.ip:
            raise NodeOptionError(f"--ip {args.ip}: give the prefix too, e.g. {args.ip}/24")
    labels: dict[str, str] = {}
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise NodeOptionError(f"--label {item!r}: expected KEY=VALUE")
        labels[key] = value
    cfg = AgentConfig(
        node_name=node_name(args.name),
        datastore_url=datastore_url(args),
        ip=ip,
        ip_autodetect=args.ip_autodetect,
        as_number=args.as_number,
        ipip_backend=args.ipip_backend,
        health_host=args.health_host,
        health_port=args.health_port,
        state_dir=args.state_dir,
        bpf_object=args.bpf_object,
        bpf_attach=args.bpf_attach_type,
        resync_interval=args.resync_interval,
        kernel_monitor=args.kernel_monitor,
        bgp=args.bgp,
        bgp_hold_time=args.bgp_hold_time,
        labels=labels,
    )
    return run_agent(cfg)


def register_status(nsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = nsub.add_parser("status", help="is the agent running, and its BGP sessions")
    status.add_argument("--name", help="node name (default: $TORTIE_NODENAME or the host name)")
    status.add_argument(
        "--state-dir", type=Path, help="default: $TORTIE_STATE_DIR or /run/tortie/<node>"
    )
    status.add_argument("-o", "--output", choices=("text", "json"), default="text")
    status.set_defaults(func=_status)


def _status(args: argparse.Namespace) -> int:
    import json

    from tortie.agent.config import DEFAULT_RUN_DIR
    from tortie.bgp.status import SpeakerCheck, fetch, render_status, status_json
    from tortie.bgp.types import BGPError, PeerStatus

    name = node_name(args.name)
    state_dir = args.state_dir or Path(os.environ.get("TORTIE_STATE_DIR") or DEFAULT_RUN_DIR / name)
    agent = _agent_status(state_dir)
    running = agent is not None
    # A starting agent (waiting for its datastore, or for its registration) says why.
    starting = agent is not None and agent.get("phase") == "starting"
    rows: list[PeerStatus] = []
    problem = ""
    speaker: SpeakerCheck | None = None  # whether the speaker answers, not only exists
    try:
        rows, speaker = fetch(state_dir / "bgp")
    except BGPError as err:
        problem = str(err)
    if args.output == "json":
        doc = status_json(rows, running, speaker)
        doc["node"] = name
        doc["agent"] = agent
        doc["agentPhase"] = None if agent is None else agent.get("phase", "running")
        if problem:
            doc["bgpProblem"] = problem
        print(json.dumps(doc, indent=2))
    else:
        text = render_status(rows, running, speaker=speaker)
        if starting:
            assert agent is not None
            text = text.replace(
                "tortie agent is running.",
                f"tortie agent is starting (pid {agent.get('pid')}): {agent.get('detail')}",
                1,
            )
        print(text, end="")
        if problem:
            print(f"\n(no BGP speaker answered: {problem})")
        if agent and not starting and not agent.get("converged"):
            print(f"\nDataplane not converged: {agent.get('detail')}")
        if agent and not starting:
            print(_datastore_line(agent.get("datastore")), end="")
    return 0 if running else 1


def _datastore_line(ds: object) -> str:
    """What a running agent's datastore sync status means, when it is not "in sync": the
    agent keeps the dataplane as it is (fail static) and refuses pod ADDs meanwhile."""
    if not isinstance(ds, dict) or ds.get("status") in (None, "in-sync", "replaced"):
        return ""  # "replaced" is the guard's: already said as "not converged"
    since = ds.get("since")
    when = ""
    if isinstance(since, int | float):
        import time

        when = f" since {time.strftime('%H:%M:%S', time.localtime(since))}"
    if ds.get("status") == "resync":
        return f"\nDatastore: re-reading it after an outage{when}.\n"
    return (
        f"\nDatastore unavailable{when}: {ds.get('detail') or ds.get('status')}\n"
        "The dataplane stays as it is; pod ADDs fail with 'try again later' until it answers.\n"
    )


def _agent_status(state_dir: Path) -> dict[str, object] | None:
    """The agent's status file, if the agent that wrote it is still alive."""
    import json

    try:
        status = json.loads((state_dir / "status.json").read_text())
    except (OSError, ValueError):
        return None
    pid = status.get("pid")
    if not isinstance(pid, int) or not Path(f"/proc/{pid}").exists():
        return None
    return dict(status)


def register_bpf(nsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bpf = nsub.add_parser(
        "bpf",
        help="the BPF programs on this network namespace's tc hooks (tcx links and tc filters)",
        description="What runs on each device's tc ingress/egress hook, in run order: tcx "
        "links (which `tc filter show` and bpftool 7.1 do not list) and tc filters. Run it "
        "in the node's network namespace (nsenter --net=...).",
    )
    bpf.add_argument("--dev", help="only this device")
    bpf.add_argument("--hook", choices=("ingress", "egress"), help="only this hook")
    bpf.add_argument("-o", "--output", choices=("text", "json"), default="text")
    bpf.set_defaults(func=_bpf)


class NodeBpfError(TortieError):
    pass


def _bpf(args: argparse.Namespace) -> int:
    import json

    from tortie.dataplane.bpfhooks import hook_programs

    if args.dev is not None and args.dev not in {n for _, n in socket.if_nameindex()}:
        raise NodeBpfError(f"--dev {args.dev}: no such device in this network namespace")
    try:
        programs = hook_programs(dev=args.dev, hook=args.hook)
    except OSError as err:
        raise NodeBpfError(f"cannot list BPF programs ({err}): run as root") from err
    if args.output == "json":
        print(json.dumps([p.to_json() for p in programs], indent=2))
        return 0
    rows = [("DEV", "HOOK", "ATTACH", "PROG ID", "NAME")]
    for p in programs:
        how = f"tcx link {p.link_id}" if p.attach == "tcx" else f"tc pref {p.pref}"
        rows.append((p.dev, p.hook, how, str(p.prog_id), p.name))
    if len(rows) == 1:
        print("no BPF programs on any tc hook here")
        return 0
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0
