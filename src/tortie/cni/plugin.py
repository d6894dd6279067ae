"""The ``tortie`` CNI plugin executable: validate, ask the node agent, answer the runtime.

Problem: a container runtime runs this once per pod per verb and waits for it; the whole
process, interpreter start included, should take well under 100 ms. So it is stdlib only:
parse ``CNI_*`` and the config (:mod:`tortie.cni.invocation`, :mod:`tortie.cni.config`),
send one request to the agent (:mod:`tortie.cni.client`), and print the result in the
runtime's CNI version (:mod:`tortie.cni.spec`). The work happens in the agent's
:class:`tortie.agent.cniserver.CniServer`.

Invariants:
- Exit 0 with the result (ADD) or nothing (DEL, CHECK, GC, STATUS) on stdout; or the spec's
  error JSON on stdout and exit 1. A bug still yields error JSON (code 999), never a bare
  traceback the runtime cannot parse; the traceback goes to stderr.
- VERSION is answered locally (the runtime may ask before the agent runs).
- stdin is read up to one byte past its limit, never more (:mod:`tortie.cni.invocation`).
- On ADD, a ``prevResult`` from an earlier plugin in the chain is kept: our interfaces,
  addresses and routes are appended to it.
"""

from __future__ import annotations

import os
import sys

from tortie.cni.client import call_agent
from tortie.cni.config import build_request
from tortie.cni.invocation import (
    answer_version,
    command_of,
    read_invocation,
    read_stdin,
    reported_version,
)
from tortie.cni.spec import merge_results, shape_result
from tortie.model.cnierrors import CniError
from tortie.model.cniwire import Code, dumps

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import TextIO


def run(environ: Mapping[str, str], stdin: bytes, stdout: TextIO) -> int:
    """One invocation; returns the exit status. (``main`` wires in the real process.)"""
    try:
        if command_of(environ) == "VERSION":
            stdout.write(answer_version(stdin) + "\n")
            return 0
        inv = read_invocation(environ, stdin)
        request, path, wait = build_request(inv, environ)
        response = call_agent(path, request, wait)
        if response.error is not None:
            err = response.error
            raise CniError(err.code, err.msg, err.details)
        if inv.command == "ADD":
            result = merge_results(request.prev_result, response.result or {})
            stdout.write(dumps(shape_result(result, inv.cni_version)) + "\n")
        return 0
    except CniError as err:
        return _fail(err, stdin, stdout)
    except Exception as exc:  # a bug: still answer in the spec's format
        import traceback

        traceback.print_exc()
        return _fail(
            CniError(Code.INTERNAL, f"internal error in the tortie plugin: {exc!r}"), stdin, stdout
        )


def _fail(err: CniError, stdin: bytes, stdout: TextIO) -> int:
    stdout.write(err.to_json(reported_version(stdin)) + "\n")
    detail = f" ({err.details})" if err.details else ""
    sys.stderr.write(f"tortie: {err.msg}{detail}\n")
    return 1


def main() -> int:
    try:
        # A person typing the command has nothing to pipe in: do not wait for a terminal.
        stdin = b"" if sys.stdin is None or sys.stdin.isatty() else read_stdin(sys.stdin.buffer)
    except CniError as err:
        return _fail(err, b"", sys.stdout)
    status = run(os.environ, stdin, sys.stdout)
    sys.stdout.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
