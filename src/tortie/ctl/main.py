"""The ``tortie`` command: calicoctl habits over tortie's datastore.

Invariant: every user error is a :class:`TortieError`, printed as ``error: <message>`` on
stderr with exit status 1 (or the error's ``exit_code``); a traceback means a bug. Parsing
errors exit 2 (argparse's convention).

Start-up cost (issue 17, item 14; figures in ``bench/cli.py``): a command is a whole process,
so every module it imports is paid on every call. The command's name is read from ``argv``
first and only the module that registers it is imported (:data:`COMMANDS`); the whole parser
is built only for ``--help``, an unknown command or a global option we do not know. The
subcommand modules themselves import their heavy parts (pydantic models, IPAM, the lab, the
etcd client and gRPC) inside the handlers, so ``tortie version`` imports none of them and
``tortie get`` on SQLite never loads gRPC.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from tortie import __version__
from tortie.ctl.common import DATASTORE_ENV, DEFAULT_DATASTORE
from tortie.errors import TortieError

# Top-level command -> the tortie.ctl module whose ``register`` adds it. A unit test checks
# this against what the modules really register, so a new command cannot be forgotten here.
COMMANDS: dict[str, str] = {
    "apply": "resources",
    "create": "resources",
    "replace": "resources",
    "delete": "resources",
    "get": "get",
    "datastore": "datastore",
    "ipam": "ipam",
    "node": "node",
    "lab": "lab",
    "install-cni": "cni",
    "trace": "trace",
}
MODULES = (
    "resources",
    "get",
    "datastore",
    "ipam",
    "node",
    "lab",
    "cni",
    "trace",
)  # the order --help lists them


def command_of(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names, or None when only the whole parser can tell (an option we
    do not know before the command, ``--help``, no command at all)."""
    args = iter(argv)
    for arg in args:
        if not arg.startswith("-"):
            return arg
        name = arg.split("=", 1)[0]
        # argparse accepts unambiguous prefixes of long options ("--data URL").
        if len(name) > 2 and "--datastore".startswith(name):
            if "=" not in arg:
                next(args, None)
            continue
        return None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given ``argv``, only with the command ``argv`` names (see the docstring)."""
    parser = argparse.ArgumentParser(
        prog="tortie",
        description="Calico-style pod networking: resources, IPAM, nodes, labs.",
    )
    parser.add_argument(
        "--datastore",
        metavar="URL",
        help=(
            f"datastore URL (default: ${DATASTORE_ENV} or {DEFAULT_DATASTORE}); "
            "sqlite:///path, etcd://host:port[,host:port] or memory://; opening never "
            "creates one: `tortie datastore init` does"
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    command = command_of(argv) if argv is not None else None
    if command == "version":
        modules: Sequence[str] = ()
    elif command in COMMANDS:
        modules = (COMMANDS[command],)
    else:
        modules = MODULES
    for name in modules:
        importlib.import_module(f"tortie.ctl.{name}").register(sub)
    version = sub.add_parser("version", help="print the client version")
    version.set_defaults(func=_version)
    return parser


def _version(args: argparse.Namespace) -> int:
    print(f"Client Version:    v{__version__}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
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
