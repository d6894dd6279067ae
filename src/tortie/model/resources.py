"""Calico v3 resources as immutable pydantic models.

Problem: users apply the Calico manifests they already have (``apiVersion:
projectcalico.org/v3``, ``kind``, ``metadata``, ``spec`` with Calico's camelCase names and
defaults). Every other layer of tortie works with these models, so they must reject anything
invalid with a precise message and serialise back to exactly Calico's shape.

Invariants:
- Models are frozen; Python attributes are snake_case, documents camelCase (aliases). Either
  spelling is accepted on input (``populate_by_name``); unknown fields are errors.
- A model that exists is valid: defaults are filled (``blockSize`` 26 or 122 by family,
  ``allowedUses`` [Workload, Tunnel], ``nodeSelector`` all(), a WorkloadEndpoint's namespace
  ``default``) and values are normalised (CIDRs masked and compressed, MACs lowercase, peer
  IPs canonical), so equal resources compare and serialise equally.
- ``to_document()`` gives keys in the order apiVersion, kind, metadata, spec (, status);
  it omits ``None`` and empty lists/maps (as Calico's ``omitempty`` does) and keeps every
  other default, so ``from_document(r.to_document()) == r``.
- ``from_document`` validates strictly (``"26"`` is not an integer, ``"true"`` not a
  boolean, as in Calico) and raises :class:`tortie.model.errors.ValidationError`.

Hazards:
- Constructing models in Python (``IPPool(metadata=..., spec=...)``) raises
  ``pydantic.ValidationError`` on bad input: that is a programming error. Data from users goes
  through :meth:`Resource.from_document` (or the loader), which translates errors.
- ``frozen`` does not freeze the lists/dicts inside; never mutate them.
- ``BGPPassword.value`` is a plain-text secret: it is hidden from ``repr`` but
  ``to_document`` writes it out (it must be stored). What is shown to people goes through
  :func:`redact_secrets`, which puts :data:`REDACTED` in its place; the datastore layer reads
  that marker back as "keep the stored password", so it can never become a password.
- ``metadata.annotations`` hold at most 256 KiB in total (keys and values, UTF-8), as
  Kubernetes' ``TotalAnnotationSizeLimitB``; the whole stored resource has its own limit
  (:mod:`tortie.model.validation`).
- Choices documented here: ``IPAMConfiguration.maxBlocksPerHost`` 0 means unlimited (as in
  Calico's IPAM); ``BGPPeer`` requires ``asNumber`` with ``peerIP``; BGP timers are whole
  seconds. Fields Calico has but tortie does not implement are rejected with "not supported
  by tortie" rather than silently ignored.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, ClassVar, Literal, Self

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tortie.model.errors import ModelError, SelectorError, ValidationError
from tortie.model.fields import (
    API_VERSION,
    FieldError,
    IPAddress,
    IPNetwork,
    check_ifname,
    check_label_key,
    check_labels,
    check_name,
    check_namespace,
    is_decimal,
    parse_as_number,
    parse_cidr,
    parse_cidr_or_ip,
    parse_go_duration,
    parse_interface,
    parse_ip,
    parse_mac,
    show,
)
from tortie.model.selector import Selector
from tortie.model.translate import translate

__all__ = [
    "API_VERSION",
    "MAX_ANNOTATIONS_BYTES",
    "REDACTED",
    "BGPConfiguration",
    "BGPConfigurationSpec",
    "BGPPassword",
    "BGPPeer",
    "BGPPeerSpec",
    "EncapMode",
    "IPAMConfiguration",
    "IPAMConfigurationSpec",
    "IPPool",
    "IPPoolSpec",
    "Node",
    "NodeAddress",
    "NodeBGPSpec",
    "NodeSpec",
    "NodeStatus",
    "ObjectMeta",
    "OrchRef",
    "Resource",
    "SecretKeyRef",
    "WorkloadEndpoint",
    "WorkloadEndpointSpec",
    "is_redacted",
    "parse_workload_endpoint_name",
    "redact_secrets",
    "workload_endpoint_name",
]

EncapMode = Literal["Never", "CrossSubnet", "Always"]
AllowedUse = Literal["Workload", "Tunnel"]
LogSeverity = Literal["Debug", "Info", "Warning", "Error", "Fatal"]

_LINK_LOCAL_V4 = "169.254.0.0/16"
_LINK_LOCAL_V6 = "fe80::/10"
_INT32_MAX = 2**31 - 1

# Kubernetes' TotalAnnotationSizeLimitB (apimachinery's ValidateAnnotationsSize): the sum of
# the UTF-8 lengths of every annotation key and value (docs/limits.md).
MAX_ANNOTATIONS_BYTES = 256 * 1024
# What 'tortie get' prints instead of a secret (and what apply reads as "keep the stored one").
REDACTED = "<redacted>"


class _Model(BaseModel):
    """Shared configuration: frozen, no unknown fields, either spelling accepted."""

    # defer_build: building validators for every model at import would slow down every
    # short-lived process (the CNI plugin) that imports the model but validates little.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True, defer_build=True)

    # Calico field names that tortie deliberately does not implement (better message).
    CALICO_UNSUPPORTED: ClassVar[frozenset[str]] = frozenset()


def _selector_text(text: str) -> str:
    try:
        Selector.parse(text)
    except SelectorError as exc:
        raise FieldError(
            f"invalid selector {text!r} at column {exc.column}: {exc.reason}"
        ) from None
    return text


def _whole_seconds(text: str, lo: int, hi: int, what: str) -> timedelta:
    delta = parse_go_duration(text)
    seconds = delta.total_seconds()
    if seconds != int(seconds):
        raise FieldError(f"{show(text)} is not a whole number of seconds ({what} is in seconds)")
    if not lo <= seconds <= hi:
        raise FieldError(f"{show(text)} is out of range: {what} is {lo}s..{hi}s")
    return delta


# --------------------------------------------------------------------------------------------
# Metadata


class ObjectMeta(_Model):
    """Kubernetes-style metadata; Calico resources use only these fields."""

    name: str
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    resource_version: str | None = Field(None, alias="resourceVersion")
    uid: str | None = None
    creation_timestamp: str | None = Field(None, alias="creationTimestamp")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v)

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str | None) -> str | None:
        return None if v is None else check_namespace(v)

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        return check_labels(v)

    @field_validator("annotations")
    @classmethod
    def _annotations(cls, v: dict[str, str]) -> dict[str, str]:
        total = 0
        for key, value in v.items():
            check_label_key(key)
            total += len(key.encode()) + len(value.encode())
        if total > MAX_ANNOTATIONS_BYTES:
            raise FieldError(
                f"the annotations take {total} bytes; the limit is {MAX_ANNOTATIONS_BYTES} "
                "(256 KiB, keys and values together, as in Kubernetes): keep large data elsewhere"
            )
        return v

    @field_validator("resource_version", mode="before")
    @classmethod
    def _resource_version(cls, v: object) -> object:
        # Datastore revisions are numbers; an unquoted one in YAML is still meant as text.
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v


# --------------------------------------------------------------------------------------------
# The resource base class


class Resource(_Model):
    """Base of every Calico resource: ``apiVersion``, ``kind``, ``metadata``, ``spec``.

    Subclasses set ``KIND`` (Calico's kind), ``PLURAL`` (the lowercase plural used in
    datastore keys) and ``NAMESPACED``.
    """

    KIND: ClassVar[str] = ""
    PLURAL: ClassVar[str] = ""
    NAMESPACED: ClassVar[bool] = False

    api_version: Literal["projectcalico.org/v3"] = Field("projectcalico.org/v3", alias="apiVersion")
    kind: str
    metadata: ObjectMeta
    spec: _Model

    @model_validator(mode="after")
    def _scope(self) -> Self:
        if not self.NAMESPACED and self.metadata.namespace is not None:
            raise FieldError(
                f"{self.KIND} is not namespaced; remove metadata.namespace", "metadata.namespace"
            )
        return self

    # -- convenience ---------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str | None:
        return self.metadata.namespace

    @property
    def identity(self) -> tuple[str, str | None, str]:
        """``(kind, namespace, name)``: what makes two resources "the same one"."""
        return (self.KIND, self.metadata.namespace, self.metadata.name)

    # -- documents -----------------------------------------------------------------------

    def to_document(self) -> dict[str, Any]:
        """Calico's document shape (see the module docstring for the rules)."""
        body = _dump(self)
        doc: dict[str, Any] = {"apiVersion": self.api_version, "kind": self.kind}
        doc["metadata"] = body["metadata"]
        doc["spec"] = body.get("spec", {})
        for key, value in body.items():
            doc.setdefault(key, value)
        return doc

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> Self:
        """Validate a document (a parsed YAML/JSON mapping) as this kind of resource."""
        if not cls.KIND:
            raise TypeError("call from_document on a concrete kind, or use loader.parse_document")
        name = _doc_name(doc)
        if not isinstance(doc, Mapping):
            raise ValidationError(
                f"expected a mapping with apiVersion, kind, metadata and spec, got {show(doc)}"
            )
        if "apiVersion" not in doc:
            raise ValidationError(
                f"required field is missing (use {API_VERSION})",
                field="apiVersion",
                kind=cls.KIND,
                name=name,
            )
        if doc["apiVersion"] != API_VERSION:
            raise ValidationError(
                f"{show(doc['apiVersion'])} is not supported; tortie reads {API_VERSION} resources",
                field="apiVersion",
                kind=cls.KIND,
                name=name,
            )
        if "kind" not in doc:
            raise ValidationError("required field is missing", field="kind", name=name)
        if doc["kind"] != cls.KIND:
            raise ValidationError(
                f"expected {cls.KIND}, got {show(doc['kind'])}", field="kind", name=name
            )
        try:
            return cls.model_validate(dict(doc), strict=True)
        except pydantic.ValidationError as exc:
            raise translate(exc, cls, kind=cls.KIND, name=name) from None

    def with_metadata(self, **changes: Any) -> Self:
        """A validated copy with metadata fields changed (snake_case names)."""
        data = self.model_dump()
        data["metadata"] = {**data["metadata"], **changes}
        return self._revalidate(data)

    def with_spec(self, **changes: Any) -> Self:
        """A validated copy with spec fields changed (snake_case names)."""
        data = self.model_dump()
        data["spec"] = {**data["spec"], **changes}
        return self._revalidate(data)

    def _revalidate(self, data: dict[str, Any]) -> Self:
        try:
            return self.model_validate(data)
        except pydantic.ValidationError as exc:
            raise translate(exc, type(self), kind=self.KIND, name=self.metadata.name) from None


