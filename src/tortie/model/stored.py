"""Stored resource documents recognised as valid without the pydantic models.

Problem: ``tortie get`` is a whole process per call, and importing pydantic and building the
models costs it about 0.1 s (issue 17, item 14: ``get`` must take at most 0.15 s). What the
datastore holds is almost always what tortie wrote: ``to_document()`` of a validated
resource. For such a document the model would give back the very same document, so showing
it needs no model, only the certainty that the model would accept it unchanged.

Invariants:
- :func:`canonical` returns a document (keys in the order ``to_document()`` writes them) only
  if ``Model.from_document(doc)`` succeeds and its ``to_document()`` equals ``doc``; for
  anything else it returns None and the caller must ask the model, which then either accepts
  the document (in a spelling tortie does not write: a missing default, a ``null``, an asdot
  AS number...) or says what is wrong with it. So the fast path can only be slower than
  needed, never wrong: a corrupt entry is still reported by the model, with its key.
- Every document tortie writes (``to_document()`` of a valid resource) is recognised.
- The rules are the models' own (:mod:`tortie.model.rules`); this module mirrors only the
  fields: spelling, order, type, whether the canonical form always has them, bounds.
- Nothing here imports pydantic or the models.

Hazards:
- The field tables below mirror :mod:`tortie.model.resources`. A key the table does not know
  makes the document unrecognised (safe: the model decides). A type, default, bound or
  validator changed in a model and not here could make this recognise a document the model
  refuses: ``tests/unit/model/test_model_stored.py`` compares the tables with the models'
  fields and pins their validators, and checks the invariants above with Hypothesis.
- The canonical form is strict as pydantic's strict mode is: ``26`` is an int, ``26.0`` and
  ``true`` are not; ``null`` and empty lists and maps are never written (``omitempty``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from tortie.model import rules
from tortie.model.errors import ModelError
from tortie.model.fields import (
    API_VERSION,
    REDACTED,
    check_ifname,
    check_labels,
    check_name,
    check_namespace,
    parse_as_number,
    parse_mac,
)
from tortie.model.kindinfo import KINDS

__all__ = ["RESOURCES", "SHAPES", "canonical", "redact_document", "with_resource_version"]

_INT32_MAX = 2**31 - 1

# A check returns the canonical value (nested documents in the models' key order) or raises.
Check = Callable[[Any], Any]


class _UnsureError(Exception):
    """The value is not (or not certainly) what the model would store: ask the model."""


class Field(NamedTuple):
    alias: str  # the document's spelling, as the model's alias
    check: Check
    always: bool  # the canonical form always has it (required, or a non-empty default)


class Shape:
    """One model: its fields in the model's order, and its cross-field rule (the model's
    "after" validators), which sees the fields' canonical values by alias."""

    def __init__(
        self, fields: tuple[Field, ...], rule: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        self.fields = fields
        self.rule = rule
        self.aliases = frozenset(f.alias for f in fields)

    def __call__(self, value: Any) -> dict[str, Any]:
        if type(value) is not dict or not value.keys() <= self.aliases:
            raise _UnsureError
        out: dict[str, Any] = {}
        for f in self.fields:
            if f.alias in value:
                out[f.alias] = f.check(value[f.alias])
            elif f.always:
                raise _UnsureError
        if self.rule is not None:
            self.rule(out)
        return out


def _text(rule: Callable[[str], object] | None = None) -> Check:
    """A string that ``rule`` (a model validator's body) leaves as it is."""

    def check(value: Any) -> str:
        if type(value) is not str or (rule is not None and rule(value) != value):
            raise _UnsureError
        return value

    return check


def _valid_text(rule: Callable[[str], object]) -> Check:
    """A string that ``rule`` accepts (a validator that checks and returns nothing new)."""

    def check(value: Any) -> str:
        if type(value) is not str:
            raise _UnsureError
        rule(value)
        return value

    return check


def _one_of(*choices: str) -> Check:
    def check(value: Any) -> str:
        if type(value) is not str or value not in choices:
            raise _UnsureError
        return value

    return check


def _boolean(value: Any) -> bool:
    if type(value) is not bool:
        raise _UnsureError
    return value


def _integer(lo: int | None = None, hi: int | None = None) -> Check:
    def check(value: Any) -> int:
        if type(value) is not int:
            raise _UnsureError
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise _UnsureError
        return value

    return check


def _as_number(value: Any) -> int:
    # The models' "before" validator turns an asdot string into an int: only ints are canonical.
    if type(value) is not int or parse_as_number(value) != value:
        raise _UnsureError
    return value


def _list(item: Check, rule: Callable[[list[Any]], object] | None = None) -> Check:
    """A non-empty list (an empty one is never written) of ``item``s that ``rule`` keeps."""

    def check(value: Any) -> list[Any]:
        if type(value) is not list or not value:
            raise _UnsureError
        out = [item(v) for v in value]
        if rule is not None and rule(out) != out:
            raise _UnsureError
        return out

    return check


def _text_map(rule: Callable[[dict[str, str]], object]) -> Check:
    """A non-empty map of strings to strings that ``rule`` keeps."""

    def check(value: Any) -> dict[str, str]:
        if type(value) is not dict or not value:
            raise _UnsureError
        if not all(type(k) is str and type(v) is str for k, v in value.items()):
            raise _UnsureError
        if rule(value) != value:
            raise _UnsureError
        return value

    return check


def _required(alias: str, check: Check) -> Field:
    return Field(alias, check, True)


def _optional(alias: str, check: Check) -> Field:
    return Field(alias, check, False)


# -- the models' fields (tortie.model.resources), in their order ------------------------------


def _no_resource_version(value: Any) -> Any:
    raise _UnsureError  # never stored (the revision is the resource version): a stored one is odd


_META_FIELDS = (
    _required("name", _text(check_name)),
    _optional("namespace", _text(check_namespace)),
    _optional("labels", _text_map(check_labels)),
    _optional("annotations", _text_map(rules.check_annotations)),
    _optional("resourceVersion", _no_resource_version),
    _optional("uid", _text()),
    _optional("creationTimestamp", _text()),
)
META_ORDER = tuple(f.alias for f in _META_FIELDS)

_MODES = ("Never", "CrossSubnet", "Always")

_IPPOOL_SPEC = Shape(
    (
        _required("cidr", _text(rules.pool_cidr)),
        _required("blockSize", _integer()),  # its range is the pool rule's
        _required("ipipMode", _one_of(*_MODES)),
        _required("vxlanMode", _one_of(*_MODES)),
        _required("natOutgoing", _boolean),
        _required("disabled", _boolean),
        _required("nodeSelector", _text(rules.pool_node_selector)),
        _required("allowedUses", _list(_one_of(*rules.ALLOWED_USES), rules.allowed_uses)),
    ),
    lambda s: rules.check_pool(s["cidr"], s["blockSize"], s["ipipMode"], s["vxlanMode"]),
)

_IPAMCONFIG_SPEC = Shape(
    (
        _required("strictAffinity", _boolean),
        _required("maxBlocksPerHost", _integer(0, _INT32_MAX)),
    )
)

_NODE_BGP = Shape(
    (
        _optional("ipv4Address", _text(lambda v: rules.interface_text(v, 4))),
        _optional("ipv6Address", _text(lambda v: rules.interface_text(v, 6))),
        _optional("asNumber", _as_number),
        _optional("ipv4IPIPTunnelAddr", _text(lambda v: rules.ip_text(v, 4))),
        _optional("routeReflectorClusterID", _text(lambda v: rules.ip_text(v, 4))),
    )
)
_ORCH_REF = Shape((_required("orchestrator", _text()), _optional("nodeName", _text())))
_NODE_ADDRESS = Shape(
    (
        _required("address", _text(rules.node_address)),
        _optional("type", _one_of("CalicoNodeIP", "InternalIP", "ExternalIP")),
    )
)
_NODE_SPEC = Shape(
    (
        _optional("bgp", _NODE_BGP),
        _optional("ipv4VXLANTunnelAddr", _text(lambda v: rules.ip_text(v, 4))),
        _optional("vxlanTunnelMACAddr", _text(parse_mac)),
        _optional("orchRefs", _list(_ORCH_REF)),
        _optional("addresses", _list(_NODE_ADDRESS)),
    )
)
_NODE_STATUS = Shape((_optional("podCIDRs", _list(_text(), rules.pod_cidrs)),))
_META = Shape(_META_FIELDS)

_BGPCONFIG_SPEC = Shape(
    (
        _required("logSeverityScreen", _one_of("Debug", "Info", "Warning", "Error", "Fatal")),
        _required("nodeToNodeMeshEnabled", _boolean),
        _required("asNumber", _as_number),
        _required("listenPort", _integer(1, 65535)),
    )
)

_SECRET_KEY_REF = Shape((_required("name", _text()), _required("key", _text())))
_PASSWORD = Shape(
    (_optional("secretKeyRef", _SECRET_KEY_REF), _optional("value", _text())),
    lambda p: rules.check_password("secretKeyRef" in p, p.get("value")),
)
_BGPPEER_SPEC = Shape(
    (
        _optional("node", _text(lambda v: check_name(v, "node name"))),
        _optional("nodeSelector", _text(rules.optional_selector)),
        _optional("peerIP", _text(rules.peer_ip)),
        _optional("asNumber", _as_number),
        _optional("peerSelector", _text(rules.optional_selector)),
        _optional("password", _PASSWORD),
        _optional("keepaliveTime", _valid_text(rules.check_keepalive)),
        _optional("holdTime", _valid_text(rules.check_hold)),
    ),
    lambda s: rules.check_peer(
        peer_ip=s.get("peerIP"),
        peer_selector=s.get("peerSelector"),
        as_number=s.get("asNumber"),
        node=s.get("node"),
        node_selector=s.get("nodeSelector"),
        keepalive_time=s.get("keepaliveTime"),
        hold_time=s.get("holdTime"),
    ),
)

_WEP_SPEC = Shape(
    (
        _required("orchestrator", _text()),
        _optional("workload", _text()),
        _required("node", _text(lambda v: check_name(v, "node name"))),
        _optional("containerID", _text()),
        _optional("pod", _text()),
        _required("endpoint", _text()),
        _required("interfaceName", _text(check_ifname)),
        _optional("mac", _text(parse_mac)),
        _optional("ipNetworks", _list(_text(), rules.ip_networks)),
        _optional("profiles", _list(_text())),
        _optional("serviceAccountName", _text()),
    )
)


def _endpoint_name(doc: dict[str, Any]) -> None:
    spec = doc["spec"]
    rules.check_endpoint_name(
        doc["metadata"]["name"],
        node=spec["node"],
        orchestrator=spec["orchestrator"],
        endpoint=spec["endpoint"],
        identifier=rules.endpoint_identifier(
            spec["orchestrator"],
            pod=spec.get("pod"),
            container_id=spec.get("containerID"),
            workload=spec.get("workload"),
        ),
    )


def _resource(
    kind: str,
    spec: Shape,
    *,
    status: Shape | None = None,
    rule: Callable[[dict[str, Any]], None] | None = None,
) -> Shape:
    namespaced = KINDS[kind].namespaced
    # A namespaced kind's namespace is filled in ("default"), so its canonical form has one.
    meta_fields = tuple(
        Field(f.alias, f.check, namespaced) if f.alias == "namespace" else f for f in _META_FIELDS
    )
    meta = Shape(meta_fields, lambda m: rules.check_scope(kind, namespaced, m.get("namespace")))
    fields = [
        _required("apiVersion", _one_of(API_VERSION)),
        _required("kind", _one_of(kind)),
        _required("metadata", meta),
        _required("spec", spec),  # to_document() writes it even when empty
    ]
    if status is not None:
        fields.append(_optional("status", status))
    return Shape(tuple(fields), rule)


RESOURCES: Mapping[str, Shape] = {
    "IPPool": _resource("IPPool", _IPPOOL_SPEC),
    "IPAMConfiguration": _resource(
        "IPAMConfiguration",
        _IPAMCONFIG_SPEC,
        rule=lambda d: rules.check_ipam_config_name(d["metadata"]["name"]),
    ),
    "Node": _resource("Node", _NODE_SPEC, status=_NODE_STATUS),
    "BGPConfiguration": _resource("BGPConfiguration", _BGPCONFIG_SPEC),
    "BGPPeer": _resource("BGPPeer", _BGPPEER_SPEC),
    "WorkloadEndpoint": _resource("WorkloadEndpoint", _WEP_SPEC, rule=_endpoint_name),
}


def canonical(kind: str, doc: object) -> dict[str, Any] | None:
    """``doc`` in ``to_document()``'s key order if the model of ``kind`` (exact spelling)
    would accept it and give it back unchanged; None when only the model can tell."""
    try:
        return RESOURCES[kind](doc)
    except (_UnsureError, ValueError, ModelError):
        # ValueError: FieldError (a rule refused the value) and what the parsers raise.
        return None


def with_resource_version(doc: Mapping[str, Any], version: str) -> dict[str, Any]:
    """``doc`` (canonical) with ``metadata.resourceVersion``, where ``to_document()`` puts it."""
    meta = dict(doc["metadata"], resourceVersion=version)
    out = dict(doc)
    out["metadata"] = {k: meta[k] for k in META_ORDER if k in meta}
    return out


def redact_document(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    """``doc`` as shown to people: a BGPPeer's password value replaced by :data:`REDACTED`
    (``doc`` itself when there is nothing to hide); the document form of
    :func:`tortie.model.resources.redact_secrets`."""
    spec = doc.get("spec")
    if doc.get("kind") != "BGPPeer" or not isinstance(spec, Mapping):
        return doc
    password = spec.get("password")
    if not isinstance(password, Mapping) or password.get("value") is None:
        return doc
    return {**doc, "spec": {**spec, "password": {"value": REDACTED}}}


# Each model's shape by the model's class name (tests compare them with the models).
SHAPES: Mapping[str, Shape] = {
    "ObjectMeta": _META,
    "IPPoolSpec": _IPPOOL_SPEC,
    "IPAMConfigurationSpec": _IPAMCONFIG_SPEC,
    "NodeBGPSpec": _NODE_BGP,
    "OrchRef": _ORCH_REF,
    "NodeAddress": _NODE_ADDRESS,
    "NodeSpec": _NODE_SPEC,
    "NodeStatus": _NODE_STATUS,
    "BGPConfigurationSpec": _BGPCONFIG_SPEC,
    "SecretKeyRef": _SECRET_KEY_REF,
    "BGPPassword": _PASSWORD,
    "BGPPeerSpec": _BGPPEER_SPEC,
    "WorkloadEndpointSpec": _WEP_SPEC,
    **RESOURCES,
}
