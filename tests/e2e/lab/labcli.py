"""``tortie lab`` as a process, independent of whether tortie.ctl.main registers it yet.

Runs the subcommand module's own ``register`` under a parser with main's error handling
(``error: <message>``, exit 1), so the e2e tests exercise the real CLI code path.
"""

from __future__ import annotations

import argparse
import sys

from tortie.ctl import lab
from tortie.errors import TortieError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tortie")
    parser.add_argument("--datastore")
    sub = parser.add_subparsers(dest="command")
    sub.required = True
    lab.register(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except TortieError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