def _doc_name(doc: object) -> str | None:
    if isinstance(doc, Mapping):
        meta = doc.get("metadata")
        if isinstance(meta, Mapping) and isinstance(meta.get("name"), str):
            return str(meta["name"])
    return None


def _dump(model: BaseModel) -> dict[str, Any]:
    """Alias-keyed dict of ``model`` without ``None`` and empty lists/maps."""
    out: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if value is None or (isinstance(value, list | dict) and not value):
            continue
        out[info.alias or name] = _dump_value(value)
    return out


def _dump_value(value: object) -> Any:
    if isinstance(value, BaseModel):
        return _dump(value)
    if isinstance(value, list):
        return [_dump_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump_value(v) for k, v in value.items()}
    return value


# --------------------------------------------------------------------------------------------
# IPPool


def _default_uses() -> list[AllowedUse]:
    return ["Workload", "Tunnel"]


class IPPoolSpec(_Model):
    """An IP pool: where pod (and tunnel) addresses come from, and how they are routed."""

    CALICO_UNSUPPORTED = frozenset(
        {"disableBGPExport", "namespaceSelector", "assignmentMode", "ipip", "nat-outgoing"}
    )

    cidr: str
    block_size: int = Field(26, alias="blockSize")
    ipip_mode: EncapMode = Field("Never", alias="ipipMode")
    vxlan_mode: EncapMode = Field("Never", alias="vxlanMode")
    nat_outgoing: bool = Field(False, alias="natOutgoing")
    disabled: bool = False
    node_selector: str = Field("all()", alias="nodeSelector")
    allowed_uses: list[AllowedUse] = Field(default_factory=_default_uses, alias="allowedUses")

    @model_validator(mode="before")
    @classmethod
    def _family_default_block_size(cls, data: Any) -> Any:
        # Calico's default block size depends on the family: /26 for IPv4, /122 for IPv6.
        if isinstance(data, dict) and "blockSize" not in data and "block_size" not in data:
            cidr = data.get("cidr")
            if isinstance(cidr, str) and ":" in cidr:
                return {**data, "blockSize": 122}
        return data

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, v: str) -> str:
        net = parse_cidr(v)
        link_local = ipaddress.ip_network(_LINK_LOCAL_V4 if net.version == 4 else _LINK_LOCAL_V6)
        if net.overlaps(link_local):
            raise FieldError(
                f"{net} overlaps the link-local range {link_local}, which Calico reserves; "
                "choose another range"
            )
        return str(net)

    @field_validator("node_selector")
    @classmethod
    def _node_selector(cls, v: str) -> str:
        return _selector_text(v) if v.strip() else "all()"

    @field_validator("allowed_uses")
    @classmethod
    def _allowed_uses(cls, v: list[AllowedUse]) -> list[AllowedUse]:
        if not v:
            return _default_uses()  # Calico: empty means the default
        if len(set(v)) != len(v):
            raise FieldError(f"{', '.join(v)} lists a use twice")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        net = self.network
        lo, hi = (20, 32) if net.version == 4 else (116, 128)
        if not lo <= self.block_size <= hi:
            raise FieldError(
                f"{self.block_size} is out of range: IPv{net.version} block sizes are {lo}..{hi}",
                "blockSize",
            )
        if self.block_size < net.prefixlen:
            raise FieldError(
                f"/{self.block_size} blocks do not fit in the pool {net}: use a blockSize of at "
                f"least {net.prefixlen}, or a larger pool",
                "blockSize",
            )
        if self.ipip_mode != "Never" and self.vxlan_mode != "Never":
            raise FieldError(
                "ipipMode and vxlanMode cannot both be enabled; set one of them to Never",
                "vxlanMode",
            )
        if self.ipip_mode != "Never" and net.version == 6:
            raise FieldError(
                "IPIP is IPv4-only; use vxlanMode for an IPv6 pool, or Never", "ipipMode"
            )
        return self

    @property
    def network(self) -> IPNetwork:
        return ipaddress.ip_network(self.cidr)

    @property
    def ip_version(self) -> int:
        return self.network.version

    @property
    def selector(self) -> Selector:
        return Selector.parse(self.node_selector)


