"""The ``tortie-ipam`` CNI IPAM plugin: tortie's block IPAM for other plugins.

Problem: plugins such as ``bridge`` or ``ptp`` delegate addressing to an IPAM plugin named in
their config's ``ipam`` section. ``tortie-ipam`` gives them tortie's addresses (blocks with
host affinity, handles ``<network>.<containerID>``), so pods of other plugins and tortie's
own share one address space without overlap.

Choice: it talks to the datastore directly, not through the node agent. It is run by other
plugins, often where no tortie agent runs; it has no kernel work; and it is not on tortie's
own fast path (the ``tortie`` plugin has the agent do IPAM in-process). Correctness between
concurrent processes comes from IPAM's compare-and-swap, as between nodes.

Config (``ipam`` section; ``datastore``/``nodename`` may also sit at the top level, as in
tortie's own entry)::

    {"type": "tortie-ipam", "datastore": "sqlite:///...", "nodename": "node-1",
     "ipv4_pools": ["10.244.0.0/16"]}

Verbs: ADD assigns (or returns the handle's existing address: an ADD retried by a runtime
must not leak one); DEL releases by handle (idempotent); CHECK verifies the handle still
holds the prevResult's addresses; GC releases this network's handles on this node that the
runtime no longer lists; STATUS checks the datastore and free addresses. Results are the
IPAM plugin's abbreviated form: ``ips`` (each a /32, no interface index) and ``dns``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from tortie.cni.config import attachments, node_name, requested_ips
from tortie.cni.invocation import (
    answer_version,
    command_of,
    read_invocation,
    read_stdin,
    reported_version,
)
from tortie.cni.spec import canonical_result, shape_result
from tortie.model.cnierrors import CniError, failure_of
from tortie.model.cniwire import Code

DATASTORE_ENV = "TORTIE_DATASTORE"
DEFAULT_DATASTORE = "sqlite:///var/lib/tortie/tortie.db"


def _section(config: Mapping[str, Any]) -> dict[str, Any]:
    ipam = config.get("ipam")
    if not isinstance(ipam, dict):
        raise CniError(Code.INVALID_NETWORK_CONFIG, "invalid network config: no ipam section")
    return ipam


def _setting(config: Mapping[str, Any], key: str) -> Any:
    value = _section(config).get(key)
    return value if value is not None else config.get(key)


def _code_for(exc: Exception) -> CniError:
    """IPAM and datastore errors as CNI errors: the agent's mapping (by type)."""
    return failure_of(exc, "tortie-ipam")


def run(environ: Mapping[str, str], stdin: bytes, stdout: TextIO) -> int:
    try:
        if command_of(environ) == "VERSION":
            stdout.write(answer_version(stdin) + "\n")
            return 0
        inv = read_invocation(environ, stdin)
        result = _serve(inv.command, inv.config, inv.container_id, inv.args, environ)
        if result is not None:
            stdout.write(json.dumps(shape_result(result, inv.cni_version), indent=2) + "\n")
        return 0
    except CniError as err:
        return _fail(err, stdin, stdout)
    except Exception as exc:  # a bug: still answer in the spec's format
        import traceback

        traceback.print_exc()
        return _fail(
            CniError(Code.INTERNAL, f"internal error in tortie-ipam: {exc!r}"), stdin, stdout
        )


def _fail(err: CniError, stdin: bytes, stdout: TextIO) -> int:
    stdout.write(err.to_json(reported_version(stdin)) + "\n")
    sys.stderr.write(f"tortie-ipam: {err.msg}\n")
    return 1


