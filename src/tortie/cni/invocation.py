"""Reading one CNI invocation: the ``CNI_*`` environment and the config on stdin.

Problem: every way a runtime (or a person) can call a plugin wrongly must end in the spec's
error with the right code, before anything is changed: a missing or unknown ``CNI_COMMAND``,
missing variables, bad names, garbage on stdin, an unsupported ``cniVersion``. Both of
tortie's plugins (``tortie`` and ``tortie-ipam``) read their invocation here.

Invariants (libcni's rules, so tortie refuses what the reference plugins refuse):
- Codes: missing/invalid variables 4, unreadable stdin 5, undecodable config 6, invalid
  network name 7, unsupported version (or a verb the version lacks) 1.
- Required variables: ADD and CHECK need ``CNI_CONTAINERID``, ``CNI_NETNS``, ``CNI_IFNAME``,
  ``CNI_PATH``; DEL the same but ``CNI_NETNS`` (a DEL may come after the namespace is gone);
  GC and STATUS none. All missing ones are named in one error.
- VERSION never fails on its input: it answers with the versions this plugin supports.
- ``CNI_NETNS`` is made absolute here: the agent resolves it in another working directory.
- stdin is UTF-8 JSON of at most :data:`MAX_STDIN` bytes nested at most
  :data:`~tortie.model.nesting.MAX_DEPTH` deep, checked before parsing (Python's JSON parser
  recurses per level: a deep config was a RecursionError, and no error JSON at all). Whatever
  the bytes, reading them ends in a config or a :class:`CniError` with code 6.

Stdlib only: this runs in every pod's plugin process.
"""

from __future__ import annotations

import os

from tortie.cni.spec import (
    LATEST_VERSION,
    SUPPORTED_VERSIONS,
    check_container_id,
    check_ifname,
    check_network_name,
    check_version,
    parse_cni_args,
)
from tortie.model.cnierrors import CniError
from tortie.model.cniwire import MAX_MESSAGE, Code, dumps, loads
from tortie.model.nesting import MAX_DEPTH, NestingError, json_too_deep

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, BinaryIO

COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS")
# The config travels to the agent inside one request, which MAX_MESSAGE bounds.
MAX_STDIN = MAX_MESSAGE
_REQUIRED = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "GC": (),
    "STATUS": (),
    "VERSION": (),
}


class Invocation:
    """One validated call: the verb, the variables and the decoded config."""

    __slots__ = ("args", "cni_version", "command", "config", "container_id", "ifname", "netns")

    def __init__(
        self,
        command: str,
        config: dict[str, Any],
        cni_version: str,
        *,
        container_id: str = "",
        netns: str = "",
        ifname: str = "",
        args: dict[str, str] | None = None,
    ) -> None:
        self.command = command
        self.config = config
        self.cni_version = cni_version
        self.container_id = container_id
        self.netns = netns
        self.ifname = ifname
        self.args = args or {}

    @property
    def network(self) -> str:
        return str(self.config["name"])


def read_stdin(stream: BinaryIO) -> bytes:
    """stdin, but never more than one byte past the limit (which :func:`parse_stdin` then
    refuses); an unreadable stdin is code 5."""
    try:
        return stream.read(MAX_STDIN + 1)
    except OSError as exc:
        raise CniError(
            Code.IO_FAILURE, "failed to read the network config from stdin", str(exc)
        ) from None


def parse_stdin(stdin: bytes) -> Any:
    """The JSON value on stdin; :class:`ValueError` (with a reason for people) if it is too
    large, not UTF-8, nested too deep or not JSON."""
    if len(stdin) > MAX_STDIN:
        raise ValueError(f"it is larger than {MAX_STDIN} bytes, the limit")
    stdin.decode("utf-8")  # UnicodeDecodeError is a ValueError; UTF-16/32 JSON is refused too
    if json_too_deep(stdin, MAX_DEPTH):
        raise NestingError(MAX_DEPTH)
    return loads(stdin)


def answer_version(stdin: bytes) -> str:
    """VERSION's output: the requested cniVersion if supported (else the latest), and ours."""
    version = LATEST_VERSION
    try:
        doc = parse_stdin(stdin) if stdin.strip() else {}
        if isinstance(doc, dict) and doc.get("cniVersion") in SUPPORTED_VERSIONS:
            version = doc["cniVersion"]
    except (ValueError, RecursionError):
        pass  # VERSION must answer whatever came on stdin
    return dumps({"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)})


def reported_version(stdin: bytes) -> str:
    """The cniVersion to put in an error: the config's if we support it, else the latest.

    Never raises: it runs while reporting another error.
    """
    try:
        doc = parse_stdin(stdin)
    except (ValueError, RecursionError):
        return LATEST_VERSION
    version = doc.get("cniVersion") if isinstance(doc, dict) else None
    return version if version in SUPPORTED_VERSIONS else LATEST_VERSION


def command_of(environ: Mapping[str, str]) -> str:
    command = environ.get("CNI_COMMAND", "")
    if not command:
        raise CniError(Code.INVALID_ENVIRONMENT, "required env variables [CNI_COMMAND] missing")
    if command not in COMMANDS:
        raise CniError(
            Code.INVALID_ENVIRONMENT,
            f"unknown CNI_COMMAND: {command}",
            f"expected one of {', '.join(COMMANDS)}",
        )
    return command


def decode_config(stdin: bytes) -> dict[str, Any]:
    if not stdin.strip():
        raise CniError(Code.DECODE_FAILURE, "no network configuration on stdin")
    try:
        doc = parse_stdin(stdin)
    except ValueError as exc:  # too large or deep, JSONDecodeError, UnicodeDecodeError
        raise CniError(
            Code.DECODE_FAILURE, "failed to decode the network configuration", str(exc)
        ) from None
    if not isinstance(doc, dict):
        raise CniError(
            Code.DECODE_FAILURE,
            "failed to decode the network configuration",
            f"expected a JSON object, got {type(doc).__name__}",
        )
    return doc


def read_invocation(environ: Mapping[str, str], stdin: bytes) -> Invocation:
    """Validate a non-VERSION call. Raises :class:`CniError` with the spec's code."""
    command = command_of(environ)
    missing = [name for name in _REQUIRED[command] if not environ.get(name)]
    if missing:
        raise CniError(
            Code.INVALID_ENVIRONMENT, f"required env variables [{' '.join(missing)}] missing"
        )
    container_id = environ.get("CNI_CONTAINERID", "")
    if container_id or command in ("ADD", "DEL", "CHECK"):
        check_container_id(container_id)
    ifname = environ.get("CNI_IFNAME", "")
    if ifname or command in ("ADD", "DEL", "CHECK"):
        check_ifname(ifname)
    netns = environ.get("CNI_NETNS", "")
    if netns:
        netns = os.path.abspath(netns)
    config = decode_config(stdin)
    version = check_version(config.get("cniVersion"), command)
    check_network_name(config.get("name"))
    args = parse_cni_args(environ.get("CNI_ARGS", ""))
    return Invocation(
        command, config, version, container_id=container_id, netns=netns, ifname=ifname, args=args
    )
