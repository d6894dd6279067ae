"""tortie's own keys in the CNI network config, and the request they become.

Problem: the conflist (written by ``tortie install-cni``) says which node and datastore the
plugin serves, and may set the MTU, the pools, the agent's socket; runtimes add
``runtimeConfig``, ``prevResult`` and GC's attachment lists. The plugin must validate all of
it itself (the agent never sees CNI versions or config shapes) and turn it into one
:class:`~tortie.model.cniwire.CniRequest`.

Keys (in tortie's entry of the conflist)::

    "type": "tortie"
    "nodename": "node-1"            default: $TORTIE_NODENAME, $NODENAME, then the hostname
    "datastore": "sqlite:///..."    the agent refuses a request for another datastore
    "mtu": 1480                     0 or absent: the agent's MTU (host MTU - encapsulation)
    "agent_socket": "/run/..."      default /run/tortie/<nodename>/cni.sock
    "timeout": 60                   seconds to wait for the agent's answer
    "ipam": {"type": "tortie-ipam", "ipv4_pools": ["10.244.0.0/16"]}
    "capabilities": {"ips": true}   lets runtimes pass runtimeConfig.ips (static addresses)

Invariants: a bad value is code 7 (invalid network config) naming the key; a feature tortie
does not have is code 2 (unsupported field) naming key and value, as the spec asks. Unknown
keys are ignored (other tools put theirs in the same entry). ``runtimeConfig`` keys are
matched case-insensitively (containerd capitalises them).

Stdlib only: this runs in every pod's plugin process.
"""

from __future__ import annotations

import os

