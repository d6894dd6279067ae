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

The rules beyond types (CIDRs, selectors, consistency of a spec, endpoint names) are
:mod:`tortie.model.rules`, called by the validators here: :mod:`tortie.model.stored` applies
the same rules to stored documents without pydantic, and mirrors these models' fields (a test
compares them), so a field changed here must be changed there too.

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

from tortie.model import rules
from tortie.model.errors import ModelError, ValidationError
from tortie.model.fields import (
    API_VERSION,
    REDACTED,
    IPAddress,
    IPNetwork,
    check_ifname,
    check_labels,
    check_name,
    check_namespace,
    parse_as_number,
    parse_go_duration,
    parse_mac,
    show,
)
from tortie.model.rules import MAX_ANNOTATIONS_BYTES, workload_endpoint_name
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

_INT32_MAX = 2**31 - 1


class _Model(BaseModel):
    """Shared configuration: frozen, no unknown fields, either spelling accepted."""

    # defer_build: building validators for every model at import would slow down every
    # short-lived process (the CNI plugin) that imports the model but validates little.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True, defer_build=True)

    # Calico field names that tortie deliberately does not implement (better message).
    CALICO_UNSUPPORTED: ClassVar[frozenset[str]] = frozenset()


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
        return rules.check_annotations(v)

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
        rules.check_scope(self.KIND, self.NAMESPACED, self.metadata.namespace)
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
    return rules.default_uses()  # type: ignore[return-value]  # rules.ALLOWED_USES


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
        return rules.pool_cidr(v)

    @field_validator("node_selector")
    @classmethod
    def _node_selector(cls, v: str) -> str:
        return rules.pool_node_selector(v)

    @field_validator("allowed_uses")
    @classmethod
    def _allowed_uses(cls, v: list[AllowedUse]) -> list[AllowedUse]:
        return rules.allowed_uses(v)  # type: ignore[arg-type,return-value]

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        rules.check_pool(self.cidr, self.block_size, self.ipip_mode, self.vxlan_mode)
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
        rules.check_ipam_config_name(self.metadata.name)
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
        return None if v is None else rules.interface_text(v, 4)

    @field_validator("ipv6_address")
    @classmethod
    def _ipv6_address(cls, v: str | None) -> str | None:
        return None if v is None else rules.interface_text(v, 6)

    @field_validator("as_number", mode="before")
    @classmethod
    def _as_number(cls, v: object) -> object:
        return None if v is None else parse_as_number(v)

    @field_validator("ipv4_ipip_tunnel_addr", "route_reflector_cluster_id")
    @classmethod
    def _ipv4(cls, v: str | None) -> str | None:
        return None if v is None else rules.ip_text(v, 4)

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
        return rules.node_address(v)


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
        return None if v is None else rules.ip_text(v, 4)

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
        return rules.pod_cidrs(v)


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
        rules.check_password(self.secret_key_ref is not None, self.value)
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
        return rules.optional_selector(v)

    @field_validator("peer_ip")
    @classmethod
    def _peer_ip(cls, v: str | None) -> str | None:
        return None if v is None else rules.peer_ip(v)

    @field_validator("as_number", mode="before")
    @classmethod
    def _as_number(cls, v: object) -> object:
        return None if v is None else parse_as_number(v)

    @field_validator("keepalive_time")
    @classmethod
    def _keepalive(cls, v: str | None) -> str | None:
        if v is not None:
            rules.check_keepalive(v)
        return v

    @field_validator("hold_time")
    @classmethod
    def _hold(cls, v: str | None) -> str | None:
        if v is not None:
            rules.check_hold(v)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        rules.check_peer(
            peer_ip=self.peer_ip,
            peer_selector=self.peer_selector,
            as_number=self.as_number,
            node=self.node,
            node_selector=self.node_selector,
            keepalive_time=self.keepalive_time,
            hold_time=self.hold_time,
        )
        return self

    @property
    def peer_address(self) -> IPAddress | None:
        return None if self.peer_ip is None else rules.split_peer_ip(self.peer_ip)[0]

    @property
    def peer_port(self) -> int | None:
        return None if self.peer_ip is None else rules.split_peer_ip(self.peer_ip)[1]

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
        return rules.ip_networks(v)

    @property
    def identifier(self) -> tuple[str, str | None]:
        """The name segment after the orchestrator: (its field name, its value)."""
        return rules.endpoint_identifier(
            self.orchestrator, pod=self.pod, container_id=self.container_id, workload=self.workload
        )

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
        rules.check_endpoint_name(
            self.metadata.name,
            node=self.spec.node,
            orchestrator=self.spec.orchestrator,
            endpoint=self.spec.endpoint,
            identifier=self.spec.identifier,
        )
        return self
