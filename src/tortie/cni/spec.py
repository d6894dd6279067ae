"""What the CNI specification says about versions, errors, names and results (stdlib only).

Problem: runtimes speak different CNI versions (containerd 1.6: up to 1.0.0; podman 4.3 with
CNI: the conflist's version, rejecting 1.1.0 results; the reference plugins: up to 1.0.0),
and each version has its own result shape and its own verbs. The plugin must answer each in
its own dialect, and report every failure as the spec's error JSON with the spec's code.

Invariants:
- Supported versions: :data:`SUPPORTED_VERSIONS`. CHECK needs >= 0.4.0, GC and STATUS
  >= 1.1.0 (as libcni's skel enforces); an older config gets code 1.
- Results are kept in one canonical shape (CNI 1.0.0, no ``cniVersion``) and converted only
  when printed (:func:`shape_result`) or read (:func:`canonical_result`). 0.3.x/0.4.0 add
  ``version`` to each IP; 1.1.0 may carry interface ``mtu``, which older versions drop.
- Validation follows libcni's rules (container ID, interface name, network name), so tortie
  refuses exactly what the reference plugins refuse, with the same codes.

Hazard: this module is imported by the per-pod plugin process; it must stay stdlib-only and
import nothing heavy (no typing, re or json at run time; no ipaddress: the agent checks
addresses).
"""

from __future__ import annotations

from tortie.model.cnierrors import CniError
from tortie.model.cniwire import Code

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SUPPORTED_VERSIONS = ("0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = "1.1.0"

# libcni: "must start with an alphanumeric character, optionally followed by any combination
# of one or more alphanumeric characters, underscore, dot or hyphen" (container IDs and
# network names alike). Checked without ``re``, whose import costs the plugin ~12 ms.
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_ID_CHARS = _ALNUM | frozenset("_.-")


def _is_id(text: str) -> bool:
    return bool(text) and text[0] in _ALNUM and all(c in _ID_CHARS for c in text)


IFNAME_MAX = 15


def version_tuple(version: str) -> tuple[int, int, int]:
    """``"1.0.0"`` -> (1, 0, 0); raises CniError(1) for anything that is not x.y.z."""
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise CniError(Code.INCOMPATIBLE_VERSION, f"invalid cniVersion {version!r}")
    return int(parts[0]), int(parts[1]), int(parts[2])


def check_version(version: object, command: str) -> str:
    """The config's cniVersion if this plugin supports it for ``command``; else CniError(1)."""
    if not isinstance(version, str) or not version:
        raise CniError(
            Code.INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            f"the network config has no cniVersion; plugin supports {list(SUPPORTED_VERSIONS)}",
        )
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            Code.INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            f'config is "{version}", plugin supports {list(SUPPORTED_VERSIONS)}',
        )
    minimum = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}.get(command)
    if minimum is not None and version_tuple(version) < version_tuple(minimum):
        raise CniError(
            Code.INCOMPATIBLE_VERSION,
            f"config version does not allow {command}",
            f'{command} needs cniVersion {minimum} or later; the config is "{version}"',
        )
    return version


def check_container_id(container_id: str) -> str:
    if not _is_id(container_id):
        raise CniError(
            Code.INVALID_ENVIRONMENT,
            "invalid characters in CNI_CONTAINERID",
            f"{container_id!r}: must start with a letter or digit, then letters, digits, "
            "'_', '.' or '-'",
        )
    return container_id


def check_ifname(ifname: str) -> str:
    bad = (
        not ifname
        or ifname in (".", "..")
        or len(ifname) > IFNAME_MAX
        or any(c in "/:" or c.isspace() for c in ifname)
    )
    if bad:
        raise CniError(
            Code.INVALID_ENVIRONMENT,
            "invalid CNI_IFNAME",
            f"{ifname!r}: an interface name is 1-{IFNAME_MAX} characters, not '.' or '..', "
            "without '/', ':' or whitespace",
        )
    return ifname


def check_network_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise CniError(Code.INVALID_NETWORK_CONFIG, "missing network name")
    if not _is_id(name):
        raise CniError(
            Code.INVALID_NETWORK_CONFIG,
            "invalid characters found in network name",
            f"{name!r}: must start with a letter or digit, then letters, digits, '_', '.' or '-'",
        )
    return name