from tortie.cni.invocation import Invocation
from tortie.cni.spec import canonical_result, get_ci
from tortie.model.cnierrors import CniError
from tortie.model.cniwire import (
    SOCKET_CONFIG_KEY,
    Attachment,
    CniRequest,
    Code,
    check_node_name,
    default_socket_path,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

PLUGIN_TYPE = "tortie"
IPAM_TYPES = ("tortie-ipam", "calico-ipam")
DEFAULT_TIMEOUT = 60.0
NODENAME_ENVS = ("TORTIE_NODENAME", "NODENAME")
ATTACHMENT_KEYS = ("cni.dev/valid-attachments", "cni.dev/attachments")
MTU_MIN, MTU_MAX = 68, 65535


def _invalid(key: str, why: str) -> CniError:
    return CniError(Code.INVALID_NETWORK_CONFIG, f"invalid network config: {key} {why}")


def _unsupported(key: str, value: object, why: str) -> CniError:
    return CniError(
        Code.UNSUPPORTED_FIELD, f"unsupported field in network config: {key}={value!r}", why
    )


def node_name(config: Mapping[str, Any], environ: Mapping[str, str]) -> str:
    """The node this config is for: its ``nodename``, else the environment, else hostname."""
    value = config.get("nodename")
    if value is not None and not isinstance(value, str):
        raise _invalid("nodename", "must be a string")
    name = value or next((environ[e] for e in NODENAME_ENVS if environ.get(e)), "")
    name = name or os.uname().nodename  # gethostname() without importing socket
    try:
        return check_node_name(name)
    except ValueError as exc:
        raise _invalid("nodename", str(exc)) from None


def socket_path(config: Mapping[str, Any], node: str) -> str:
    value = config.get(SOCKET_CONFIG_KEY)
    if value is not None:
        if not isinstance(value, str) or not value.startswith("/"):
            raise _invalid(SOCKET_CONFIG_KEY, "must be an absolute path")
        return value
    try:
        return default_socket_path(node)
    except ValueError as exc:
        raise _invalid("nodename", str(exc)) from None


def timeout(config: Mapping[str, Any]) -> float:
    value = config.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 3600:
        raise _invalid("timeout", "must be a number of seconds in (0, 3600]")
    return float(value)


def _mtu(config: Mapping[str, Any]) -> int:
    value = config.get("mtu", 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid("mtu", "must be an integer")
    if value and not MTU_MIN <= value <= MTU_MAX:
        raise _invalid("mtu", f"must be 0 (the agent's) or {MTU_MIN}..{MTU_MAX}")
    return value


def _string_list(value: object, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _invalid(key, "must be a list of strings")
    return tuple(value)


def _pools(config: Mapping[str, Any]) -> tuple[str, ...]:
    ipam = config.get("ipam")
    if ipam is None:
        return ()
    if not isinstance(ipam, dict):
        raise _invalid("ipam", "must be an object")
    kind = ipam.get("type", IPAM_TYPES[0])
    if kind not in IPAM_TYPES:
        raise _unsupported(
            "ipam.type",
            kind,
            "the tortie plugin assigns addresses with tortie IPAM in the node agent; "
            f"use {IPAM_TYPES[0]!r} (or omit ipam)",
        )
    if str(ipam.get("assign_ipv6", "false")).lower() == "true":
        raise _unsupported("ipam.assign_ipv6", ipam["assign_ipv6"], "tortie pods are IPv4 only")
    if str(ipam.get("assign_ipv4", "true")).lower() == "false":
        raise _unsupported("ipam.assign_ipv4", ipam["assign_ipv4"], "tortie pods need IPv4")
    if "ipv4_pools" not in ipam:
        return ()
    return _string_list(ipam["ipv4_pools"], "ipam.ipv4_pools")


def requested_ips(config: Mapping[str, Any], args: Mapping[str, str]) -> tuple[str, ...]:
    """Static addresses: ``runtimeConfig.ips`` (capability "ips") and ``CNI_ARGS`` ``IP=``."""
    out: list[str] = []
    runtime = config.get("runtimeConfig")
    if runtime is not None:
        if not isinstance(runtime, dict):
            raise _invalid("runtimeConfig", "must be an object")
        ips = get_ci(runtime, "ips")
        if ips is not None:
            out += _string_list(ips, "runtimeConfig.ips")
    if args.get("IP"):
        out += [a for a in args["IP"].split(",") if a]
    return tuple(out)


def attachments(config: Mapping[str, Any]) -> tuple[Attachment, ...]:
    """GC's list of attachments to keep: both keys (the spec's and libcni's) are read."""
    seen: dict[tuple[str, str], Attachment] = {}
    present = False
    for key in ATTACHMENT_KEYS:
        value = config.get(key)
        if value is None:
            continue
        present = True
        if not isinstance(value, list):
            raise _invalid(key, "must be a list")
        for item in value:
            if not isinstance(item, dict):
                raise _invalid(key, "entries must be objects with containerID and ifname")
            cid, ifname = item.get("containerID"), item.get("ifname")
            if not isinstance(cid, str) or not cid or not isinstance(ifname, str) or not ifname:
                raise _invalid(key, "entries need a containerID and an ifname")
            seen[(cid, ifname)] = Attachment(cid, ifname)
    if not present:
        # Without a list, "keep nothing" would delete every pod on the node.
        raise _invalid(ATTACHMENT_KEYS[0], "is required for GC (the attachments to keep)")
    return tuple(seen.values())


def build_request(inv: Invocation, environ: Mapping[str, str]) -> tuple[CniRequest, str, float]:
    """The agent request for ``inv``, the socket to send it to, and how long to wait."""
    config = inv.config
    node = node_name(config, environ)
    datastore = config.get("datastore", "")
    if not isinstance(datastore, str):
        raise _invalid("datastore", "must be a URL string")
    pod = inv.args.get("K8S_POD_NAME") or None
    namespace = inv.args.get("K8S_POD_NAMESPACE") or ("default" if pod else None)
    prev = None
    if inv.command in ("ADD", "CHECK") and config.get("prevResult") is not None:
        prev = canonical_result(config["prevResult"])
    if inv.command == "CHECK" and prev is None:
        raise _invalid("prevResult", "is required for CHECK")
    request = CniRequest(
        command=inv.command,
        network=inv.network,
        container_id=inv.container_id,
        netns=inv.netns,
        ifname=inv.ifname,
        node=node,
        datastore=datastore,
        mtu=_mtu(config),
        pod_namespace=namespace,
        pod=pod,
        pools=_pools(config),
        ips=requested_ips(config, inv.args) if inv.command == "ADD" else (),
        prev_result=prev,
        valid_attachments=attachments(config) if inv.command == "GC" else (),
    )
    return request, socket_path(config, node), timeout(config)


def environment_node(environ: Mapping[str, str] | None = None) -> str:
    """The node name install-cni records when given none (same rule as the plugin's)."""
    env = os.environ if environ is None else environ
    return node_name({}, env)