class IPPool(Resource):
    KIND: ClassVar[str] = "IPPool"
    PLURAL: ClassVar[str] = "ippools"

    kind: Literal["IPPool"] = "IPPool"
    spec: IPPoolSpec

    @property
    def network(self) -> IPNetwork:
        return self.spec.network

    @property
    def ip_version(self) -> int:
        return self.spec.ip_version


# --------------------------------------------------------------------------------------------
# IPAMConfiguration


class IPAMConfigurationSpec(_Model):
    CALICO_UNSUPPORTED = frozenset({"autoAllocateBlocks", "kubeVirtVMAddressPersistence"})

    strict_affinity: bool = Field(False, alias="strictAffinity")
    # 0 means "no limit", as in Calico's IPAM.
    max_blocks_per_host: int = Field(20, alias="maxBlocksPerHost", ge=0, le=_INT32_MAX)

    @property
    def block_limit(self) -> int | None:
        """Blocks a host may hold before borrowing; ``None`` when unlimited."""
        return self.max_blocks_per_host or None


def _default_ipam_spec() -> IPAMConfigurationSpec:
    return IPAMConfigurationSpec()


class IPAMConfiguration(Resource):
    """Global IPAM settings; a singleton named ``default``."""

    KIND: ClassVar[str] = "IPAMConfiguration"
    PLURAL: ClassVar[str] = "ipamconfigurations"

    kind: Literal["IPAMConfiguration"] = "IPAMConfiguration"
    spec: IPAMConfigurationSpec = Field(default_factory=_default_ipam_spec)

    @model_validator(mode="after")
    def _singleton(self) -> Self:
        if self.metadata.name != "default":
            raise FieldError(
                f"{self.metadata.name!r}: IPAMConfiguration is a singleton and must be named "
                "'default'",
                "metadata.name",
            )
        return self


