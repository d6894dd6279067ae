"""Running nftables scripts in one network namespace: libnftables in-process, or the nft CLI.

Problem: the firewall manager (:mod:`tortie.dataplane.nftables`) needs two things from
nftables: apply a script as one atomic transaction, and list objects as JSON. Both the ``nft``
CLI (``nft -f -``, ``nft -j list ...``) and libnftables (the library behind the CLI, Debian's
``libnftables1``, reached through ctypes) do exactly that with the same language and the same
JSON. Measured here with 500 node IPs and 5,000 workload entries in the sets (bench/nft.py):
adding one set element costs about 0.2 ms through libnftables and about 3 ms through the CLI
(fork + exec + the CLI's start-up); listing costs the same in both (tens of ms: nft fetches
every set's elements into its cache whatever is listed). So libnftables is the default and the
CLI the fallback; pyroute2's nftables support is too thin for sets of concatenations.

Invariants: an executor acts on exactly the namespace it was built for. Every call (and the
library's context, which opens its netlink socket when created) runs in a thread that entered
that namespace (:func:`tortie.dataplane.netns.run_in_netns`), so a socket the library reopens
later still lands in the right namespace; the caller's thread never moves. A script is one
transaction: either all of it is applied or none of it (:class:`NftError` then).

Hazards: a libnftables context is not thread-safe: calls are serialised with a lock. Nothing
is loaded at import time; the library is opened on first use.
"""

from __future__ import annotations

import ctypes
import errno
import json
import shlex
import shutil
import subprocess
import threading
from typing import Any, Literal, Protocol

from tortie.dataplane.errors import DataplaneError, kernel_call
from tortie.dataplane.netns import NetnsRef, netns_path, run_in_netns

ExecutorKind = Literal["auto", "lib", "cli"]

# libnftables.h: output flags.
NFT_CTX_DEFAULT = 0
NFT_CTX_OUTPUT_JSON = 1 << 4
NFT_CTX_OUTPUT_TERSE = 1 << 11
LIBNFTABLES = "libnftables.so.1"

JsonObject = dict[str, Any]


class NftError(DataplaneError):
    """nftables refused a script or a listing; the message is nft's own (with the line)."""

    def __init__(
        self, message: str, script: str = "", *, errno: int | None = None, retryable: bool = True
    ) -> None:
        super().__init__(
            message.strip() or "nft failed without a message", errno=errno, retryable=retryable
        )
        self.script = script


class NftExecutor(Protocol):
    """Scripts and JSON listings in one namespace."""

    name: str  # "libnftables" or "nft-cli"

    def run(self, script: str) -> None:
        """Apply ``script`` as one transaction; NftError (nothing applied) on failure."""
        ...

    def list_json(self, command: str, *, terse: bool = False) -> list[JsonObject]:
        """The objects of ``command`` (a ``list ...`` command), metainfo left out.

        ``terse`` leaves set elements out of the answer (they are still fetched).
        """
        ...

    def close(self) -> None: ...


def _objects(text: str, command: str) -> list[JsonObject]:
    try:
        doc = json.loads(text) if text.strip() else {"nftables": []}
    except json.JSONDecodeError as exc:
        raise NftError(f"{command}: unreadable JSON from nft: {exc}") from exc
    return [obj for obj in doc.get("nftables", []) if "metainfo" not in obj]


