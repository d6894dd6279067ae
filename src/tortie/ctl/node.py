"""``tortie node run``: the node agent's command line.

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
    run.add_argument("--health-port", type=int, help="serve /healthz, /readyz, /metrics here")
    run.add_argument("--health-host", default="127.0.0.1")
    run.add_argument("--state-dir", type=Path, help="default: /run/tortie/<node>")
    run.add_argument("--bpf-object", type=Path, help="default: $TORTIE_BPF_OBJECT or bpf/build")
    run.add_argument("--resync-interval", type=float, default=90.0, metavar="SECONDS")
    run.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="K=V",
        help="a label to set on the Node (repeatable)",
    )
    run.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    run.set_defaults(func=_run)


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
        resync_interval=args.resync_interval,
        labels=labels,
    )
    return run_agent(cfg)