# --------------------------------------------------------------------------------------------
# Node


class NodeBGPSpec(_Model):
    CALICO_UNSUPPORTED = frozenset({"ipv6IPIPTunnelAddr"})

    ipv4_address: str | None = Field(None, alias="ipv4Address")
    ipv6_address: str | None = Field(None, alias="ipv6Address")
    as_number: int | None = Field(None, alias="asNumber")
    ipv4_ipip_tunnel_addr: str | None = Field(None, alias="ipv4IPIPTunnelAddr")
    route_reflector_cluster_id: str | None = Field(None, alias="routeReflectorClusterID")

    @field_validator("ipv4_address")
    @classmethod
    def _ipv4_address(cls, v: str | None) -> str | None:
        return None if v is None else str(parse_interface(v, 4))

    @field_validator("ipv6_address")
    @classmethod
    def _ipv6_address(cls, v: str | None) -> str | None:
        return None if v is None else str(parse_interface(v, 6))

    @field_validator("as_number", mode="before")
    @classmethod
    def _as_number(cls, v: object) -> object:
        return None if v is None else parse_as_number(v)

    @field_validator("ipv4_ipip_tunnel_addr", "route_reflector_cluster_id")
    @classmethod
    def _ipv4(cls, v: str | None) -> str | None:
        return None if v is None else str(parse_ip(v, 4))

    @property
    def ipv4_interface(self) -> ipaddress.IPv4Interface | None:
        return None if self.ipv4_address is None else ipaddress.IPv4Interface(self.ipv4_address)

    @property
    def ipv6_interface(self) -> ipaddress.IPv6Interface | None:
        return None if self.ipv6_address is None else ipaddress.IPv6Interface(self.ipv6_address)