def parse_cni_args(text: str) -> dict[str, str]:
    """``CNI_ARGS`` ("K=V;K2=V2") as a dict; empty segments are ignored."""
    out: dict[str, str] = {}
    for item in text.split(";"):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CniError(
                Code.INVALID_ENVIRONMENT,
                "invalid CNI_ARGS",
                f"{item!r} is not KEY=VALUE (CNI_ARGS is KEY=VALUE pairs separated by ';')",
            )
        out[key] = value
    return out


def get_ci(mapping: dict[str, Any], key: str) -> Any:
    """``mapping[key]`` matching the key case-insensitively (runtimes differ: containerd
    capitalises runtimeConfig keys, podman does not)."""
    if key in mapping:
        return mapping[key]
    folded = key.casefold()
    for k, v in mapping.items():
        if isinstance(k, str) and k.casefold() == folded:
            return v
    return None


# --------------------------------------------------------------------------------------------
# Results


def _ip_version(address: str) -> str:
    return "6" if ":" in address else "4"


def shape_result(canonical: dict[str, Any], version: str) -> dict[str, Any]:
    """The canonical (1.0.0-shaped) result as CNI ``version`` prints it."""
    legacy = version_tuple(version) < (1, 0, 0)
    modern_fields = version_tuple(version) >= (1, 1, 0)
    out: dict[str, Any] = {"cniVersion": version}
    interfaces = []
    for iface in canonical.get("interfaces") or []:
        item = dict(iface)
        if not modern_fields:
            for key in ("mtu", "socketPath", "pciID"):
                item.pop(key, None)
        interfaces.append(item)
    if interfaces:
        out["interfaces"] = interfaces
    ips = []
    for ip in canonical.get("ips") or []:
        item = dict(ip)
        if legacy:
            item = {"version": _ip_version(str(item.get("address", ""))), **item}
        ips.append(item)
    if ips:
        out["ips"] = ips
    routes = []
    for route in canonical.get("routes") or []:
        item = dict(route)
        if not modern_fields:
            item = {k: v for k, v in item.items() if k in ("dst", "gw")}
        routes.append(item)
    if routes:
        out["routes"] = routes
    out["dns"] = dict(canonical.get("dns") or {})
    return out


def canonical_result(doc: object) -> dict[str, Any]:
    """A result (a prevResult) of any supported version in the canonical shape.

    Raises CniError(6) for something that is not a result, CniError(1) for a 0.1/0.2 result
    (``ip4``/``ip6``), which no supported version uses.
    """
    if not isinstance(doc, dict):
        raise CniError(Code.DECODE_FAILURE, "prevResult is not a JSON object")
    if "ip4" in doc or "ip6" in doc:
        raise CniError(
            Code.INCOMPATIBLE_VERSION,
            "prevResult is a CNI 0.2.0 result",
            f"plugin supports {list(SUPPORTED_VERSIONS)}",
        )
    out: dict[str, Any] = {}
    for key, kind in (("interfaces", list), ("ips", list), ("routes", list), ("dns", dict)):
        value = doc.get(key)
        if value is None:
            continue
        if not isinstance(value, kind) or (
            kind is list and not all(isinstance(v, dict) for v in value)
        ):
            raise CniError(Code.DECODE_FAILURE, f"prevResult.{key} has the wrong shape")
        out[key] = value
    out["ips"] = [{k: v for k, v in ip.items() if k != "version"} for ip in out.get("ips", [])]
    return out


def merge_results(prev: dict[str, Any] | None, ours: dict[str, Any]) -> dict[str, Any]:
    """Append our result to a previous plugin's (both canonical), keeping theirs intact.

    Our IPs' interface indexes are shifted past the previous interfaces, so they still point
    at our interfaces. DNS: the previous plugin's wins if it set any.
    """
    if not prev:
        return ours
    prev_ifaces = list(prev.get("interfaces") or [])
    shift = len(prev_ifaces)
    our_ips = []
    for ip in ours.get("ips") or []:
        item = dict(ip)
        if isinstance(item.get("interface"), int):
            item["interface"] += shift
        our_ips.append(item)
    return {
        "interfaces": prev_ifaces + list(ours.get("interfaces") or []),
        "ips": list(prev.get("ips") or []) + our_ips,
        "routes": list(prev.get("routes") or []) + list(ours.get("routes") or []),
        "dns": dict(prev.get("dns") or {}) or dict(ours.get("dns") or {}),
    }
