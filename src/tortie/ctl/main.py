"""The ``tortie`` command: calicoctl habits over tortie's datastore.

Invariant: every user error is a :class:`TortieError`, printed as ``error: <message>`` on
stderr with exit status 1 (or the error's ``exit_code``); a traceback means a bug. Parsing
errors exit 2 (argparse's convention). Subcommand modules are imported when the parser is
built, not at import time, and none imports heavy drivers (etcd/grpc) until used.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from tortie import __version__
from tortie.ctl.common import DATASTORE_ENV, DEFAULT_DATASTORE
from tortie.errors import TortieError


def build_parser() -> argparse.ArgumentParser:
    from tortie.ctl import cni, ipam, lab, node, resources, trace

    parser = argparse.ArgumentParser(
        prog="tortie",
        description="Calico-style pod networking: resources, IPAM, nodes, labs.",
    )
    parser.add_argument(
        "--datastore",
        metavar="URL",
        help=(
            f"datastore URL (default: ${DATASTORE_ENV} or {DEFAULT_DATASTORE}); "
            "sqlite:///path, etcd://host:port[,host:port] or memory://"
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    resources.register(sub)
    ipam.register(sub)
    node.register(sub)
    lab.register(sub)
    cni.register(sub)
    trace.register(sub)
    version = sub.add_parser("version", help="print the client version")
    version.set_defaults(func=_version)
    return parser


def _version(args: argparse.Namespace) -> int:
    print(f"Client Version:    v{__version__}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
    except TortieError as err:
        print(f"error: {err}", file=sys.stderr)
        return int(getattr(err, "exit_code", 1))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `tortie get ... | head`: the reader left. Quietly, as ls and cat do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return status


if __name__ == "__main__":
    sys.exit(main())