class OrchRef(_Model):
    """Which orchestrator node this Calico node corresponds to."""

    orchestrator: str
    node_name: str | None = Field(None, alias="nodeName")


class NodeAddress(_Model):
    address: str
    type: Literal["CalicoNodeIP", "InternalIP", "ExternalIP"] | None = None

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        return str(parse_interface(v)) if "/" in v else str(parse_ip(v))


class NodeSpec(_Model):
    CALICO_UNSUPPORTED = frozenset({"ipv6VXLANTunnelAddr", "vxlanTunnelMACAddrV6", "wireguard"})

    bgp: NodeBGPSpec | None = None
    ipv4_vxlan_tunnel_addr: str | None = Field(None, alias="ipv4VXLANTunnelAddr")
    vxlan_tunnel_mac_addr: str | None = Field(None, alias="vxlanTunnelMACAddr")
    orch_refs: list[OrchRef] = Field(default_factory=list, alias="orchRefs")
    addresses: list[NodeAddress] = Field(default_factory=list)

    @field_validator("ipv4_vxlan_tunnel_addr")
    @classmethod
    def _vxlan_addr(cls, v: str | None) -> str | None:
        return None if v is None else str(parse_ip(v, 4))

    @field_validator("vxlan_tunnel_mac_addr")
    @classmethod
    def _vxlan_mac(cls, v: str | None) -> str | None:
        return None if v is None else parse_mac(v)


class NodeStatus(_Model):
    """Read-only status Calico writes; accepted so exported nodes can be re-applied."""

    CALICO_UNSUPPORTED = frozenset({"wireguardPublicKey", "wireguardPublicKeyV6"})

    pod_cidrs: list[str] = Field(default_factory=list, alias="podCIDRs")

    @field_validator("pod_cidrs")
    @classmethod
    def _pod_cidrs(cls, v: list[str]) -> list[str]:
        return [str(parse_cidr(c)) for c in v]


def _default_node_spec() -> NodeSpec:
    return NodeSpec()


