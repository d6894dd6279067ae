"""The wire protocol between the CNI plugin process and the node agent's CNI server.

Problem: the CNI plugin is one short-lived process per pod and must answer in well under
100 ms, but the work (IPAM, netlink, the datastore) needs pyroute2 and pydantic, which alone
take about 0.35 s to import. So the plugin only parses what the runtime gave it and sends
one request over a root-only unix socket to the node agent, which does the work with
everything already imported. This module is the contract between the two: plain data,
stdlib only, and cheap to import: not even ``dataclasses`` (see :class:`_Record`) or ``json``
(see :func:`loads`), so importing it costs the plugin almost nothing.

Framing: one request per connection. The client writes the request's JSON and shuts down its
sending side; the server reads to end-of-file, writes the response's JSON and closes. No
length prefixes, no partial reads to reason about; :data:`MAX_MESSAGE` bounds both.

Invariants:
- Every message carries ``"v": PROTOCOL_VERSION``; a peer speaking another version is refused
  with a message naming both versions (plugin and agent from different installs).
- A request is already validated by the plugin (environment, config, CNI version); the server
  trusts the shapes but not the values (it re-checks what its own correctness depends on).
- A result travels in one canonical shape, the CNI 1.0.0 result without ``cniVersion``; the
  plugin converts it to the version the runtime asked for. The server never sees CNI versions.
- Error codes are the CNI spec's well-known codes (:class:`Code`), or tortie's own (>= 100).

Hazards: the socket path must stay short (``sun_path`` is 108 bytes) and per node, because a
lab runs several nodes on one host; :func:`default_socket_path` builds it from the node name,
which is checked to be a plain name (no ``/``), so it cannot point outside the run directory.
"""

from __future__ import annotations

import _json  # the C half of the json module: see loads()

from tortie.model.naming import RUN_DIR

# typing is not imported at run time (import cost on the plugin's fast path); mypy treats
# any name TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PROTOCOL_VERSION = 1
MAX_MESSAGE = 1 << 20  # 1 MiB: a CNI config with a long valid-attachments list fits easily

SOCKET_NAME = "cni.sock"
# The conflist key (in tortie's plugin entry) that overrides the socket path.
SOCKET_CONFIG_KEY = "agent_socket"
SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes including the terminating NUL

COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS")


class Code:
    """CNI error codes: the spec's well-known ones (1-99) and tortie's own (100+)."""

    INCOMPATIBLE_VERSION = 1
    UNSUPPORTED_FIELD = 2
    UNKNOWN_CONTAINER = 3
    INVALID_ENVIRONMENT = 4
    IO_FAILURE = 5
    DECODE_FAILURE = 6
    INVALID_NETWORK_CONFIG = 7
    TRY_AGAIN_LATER = 11
    PLUGIN_NOT_AVAILABLE = 50  # STATUS: cannot service ADD
    LIMITED_CONNECTIVITY = 51  # STATUS: existing pods may be affected too
    # tortie's own codes.
    NO_ADDRESS = 100  # IPAM could not provide the address(es): exhausted, no pool, in use
    KERNEL_FAILURE = 101  # the kernel refused an interface, address, route or sysctl change
    CHECK_FAILED = 102  # CHECK found the pod's networking not as ADD left it
    # ADD: the pod already has an interface of the requested name that is not this container's
    # (the spec: the plugin MUST return an error; it names no code for it).
    INTERFACE_EXISTS = 103
    INTERNAL = 999  # a bug (the CNI library's "internal error" code)


class WireError(ValueError):
    """A message that is not valid JSON of the expected shape."""


