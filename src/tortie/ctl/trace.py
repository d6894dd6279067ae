"""``tortie trace [--lab L] SRC DST [--capture] [-o text|json] [-v]``: a packet's journey.

SRC and DST are lab pod or node names, ``router``, or addresses. The request and the reply are
walked through the lab's namespaces from their live state (:mod:`tortie.trace.run`); with
``--capture`` a real ping is sent while tcpdump listens at every wire of the journey, and the
captures are shown beside the predictions.

Invariants: the handler only parses, opens the lab (:mod:`tortie.lab`), calls
:mod:`tortie.trace` and prints. Exit status: 0, or 3 when ``--capture`` found a difference
between prediction and capture (like ``tortie ipam check``: a script can tell "it ran" from "it
disagrees"); user errors are LabErrors (exit 1).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

DIFFERENCES_EXIT = 3


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "trace",
        help="a packet's journey between two lab endpoints, hop by hop (request and reply)",
        description="Follow a ping from SRC to DST and back through a lab: the kernel's route "
        "lookup in every namespace, proxy ARP, the firewall, the tunnel or VXLAN "
        "encapsulation, and what the packet looks like on the wire at each hop.",
    )
    parser.add_argument("src", metavar="SRC", help="pod or node name, 'router', or an address")
    parser.add_argument("dst", metavar="DST", help="pod or node name, 'router', or an address")
    parser.add_argument("--lab", metavar="L", help="the lab (default: the only lab)")
    parser.add_argument(
        "--root",
        type=Path,
        metavar="DIR",
        help="directory of lab directories (default: $TORTIE_LAB_ROOT or /run/tortie/labs)",
    )
    parser.add_argument(
        "--capture",
        action="store_true",
        help="send a real ping, tcpdump every wire on the way, show captures beside predictions",
    )
    parser.add_argument("-o", "--output", choices=("text", "json"), default="text")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="text: every command each step checked"
    )
    parser.set_defaults(func=_trace)


def _trace(args: argparse.Namespace) -> int:
    from tortie.lab.errors import NotRootError
    from tortie.lab.ops import open_lab
    from tortie.lab.registry import LabPaths, default_root
    from tortie.trace.run import trace
    from tortie.trace.text import format_trace

    if os.geteuid() != 0:
        raise NotRootError("tortie trace needs root (it enters the lab's namespaces); use sudo")
    lab = open_lab(LabPaths(root=args.root or default_root()), args.lab)
    result = trace(lab, args.src, args.dst, capture=args.capture)
    if args.output == "json":
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(format_trace(result, verbose=args.verbose))
    return DIFFERENCES_EXIT if result.differences else 0