class Node(Resource):
    """A Calico node; its name is the host name, its labels live in ``metadata.labels``."""

    KIND: ClassVar[str] = "Node"
    PLURAL: ClassVar[str] = "nodes"

    kind: Literal["Node"] = "Node"
    spec: NodeSpec = Field(default_factory=_default_node_spec)
    status: NodeStatus | None = None


# --------------------------------------------------------------------------------------------
# BGPConfiguration


class BGPConfigurationSpec(_Model):
    CALICO_UNSUPPORTED = frozenset(
        {
            "serviceClusterIPs",
            "serviceExternalIPs",
            "serviceLoadBalancerIPs",
            "communities",
            "prefixAdvertisements",
            "nodeMeshPassword",
            "nodeMeshMaxRestartTime",
            "bindMode",
            "ignoredInterfaces",
            "localWorkloadPeeringIPV4",
            "localWorkloadPeeringIPV6",
            "programClusterRoutes",
        }
    )

    log_severity_screen: LogSeverity = Field("Info", alias="logSeverityScreen")
    node_to_node_mesh_enabled: bool = Field(True, alias="nodeToNodeMeshEnabled")
    as_number: int = Field(64512, alias="asNumber")
    listen_port: int = Field(179, alias="listenPort", ge=1, le=65535)

    @field_validator("as_number", mode="before")
    @classmethod
    def _as_number(cls, v: object) -> object:
        return parse_as_number(v)


def _default_bgp_spec() -> BGPConfigurationSpec:
    return BGPConfigurationSpec()


class BGPConfiguration(Resource):
    """Cluster BGP settings (name ``default``; Calico also uses ``node.<name>``)."""

    KIND: ClassVar[str] = "BGPConfiguration"
    PLURAL: ClassVar[str] = "bgpconfigurations"

    kind: Literal["BGPConfiguration"] = "BGPConfiguration"
    spec: BGPConfigurationSpec = Field(default_factory=_default_bgp_spec)


# --------------------------------------------------------------------------------------------
# BGPPeer


class SecretKeyRef(_Model):
    """Calico's (Kubernetes') ``secretKeyRef``: a key in a named secret."""

    name: str
    key: str


class BGPPassword(_Model):
    """A BGP session password.

    Calico's form is ``password: {secretKeyRef: {name, key}}``. tortie also accepts the
    password itself, as ``password: {value: s3cret}`` or the shorthand ``password: s3cret``
    (written back as ``{value: ...}``); exactly one of the two must be given.
    """

    secret_key_ref: SecretKeyRef | None = Field(None, alias="secretKeyRef")
    value: str | None = Field(None, repr=False)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"value": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.secret_key_ref is None) == (self.value is None):
            raise FieldError("give exactly one of secretKeyRef or value")
        if self.value is not None and not self.value:
            raise FieldError("the password is empty", "value")
        return self