def _serve(
    command: str,
    config: dict[str, Any],
    container_id: str,
    args: Mapping[str, str],
    environ: Mapping[str, str],
) -> dict[str, Any] | None:
    # Validate everything before the (slow) imports and the datastore.
    network = str(config["name"])
    node = node_name({"nodename": _setting(config, "nodename")}, environ)
    url = _setting(config, "datastore") or environ.get(DATASTORE_ENV) or DEFAULT_DATASTORE
    if not isinstance(url, str):
        raise CniError(Code.INVALID_NETWORK_CONFIG, "invalid network config: datastore")
    pools = _section(config).get("ipv4_pools") or []
    if not isinstance(pools, list) or not all(isinstance(p, str) for p in pools):
        raise CniError(Code.INVALID_NETWORK_CONFIG, "invalid network config: ipam.ipv4_pools")
    wanted = requested_ips(config, args) if command == "ADD" else ()
    keep = attachments(config) if command == "GC" else ()
    prev = canonical_result(config.get("prevResult")) if command == "CHECK" else None

    from tortie.datastore.factory import open_datastore
    from tortie.ipam.client import IPAM
    from tortie.model.naming import pod_handle

    try:
        store = open_datastore(url)
    except Exception as exc:
        raise _code_for(exc) from None
    try:
        ipam = IPAM(store)
        handle = pod_handle(container_id, network)
        if command == "ADD":
            return _add(ipam, node=node, handle=handle, pools=pools, args=args, wanted=wanted)
        if command == "DEL":
            ipam.release_by_handle(handle)
        elif command == "CHECK":
            _check(ipam, handle, prev or {})
        elif command == "GC":
            _gc(ipam, node, f"{network}.", {a.container_id for a in keep})
        elif command == "STATUS":
            _status(ipam, node)
        return None
    except CniError:
        raise
    except Exception as exc:
        raise _code_for(exc) from None
    finally:
        store.close()


def _add(
    ipam: Any,
    *,
    node: str,
    handle: str,
    pools: list[str],
    args: Mapping[str, str],
    wanted: tuple[str, ...],
) -> dict[str, Any]:
    held = ipam.addresses_for_handle(handle)
    if not held:
        pod = args.get("K8S_POD_NAME")
        attrs = {"namespace": args.get("K8S_POD_NAMESPACE") or "default", "pod": pod} if pod else {}
        ip = ipaddress.ip_interface(wanted[0]).ip if wanted else None
        held = ipam.assign(node=node, handle=handle, pools=pools or None, attrs=attrs, ip=ip)
    return {
        "ips": [{"address": f"{a}/{a.max_prefixlen}"} for a in held],
        "dns": {},
    }


def _check(ipam: Any, handle: str, prev: dict[str, Any]) -> None:
    held = {str(a) for a in ipam.addresses_for_handle(handle)}
    listed = {str(ipaddress.ip_interface(ip["address"]).ip) for ip in prev.get("ips", [])}
    missing = sorted(listed - held)
    if missing:
        raise CniError(
            Code.CHECK_FAILED,
            f"IPAM no longer holds {', '.join(missing)} for handle {handle}",
        )


def _gc(ipam: Any, node: str, prefix: str, keep: set[str]) -> None:
    stale = set()
    for blk in ipam.store.blocks():
        for _ordinal, attr in blk.value.allocated():
            handle = attr.handle_id or ""
            if (
                handle.startswith(prefix)
                and attr.attrs.get("node") == node
                and handle[len(prefix) :] not in keep
            ):
                stale.add(handle)
    for handle in sorted(stale):
        ipam.release_by_handle(handle)


def _status(ipam: Any, node: str) -> None:
    from tortie.ipam.pools import select_pools

    try:
        candidates = select_pools(
            ipam.view.pools(),
            version=4,
            node=node,
            node_labels=lambda: ipam.view.node_labels(node),
            requested=None,
        )
    except Exception as exc:
        raise CniError(Code.PLUGIN_NOT_AVAILABLE, f"tortie IPAM cannot serve: {exc}") from None
    free = {row.cidr: row.free for row in ipam.usage() if row.grouping == "IP Pool"}
    if not any(free.get(p.spec.cidr, 0) > 0 for p in candidates):
        raise CniError(Code.PLUGIN_NOT_AVAILABLE, "no free addresses in the pools for this node")


def main() -> int:
    try:
        # At most one byte past the limit: read_invocation refuses it then (code 6).
        stdin = b"" if sys.stdin is None or sys.stdin.isatty() else read_stdin(sys.stdin.buffer)
    except CniError as err:
        return _fail(err, b"", sys.stdout)
    status = run(os.environ, stdin, sys.stdout)
    sys.stdout.flush()
    return status