class _ScanContext:
    """What ``_json.make_scanner`` reads from a JSONDecoder: the defaults of ``json.loads``."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo = None

    @staticmethod
    def parse_constant(name: str) -> float:
        return {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}[name]


_JSON_SPACE = " \t\n\r"


def loads(data: bytes | str) -> Any:
    """``json.loads`` for the plugin's fast path, without importing ``json``.

    Importing ``json`` imports ``re`` (its module-level regexes), which costs the plugin
    process ~12 ms, an eighth of its budget. The C scanner behind ``json`` needs none of
    it. Anything the fast path does not accept (invalid JSON, other encodings, extra data)
    goes to the real ``json.loads``, which gives the same result or the same error.
    """
    try:
        text = data.decode() if isinstance(data, bytes) else data
        start = len(text) - len(text.lstrip(_JSON_SPACE))
        scan = _json.make_scanner(_ScanContext())  # type: ignore[arg-type]  # stub is off
        value, end = scan(text, start)
        if text[end:].strip(_JSON_SPACE):
            raise ValueError("extra data")
        return value
    except (StopIteration, ValueError, SystemError, TypeError, AttributeError):
        # SystemError: the C scanner raises json.decoder.JSONDecodeError only if json is
        # already imported; otherwise it fails without an exception. Let json say it right.
        import json

        return json.loads(data)


def dumps(obj: Any) -> str:
    """Compact ``json.dumps`` (ASCII, no indentation) without importing ``json``."""
    try:
        encode = _json.make_encoder(
            {}, _not_json, _json.encode_basestring_ascii, None, ":", ",", False, False, True
        )
        return "".join(encode(obj, 0))
    except (TypeError, ValueError, AttributeError):
        import json

        return json.dumps(obj, separators=(",", ":"))


def _not_json(obj: object) -> object:
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _require(doc: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = doc.get(name)
    if not isinstance(value, kind):
        raise WireError(f"field {name!r} is missing or has the wrong type")
    return value


def _optional(doc: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = doc.get(name)
    if value is not None and not isinstance(value, kind):
        raise WireError(f"field {name!r} has the wrong type")
    return value


def _load(data: bytes) -> dict[str, Any]:
    if len(data) > MAX_MESSAGE:
        raise WireError(f"message of {len(data)} bytes exceeds the {MAX_MESSAGE} byte limit")
    try:
        doc = loads(data)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise WireError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise WireError("not a JSON object")
    version = doc.get("v")
    if version != PROTOCOL_VERSION:
        raise WireError(
            f"protocol version {version!r}, expected {PROTOCOL_VERSION}: the tortie plugin "
            "and the tortie agent come from different installs; reinstall with "
            "'tortie install-cni' and restart the agent"
        )
    return doc


def _dump(doc: dict[str, Any]) -> bytes:
    return dumps(doc).encode()


class _Record:
    """Value semantics (equality, repr) for the plain slotted classes below.

    Not dataclasses: importing ``dataclasses`` (it pulls in ``inspect``) and generating the
    classes costs the plugin process 13-20 ms, a fifth of its time budget. Treat instances
    as immutable.
    """

    __slots__: tuple[str, ...] = ()

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _Record)
            and type(other) is type(self)
            and (self._values() == other._values())
        )

    def __hash__(self) -> int:
        return hash((type(self).__name__, *map(repr, self._values())))

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({fields})"


class Attachment(_Record):
    """One (container, interface) a runtime still uses: GC keeps these."""

    __slots__ = ("container_id", "ifname")

    def __init__(self, container_id: str, ifname: str) -> None:
        self.container_id = container_id
        self.ifname = ifname


class CniRequest(_Record):
    """What the plugin asks of the agent. Values already validated by the plugin.

    ``network`` is the CNI network name (part of the IPAM handle ``<network>.<containerID>``).
    ``node`` and ``datastore`` are what the conflist names: the server refuses a request meant
    for another node or datastore rather than silently using its own. ``mtu`` 0 means "the
    agent's MTU". ``prev_result`` is canonical (CNI 1.0.0 shape). ``pod_namespace``/``pod``
    come from ``K8S_POD_NAMESPACE``/``K8S_POD_NAME`` (None when the runtime sent none).
    ``ips`` are specific addresses asked for (runtimeConfig ``ips``, ``CNI_ARGS`` ``IP``);
    ``valid_attachments`` is GC's list of what to keep.
    """

    __slots__ = (
        "command",
        "container_id",
        "datastore",
        "ifname",
        "ips",
        "mtu",
        "netns",
        "network",
        "node",
        "pod",
        "pod_namespace",
        "pools",
        "prev_result",
        "valid_attachments",
    )

    def __init__(
        self,
        command: str,
        network: str,
        *,
        container_id: str = "",
        netns: str = "",
        ifname: str = "",
        node: str = "",
        datastore: str = "",
        mtu: int = 0,
        pod_namespace: str | None = None,
        pod: str | None = None,
        pools: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        prev_result: dict[str, Any] | None = None,
        valid_attachments: tuple[Attachment, ...] = (),
    ) -> None:
        self.command = command
        self.network = network
        self.container_id = container_id
        self.netns = netns
        self.ifname = ifname
        self.node = node
        self.datastore = datastore
        self.mtu = mtu
        self.pod_namespace = pod_namespace
        self.pod = pod
        self.pools = pools
        self.ips = ips
        self.prev_result = prev_result
        self.valid_attachments = valid_attachments

    def to_bytes(self) -> bytes:
        return _dump(
            {
                "v": PROTOCOL_VERSION,
                "command": self.command,
                "network": self.network,
                "containerID": self.container_id,
                "netns": self.netns,
                "ifname": self.ifname,
                "node": self.node,
                "datastore": self.datastore,
                "mtu": self.mtu,
                "podNamespace": self.pod_namespace,
                "pod": self.pod,
                "pools": list(self.pools),
                "ips": list(self.ips),
                "prevResult": self.prev_result,
                "validAttachments": [
                    {"containerID": a.container_id, "ifname": a.ifname}
                    for a in self.valid_attachments
                ],
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> CniRequest:
        doc = _load(data)
        command = _require(doc, "command", str)
        if command not in COMMANDS:
            raise WireError(f"unknown command {command!r}")
        pools = _optional(doc, "pools", list) or []
        ips = _optional(doc, "ips", list) or []
        if not all(isinstance(p, str) for p in [*pools, *ips]):
            raise WireError("pools and ips must be lists of strings")
        attachments = []
        for item in _optional(doc, "validAttachments", list) or []:
            if not isinstance(item, dict):
                raise WireError("validAttachments entries must be objects")
            attachments.append(
                Attachment(_require(item, "containerID", str), _require(item, "ifname", str))
            )
        mtu = _optional(doc, "mtu", int) or 0
        if isinstance(mtu, bool) or mtu < 0:
            raise WireError("field 'mtu' must be a non-negative integer")
        return cls(
            command,
            _require(doc, "network", str),
            container_id=_optional(doc, "containerID", str) or "",
            netns=_optional(doc, "netns", str) or "",
            ifname=_optional(doc, "ifname", str) or "",
            node=_optional(doc, "node", str) or "",
            datastore=_optional(doc, "datastore", str) or "",
            mtu=mtu,
            pod_namespace=_optional(doc, "podNamespace", str),
            pod=_optional(doc, "pod", str),
            pools=tuple(pools),
            ips=tuple(ips),
            prev_result=_optional(doc, "prevResult", dict),
            valid_attachments=tuple(attachments),
        )


class CniErrorInfo(_Record):
    """A CNI error as the spec prints it: ``code``, ``msg`` and optional ``details``."""

    __slots__ = ("code", "details", "msg")

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        self.code = code
        self.msg = msg
        self.details = details


class CniResponse(_Record):
    """The agent's answer: a canonical result (ADD), nothing (other verbs), or an error."""

    __slots__ = ("error", "result")

    def __init__(
        self, error: CniErrorInfo | None = None, result: dict[str, Any] | None = None
    ) -> None:
        self.error = error
        self.result = result

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {"v": PROTOCOL_VERSION, "ok": self.error is None}
        if self.error is not None:
            doc["error"] = {
                "code": self.error.code,
                "msg": self.error.msg,
                "details": self.error.details,
            }
        if self.result is not None:
            doc["result"] = self.result
        return _dump(doc)

    @classmethod
    def from_bytes(cls, data: bytes) -> CniResponse:
        doc = _load(data)
        ok = _require(doc, "ok", bool)
        error = None
        if not ok:
            err = _require(doc, "error", dict)
            code = _require(err, "code", int)
            details = _optional(err, "details", str) or ""
            error = CniErrorInfo(code, _require(err, "msg", str), details)
        return cls(error=error, result=_optional(doc, "result", dict))