class BGPPeerSpec(_Model):
    CALICO_UNSUPPORTED = frozenset(
        {
            "keepOriginalNextHop",
            "sourceAddress",
            "maxRestartTime",
            "numAllowedLocalASNumbers",
            "ttlSecurity",
            "filters",
            "localASNumber",
            "reachableBy",
            "localWorkloadSelector",
            "nextHopMode",
        }
    )

    node: str | None = None
    node_selector: str | None = Field(None, alias="nodeSelector")
    peer_ip: str | None = Field(None, alias="peerIP")
    as_number: int | None = Field(None, alias="asNumber")
    peer_selector: str | None = Field(None, alias="peerSelector")
    password: BGPPassword | None = None
    keepalive_time: str | None = Field(None, alias="keepaliveTime")
    hold_time: str | None = Field(None, alias="holdTime")

    @field_validator("node")
    @classmethod
    def _node(cls, v: str | None) -> str | None:
        return None if v is None else check_name(v, "node name")

    @field_validator("node_selector", "peer_selector")
    @classmethod
    def _selectors(cls, v: str | None) -> str | None:
        # Calico treats an empty selector field as unset.
        return _selector_text(v) if v is not None and v.strip() else None

    @field_validator("peer_ip")
    @classmethod
    def _peer_ip(cls, v: str | None) -> str | None:
        if v is None:
            return None
        addr, port = _split_peer_ip(v)
        if port is None:
            return str(addr)
        return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"

    @field_validator("as_number", mode="before")
    @classmethod
    def _as_number(cls, v: object) -> object:
        return None if v is None else parse_as_number(v)

    @field_validator("keepalive_time")
    @classmethod
    def _keepalive(cls, v: str | None) -> str | None:
        if v is not None:
            _whole_seconds(v, 1, 65535, "keepaliveTime")
        return v

    @field_validator("hold_time")
    @classmethod
    def _hold(cls, v: str | None) -> str | None:
        if v is not None:
            hold = _whole_seconds(v, 0, 65535, "holdTime")
            if timedelta(0) < hold < timedelta(seconds=3):
                raise FieldError(
                    f"{show(v)} is too short: holdTime is 0 (no keepalives) or at least 3s"
                )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.peer_ip is not None and self.peer_selector is not None:
            raise FieldError(
                "cannot be used together with peerIP: a peer is an address or a selector",
                "peerSelector",
            )
        if self.peer_ip is None and self.peer_selector is None:
            raise FieldError("one of peerIP or peerSelector is required")
        if self.peer_ip is not None and self.as_number is None:
            raise FieldError("required with peerIP: the peer's AS number", "asNumber")
        if self.peer_selector is not None and self.as_number is not None:
            raise FieldError(
                "must not be set with peerSelector: the selected nodes' own AS numbers are used",
                "asNumber",
            )
        if self.node is not None and self.node_selector is not None:
            raise FieldError("cannot be used together with node; use one of them", "nodeSelector")
        keepalive, hold = self.keepalive, self.hold
        if keepalive is not None and hold is not None and hold and keepalive >= hold:
            raise FieldError(
                f"{self.keepalive_time} must be shorter than holdTime ({self.hold_time})",
                "keepaliveTime",
            )
        return self

    @property
    def peer_address(self) -> IPAddress | None:
        return None if self.peer_ip is None else _split_peer_ip(self.peer_ip)[0]

    @property
    def peer_port(self) -> int | None:
        return None if self.peer_ip is None else _split_peer_ip(self.peer_ip)[1]

    @property
    def keepalive(self) -> timedelta | None:
        return None if self.keepalive_time is None else parse_go_duration(self.keepalive_time)

    @property
    def hold(self) -> timedelta | None:
        return None if self.hold_time is None else parse_go_duration(self.hold_time)

    @property
    def parsed_node_selector(self) -> Selector | None:
        return None if self.node_selector is None else Selector.parse(self.node_selector)

    @property
    def parsed_peer_selector(self) -> Selector | None:
        return None if self.peer_selector is None else Selector.parse(self.peer_selector)


def _split_peer_ip(text: str) -> tuple[IPAddress, int | None]:
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


class BGPPeer(Resource):
    KIND: ClassVar[str] = "BGPPeer"
    PLURAL: ClassVar[str] = "bgppeers"

    kind: Literal["BGPPeer"] = "BGPPeer"
    spec: BGPPeerSpec


def is_redacted(peer: BGPPeer) -> bool:
    """Whether ``peer``'s password is the :data:`REDACTED` marker, not a password."""
    password = peer.spec.password
    return password is not None and password.value == REDACTED


def redact_secrets(res: Resource) -> Resource:
    """``res`` as shown to people: every secret replaced by :data:`REDACTED`.

    The only secret in these resources is a BGPPeer password given as a value (a
    ``secretKeyRef`` only names a secret, so it is shown, as calicoctl shows it).
    """
    password = res.spec.password if isinstance(res, BGPPeer) else None
    if password is not None and password.value is not None:
        return res.with_spec(password=BGPPassword(value=REDACTED))
    return res


# --------------------------------------------------------------------------------------------
# WorkloadEndpoint


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


def parse_workload_endpoint_name(name: str) -> tuple[str, str, str, str]:
    """Inverse of :func:`workload_endpoint_name`: ``(node, orchestrator, pod, endpoint)``."""
    parts: list[str] = []
    start = 0
    i = 1
    while i < len(name):
        if name[i] == "-":
            if i + 1 < len(name) and name[i + 1] == "-":
                i += 2
                continue
            parts.append(name[start:i])
            start = i + 1
        i += 1
    parts.append(name[start:])
    if len(parts) != 4 or not all(parts):
        raise ModelError(
            f"{name!r} is not a workload endpoint name of the form node-orchestrator-pod-endpoint"
        )
    node, orch, pod, endpoint = (p.replace("--", "-") for p in parts)
    return node, orch, pod, endpoint