class LibNftables:
    """libnftables through ctypes: no process per call (the fast path for per-pod updates)."""

    name = "libnftables"

    def __init__(self, netns: NetnsRef = None, library: str = LIBNFTABLES) -> None:
        self.netns = netns
        self._lock = threading.Lock()
        self._lib = ctypes.CDLL(library)
        self._declare()
        ctx = run_in_netns(netns, lambda: self._lib.nft_ctx_new(NFT_CTX_DEFAULT))
        if not ctx:
            raise NftError("nft_ctx_new failed")
        self._ctx: int | None = ctx
        # Buffered, so nothing is printed on our stdout/stderr and messages can be returned.
        self._lib.nft_ctx_buffer_output(ctx)
        self._lib.nft_ctx_buffer_error(ctx)

    def _declare(self) -> None:
        lib = self._lib
        vp, cp = ctypes.c_void_p, ctypes.c_char_p
        for fn, args, res in (
            ("nft_ctx_new", [ctypes.c_uint32], vp),
            ("nft_ctx_free", [vp], None),
            ("nft_ctx_buffer_output", [vp], ctypes.c_int),
            ("nft_ctx_buffer_error", [vp], ctypes.c_int),
            ("nft_ctx_get_output_buffer", [vp], cp),
            ("nft_ctx_get_error_buffer", [vp], cp),
            ("nft_ctx_output_set_flags", [vp, ctypes.c_uint], None),
            ("nft_run_cmd_from_buffer", [vp, cp], ctypes.c_int),
        ):
            getattr(lib, fn).argtypes = args
            getattr(lib, fn).restype = res

    def _run(self, text: str, flags: int) -> str:
        with self._lock:
            ctx = self._ctx
            if ctx is None:
                raise NftError("libnftables executor is closed")
            lib = self._lib

            def work() -> tuple[int, bytes, bytes]:
                lib.nft_ctx_output_set_flags(ctx, flags)
                rc = lib.nft_run_cmd_from_buffer(ctx, text.encode())
                # Reading the buffers also empties them for the next call.
                out = lib.nft_ctx_get_output_buffer(ctx) or b""
                err = lib.nft_ctx_get_error_buffer(ctx) or b""
                return rc, out, err

            with kernel_call("libnftables", NftError):
                rc, out, err = run_in_netns(self.netns, work)
        if rc != 0:
            raise NftError(err.decode(errors="replace"), text)
        return out.decode(errors="replace")

    def run(self, script: str) -> None:
        self._run(script, 0)

    def list_json(self, command: str, *, terse: bool = False) -> list[JsonObject]:
        flags = NFT_CTX_OUTPUT_JSON | (NFT_CTX_OUTPUT_TERSE if terse else 0)
        return _objects(self._run(command, flags), command)

    def close(self) -> None:
        with self._lock:
            if self._ctx is not None:
                self._lib.nft_ctx_free(self._ctx)
                self._ctx = None


class NftCli:
    """The ``nft`` binary, started inside the namespace (the fallback; about 3 ms a call)."""

    name = "nft-cli"

    def __init__(self, netns: NetnsRef = None, binary: str | None = None) -> None:
        self.netns = netns
        found = binary or shutil.which("nft") or "/usr/sbin/nft"
        self.binary = found
        if netns_path(netns) is not None:
            run_in_netns(netns, lambda: None)  # a missing namespace fails now, not later

    def _nft(self, args: list[str], stdin: str | None) -> str:
        def work() -> subprocess.CompletedProcess[str]:
            # The child inherits the namespace of the thread that starts it.
            return subprocess.run(
                [self.binary, *args], input=stdin, capture_output=True, text=True, check=False
            )

        try:
            with kernel_call(self.binary, NftError):
                proc = run_in_netns(self.netns, work)
        except NftError as exc:
            if exc.errno != errno.ENOENT:
                raise
            raise NftError(
                f"{self.binary} not found: apt-get install nftables", retryable=False
            ) from exc
        if proc.returncode != 0:
            raise NftError(proc.stderr, stdin or " ".join(args))
        return proc.stdout

    def run(self, script: str) -> None:
        self._nft(["-f", "-"], script)

    def list_json(self, command: str, *, terse: bool = False) -> list[JsonObject]:
        args = ["-j", *(["-t"] if terse else []), *shlex.split(command)]
        return _objects(self._nft(args, None), command)

    def close(self) -> None:
        pass


def make_executor(netns: NetnsRef = None, kind: ExecutorKind = "auto") -> NftExecutor:
    """``lib`` or ``cli``; ``auto``: libnftables if it loads, else the CLI."""
    if kind == "cli":
        return NftCli(netns)
    try:
        return LibNftables(netns)
    except NftError:
        raise
    except OSError as exc:  # the shared library is missing
        if kind == "lib":
            raise NftError(
                f"{LIBNFTABLES}: {exc} (apt-get install libnftables1)", retryable=False
            ) from exc
        return NftCli(netns)