def failure(code: int, msg: str, details: str = "") -> CniResponse:
    return CniResponse(error=CniErrorInfo(code, msg, details))


def check_node_name(node: str) -> str:
    """``node`` if it can be part of a path (a non-empty name without ``/`` or NUL)."""
    if not node or node in (".", "..") or "/" in node or "\0" in node:
        raise ValueError(f"{node!r} is not a usable node name")
    return node


def default_socket_path(node: str) -> str:
    """Where the agent of ``node`` listens: ``/run/tortie/<node>/cni.sock``.

    One directory per node (mode 0700, the socket 0600) so several lab nodes share a host,
    and only root reaches the socket. Raises ValueError for a node name that is not a plain
    name or that makes the path too long for a unix socket.
    """
    path = f"{RUN_DIR}/{check_node_name(node)}/{SOCKET_NAME}"
    if len(path.encode()) > SUN_PATH_MAX:
        raise ValueError(
            f"socket path {path} is longer than {SUN_PATH_MAX} bytes; set "
            f"{SOCKET_CONFIG_KEY!r} in the CNI config to a shorter path"
        )
    return path


def unix_connect_or_bind(sock: Any, path: str, *, bind: bool = False) -> None:
    """``sock.connect(path)`` (or ``bind``) even when ``path`` is longer than sun_path.

    Lab and test directories can be deep; the kernel limits a socket address to 107 bytes.
    A longer path is reached through ``/proc/self/fd/<dir fd>/<name>``, which names the same
    directory in a few bytes. Errors are the usual OSErrors of connect/bind.
    """
    if len(path.encode()) <= SUN_PATH_MAX:
        (sock.bind if bind else sock.connect)(path)
        return
    import os

    directory, name = os.path.split(path)
    fd = os.open(directory or ".", os.O_PATH | os.O_DIRECTORY)
    try:
        short = f"/proc/self/fd/{fd}/{name}"
        (sock.bind if bind else sock.connect)(short)
    finally:
        os.close(fd)