class WorkloadEndpointSpec(_Model):
    CALICO_UNSUPPORTED = frozenset(
        {
            "ipNATs",
            "ipv4Gateway",
            "ipv6Gateway",
            "ports",
            "allowSpoofedSourcePrefixes",
            "qosControls",
            "awsElasticIPs",
        }
    )

    orchestrator: str = "k8s"
    workload: str | None = None
    node: str
    container_id: str | None = Field(None, alias="containerID")
    pod: str | None = None
    endpoint: str = "eth0"
    interface_name: str = Field(alias="interfaceName")
    mac: str | None = None
    ip_networks: list[str] = Field(default_factory=list, alias="ipNetworks")
    profiles: list[str] = Field(default_factory=list)
    service_account_name: str | None = Field(None, alias="serviceAccountName")

    @field_validator("node")
    @classmethod
    def _node(cls, v: str) -> str:
        return check_name(v, "node name")

    @field_validator("interface_name")
    @classmethod
    def _ifname(cls, v: str) -> str:
        return check_ifname(v)

    @field_validator("mac")
    @classmethod
    def _mac(cls, v: str | None) -> str | None:
        return None if v is None else parse_mac(v)

    @field_validator("ip_networks")
    @classmethod
    def _ip_networks(cls, v: list[str]) -> list[str]:
        out: list[str] = []
        for i, text in enumerate(v):
            try:
                out.append(str(parse_cidr_or_ip(text)))
            except FieldError as exc:
                raise FieldError(exc.message, f"[{i}]") from None
        return out

    @property
    def identifier(self) -> tuple[str, str | None]:
        """The name segment after the orchestrator: (its field name, its value)."""
        if self.orchestrator == "k8s":
            return "pod", self.pod
        if self.orchestrator == "cni":
            return "containerID", self.container_id
        if self.orchestrator == "libnetwork":
            return "orchestrator", self.orchestrator
        return "workload", self.workload

    @property
    def networks(self) -> list[IPNetwork]:
        return [ipaddress.ip_network(n) for n in self.ip_networks]


class WorkloadEndpoint(Resource):
    """A pod's interface as Calico records it (namespaced; Calico's name format enforced)."""

    KIND: ClassVar[str] = "WorkloadEndpoint"
    PLURAL: ClassVar[str] = "workloadendpoints"
    NAMESPACED: ClassVar[bool] = True

    kind: Literal["WorkloadEndpoint"] = "WorkloadEndpoint"
    spec: WorkloadEndpointSpec

    @model_validator(mode="before")
    @classmethod
    def _default_namespace(cls, data: Any) -> Any:
        # calicoctl fills in "default" when a namespaced resource names no namespace.
        if isinstance(data, dict):
            meta = data.get("metadata")
            if isinstance(meta, dict) and meta.get("namespace") is None:
                return {**data, "metadata": {**meta, "namespace": "default"}}
            if isinstance(meta, ObjectMeta) and meta.namespace is None:
                return {**data, "metadata": meta.model_copy(update={"namespace": "default"})}
        return data

    @model_validator(mode="after")
    def _name_matches_spec(self) -> Self:
        field, ident = self.spec.identifier
        if ident is None:
            raise FieldError(
                f"required for orchestrator {self.spec.orchestrator!r} (it is part of the "
                "endpoint's name)",
                f"spec.{field}",
            )
        try:
            expected = workload_endpoint_name(
                self.spec.node, self.spec.orchestrator, ident, self.spec.endpoint
            )
        except ModelError as exc:
            raise FieldError(str(exc), "spec") from None
        if self.metadata.name != expected:
            raise FieldError(
                f"{self.metadata.name!r} does not match the spec: Calico names this endpoint "
                f"{expected!r}",
                "metadata.name",
            )
        return self
