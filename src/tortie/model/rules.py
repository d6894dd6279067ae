"""The rules of Calico resources beyond their types, as plain functions.

Problem: the pydantic models (:mod:`tortie.model.resources`) enforce these rules when a
resource is validated, and :mod:`tortie.model.stored` checks stored documents against the
same rules without pydantic (a reading command must not pay ~0.1 s for the models). Written
twice, the two would drift apart; so the rules live here once, and both call them.

Invariants:
- Every function raises :class:`~tortie.model.fields.FieldError` with the message (and the
  field path, relative to the model that calls it) a user sees; the functions that return a
  value return it normalised, as the model stores it.
- Nothing here imports pydantic or the models.

Hazards:
- A rule changed here changes both the models and the stored-document check, which is the
  point; a rule added to a model without going through here is invisible to the check
  (``tests/unit/model/test_model_stored.py`` pins every model's validators to catch that).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from datetime import timedelta

from tortie.model.errors import ModelError, SelectorError
from tortie.model.fields import (
    FieldError,
    IPAddress,
    check_label_key,
    is_decimal,
    parse_cidr,
    parse_cidr_or_ip,
    parse_go_duration,
    parse_interface,
    parse_ip,
    show,
)
from tortie.model.selector import Selector

ALLOWED_USES = ("Workload", "Tunnel")
# Kubernetes' TotalAnnotationSizeLimitB (apimachinery's ValidateAnnotationsSize): the sum of
# the UTF-8 lengths of every annotation key and value (docs/limits.md).
MAX_ANNOTATIONS_BYTES = 256 * 1024

_LINK_LOCAL_V4 = "169.254.0.0/16"
_LINK_LOCAL_V6 = "fe80::/10"


# --------------------------------------------------------------------------------------------
# Shared


def selector_text(text: str) -> str:
    """A selector, kept as written once it parses."""
    try:
        Selector.parse(text)
    except SelectorError as exc:
        raise FieldError(
            f"invalid selector {text!r} at column {exc.column}: {exc.reason}"
        ) from None
    return text


def whole_seconds(text: str, lo: int, hi: int, what: str) -> timedelta:
    delta = parse_go_duration(text)
    seconds = delta.total_seconds()
    if seconds != int(seconds):
        raise FieldError(f"{show(text)} is not a whole number of seconds ({what} is in seconds)")
    if not lo <= seconds <= hi:
        raise FieldError(f"{show(text)} is out of range: {what} is {lo}s..{hi}s")
    return delta


def interface_text(text: str, version: int) -> str:
    """An interface address (``192.168.49.2/24``) of one family, normalised."""
    return str(parse_interface(text, version))


def ip_text(text: str, version: int | None = None) -> str:
    """An address without prefix, normalised."""
    return str(parse_ip(text, version))


# --------------------------------------------------------------------------------------------
# ObjectMeta


def check_annotations(annotations: dict[str, str]) -> dict[str, str]:
    total = 0
    for key, value in annotations.items():
        check_label_key(key)
        total += len(key.encode()) + len(value.encode())
    if total > MAX_ANNOTATIONS_BYTES:
        raise FieldError(
            f"the annotations take {total} bytes; the limit is {MAX_ANNOTATIONS_BYTES} "
            "(256 KiB, keys and values together, as in Kubernetes): keep large data elsewhere"
        )
    return annotations


def check_scope(kind: str, namespaced: bool, namespace: str | None) -> None:
    if not namespaced and namespace is not None:
        raise FieldError(
            f"{kind} is not namespaced; remove metadata.namespace", "metadata.namespace"
        )


# --------------------------------------------------------------------------------------------
# IPPool


def default_uses() -> list[str]:
    return list(ALLOWED_USES)


def pool_cidr(text: str) -> str:
    net = parse_cidr(text)
    link_local = ipaddress.ip_network(_LINK_LOCAL_V4 if net.version == 4 else _LINK_LOCAL_V6)
    if net.overlaps(link_local):
        raise FieldError(
            f"{net} overlaps the link-local range {link_local}, which Calico reserves; "
            "choose another range"
        )
    return str(net)


def pool_node_selector(text: str) -> str:
    return selector_text(text) if text.strip() else "all()"


def allowed_uses(uses: list[str]) -> list[str]:
    if not uses:
        return default_uses()  # Calico: empty means the default
    if len(set(uses)) != len(uses):
        raise FieldError(f"{', '.join(uses)} lists a use twice")
    return uses


def check_pool(cidr: str, block_size: int, ipip_mode: str, vxlan_mode: str) -> None:
    net = ipaddress.ip_network(cidr)
    lo, hi = (20, 32) if net.version == 4 else (116, 128)
    if not lo <= block_size <= hi:
        raise FieldError(
            f"{block_size} is out of range: IPv{net.version} block sizes are {lo}..{hi}",
            "blockSize",
        )
    if block_size < net.prefixlen:
        raise FieldError(
            f"/{block_size} blocks do not fit in the pool {net}: use a blockSize of at "
            f"least {net.prefixlen}, or a larger pool",
            "blockSize",
        )
    if ipip_mode != "Never" and vxlan_mode != "Never":
        raise FieldError(
            "ipipMode and vxlanMode cannot both be enabled; set one of them to Never",
            "vxlanMode",
        )
    if ipip_mode != "Never" and net.version == 6:
        raise FieldError("IPIP is IPv4-only; use vxlanMode for an IPv6 pool, or Never", "ipipMode")


# --------------------------------------------------------------------------------------------
# IPAMConfiguration


def check_ipam_config_name(name: str) -> None:
    if name != "default":
        raise FieldError(
            f"{name!r}: IPAMConfiguration is a singleton and must be named 'default'",
            "metadata.name",
        )


# --------------------------------------------------------------------------------------------
# Node


def node_address(text: str) -> str:
    return str(parse_interface(text)) if "/" in text else str(parse_ip(text))


def pod_cidrs(cidrs: list[str]) -> list[str]:
    return [str(parse_cidr(c)) for c in cidrs]


# --------------------------------------------------------------------------------------------
# BGPPeer


def check_password(has_secret_key_ref: bool, value: str | None) -> None:
    if has_secret_key_ref == (value is not None):
        raise FieldError("give exactly one of secretKeyRef or value")
    if value is not None and not value:
        raise FieldError("the password is empty", "value")


def optional_selector(text: str | None) -> str | None:
    # Calico treats an empty selector field as unset.
    return selector_text(text) if text is not None and text.strip() else None


def peer_ip(text: str) -> str:
    addr, port = split_peer_ip(text)
    if port is None:
        return str(addr)
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


def split_peer_ip(text: str) -> tuple[IPAddress, int | None]:
    """``10.0.0.1``, ``10.0.0.1:179``, ``fd00::1``, ``[fd00::1]:179`` -> (address, port)."""
    host, port_text = text, None
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise FieldError(f"{show(text)} is not valid: write [IPv6]:port")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    addr = parse_ip(host)
    if port_text is None:
        return addr, None
    if not is_decimal(port_text) or not 1 <= int(port_text) <= 65535:
        raise FieldError(f"{show(text)}: port must be 1..65535")
    return addr, int(port_text)


def check_keepalive(text: str) -> None:
    whole_seconds(text, 1, 65535, "keepaliveTime")


def check_hold(text: str) -> None:
    hold = whole_seconds(text, 0, 65535, "holdTime")
    if timedelta(0) < hold < timedelta(seconds=3):
        raise FieldError(f"{show(text)} is too short: holdTime is 0 (no keepalives) or at least 3s")


def check_peer(
    *,
    peer_ip: str | None,
    peer_selector: str | None,
    as_number: int | None,
    node: str | None,
    node_selector: str | None,
    keepalive_time: str | None,
    hold_time: str | None,
) -> None:
    if peer_ip is not None and peer_selector is not None:
        raise FieldError(
            "cannot be used together with peerIP: a peer is an address or a selector",
            "peerSelector",
        )
    if peer_ip is None and peer_selector is None:
        raise FieldError("one of peerIP or peerSelector is required")
    if peer_ip is not None and as_number is None:
        raise FieldError("required with peerIP: the peer's AS number", "asNumber")
    if peer_selector is not None and as_number is not None:
        raise FieldError(
            "must not be set with peerSelector: the selected nodes' own AS numbers are used",
            "asNumber",
        )
    if node is not None and node_selector is not None:
        raise FieldError("cannot be used together with node; use one of them", "nodeSelector")
    keepalive = None if keepalive_time is None else parse_go_duration(keepalive_time)
    hold = None if hold_time is None else parse_go_duration(hold_time)
    if keepalive is not None and hold is not None and hold and keepalive >= hold:
        raise FieldError(
            f"{keepalive_time} must be shorter than holdTime ({hold_time})", "keepaliveTime"
        )


# --------------------------------------------------------------------------------------------
# WorkloadEndpoint


def ip_networks(texts: Sequence[str]) -> list[str]:
    out: list[str] = []
    for i, text in enumerate(texts):
        try:
            out.append(str(parse_cidr_or_ip(text)))
        except FieldError as exc:
            raise FieldError(exc.message, f"[{i}]") from None
    return out


def endpoint_identifier(
    orchestrator: str, *, pod: str | None, container_id: str | None, workload: str | None
) -> tuple[str, str | None]:
    """The name segment after the orchestrator: (its field name, its value)."""
    if orchestrator == "k8s":
        return "pod", pod
    if orchestrator == "cni":
        return "containerID", container_id
    if orchestrator == "libnetwork":
        return "orchestrator", orchestrator
    return "workload", workload


def check_endpoint_name(
    name: str, *, node: str, orchestrator: str, endpoint: str, identifier: tuple[str, str | None]
) -> None:
    field, ident = identifier
    if ident is None:
        raise FieldError(
            f"required for orchestrator {orchestrator!r} (it is part of the endpoint's name)",
            f"spec.{field}",
        )
    try:
        expected = workload_endpoint_name(node, orchestrator, ident, endpoint)
    except ModelError as exc:
        raise FieldError(str(exc), "spec") from None
    if name != expected:
        raise FieldError(
            f"{name!r} does not match the spec: Calico names this endpoint {expected!r}",
            "metadata.name",
        )


def _escape_segment(value: str, what: str) -> str:
    if not value:
        raise FieldError(f"{what} is empty")
    if value.startswith("-") or value.endswith("-"):
        raise FieldError(f"{show(value)}: {what} must not begin or end with '-'")
    return value.replace("-", "--")


def workload_endpoint_name(node: str, orchestrator: str, pod: str, endpoint: str) -> str:
    """Calico's WorkloadEndpoint name: ``<node>-<orchestrator>-<pod>-<endpoint>``.

    Each part has its '-' doubled, e.g. ``node-1``, ``k8s``, ``web-0``, ``eth0`` gives
    ``node--1-k8s-web--0-eth0``. ``pod`` is the third identifier: the pod name for ``k8s``,
    the container ID for ``cni``, the workload otherwise (for ``libnetwork`` Calico repeats
    the orchestrator here). Raises :class:`ModelError` for an empty part or one that begins
    or ends with '-'.
    """
    parts = ((node, "node"), (orchestrator, "orchestrator"), (pod, "pod"), (endpoint, "endpoint"))
    try:
        return "-".join(_escape_segment(value, what) for value, what in parts)
    except FieldError as exc:
        raise ModelError(f"cannot build a workload endpoint name: {exc.message}") from None
