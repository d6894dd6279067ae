"""What ``tortie node run`` was asked to do, and how the node's address is found.

Problem: a node agent needs its name, its datastore, its IPv4 address with prefix (the BGP
peering address, the IPIP outer source, the CrossSubnet "same subnet" test) and the uplink
that carries it. Users either give the address or ask for Calico's autodetection methods:
``first-found``, ``interface=REGEX``, ``cidr=CIDR[,CIDR]``, ``can-reach=IP``.

Invariants: detection only reads the kernel (links and addresses through the Netlink seam,
plus a connected-UDP-socket route lookup for can-reach, which sends no packet); it never picks
tortie's own devices (cali*, tunl0, vxlan.calico) nor loopback. Errors say which method
failed and what was seen, so a user can pick another.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Literal

from tortie.dataplane.netlink import Netlink
from tortie.errors import TortieError
from tortie.model.naming import BPF_PIN_SUBDIR, ROUTE_PROTOCOL, RUN_DIR

IPIPBackendMode = Literal["auto", "kernel", "bpf"]
BpfAttachMode = Literal["auto", "tcx", "tc"]
DEFAULT_RUN_DIR = Path(RUN_DIR)
# Interfaces that are never the node's address: ours, loopback, container plumbing.
_SKIP_IFACES = re.compile(r"^(lo|cali.*|tunl\d*|vxlan\.calico|docker\d*|cni\d*|veth.*|virbr.*)$")


class AgentConfigError(TortieError):
    pass


@dataclass(frozen=True)
class AgentConfig:
    node_name: str
    datastore_url: str
    ip: IPv4Interface | None = None  # given with --ip; else autodetected
    ip_autodetect: str = "first-found"
    as_number: int | None = None
    ipip_backend: IPIPBackendMode = "auto"
    health_host: str = "127.0.0.1"
    health_port: int | None = None  # None: no HTTP server
    state_dir: Path | None = None  # default: /run/tortie/<node>
    bpf_object: Path | None = None
    bpf_attach: BpfAttachMode = "auto"  # tcx links (6.6+) or tc filters; auto: tcx if it can
    route_protocol: int = ROUTE_PROTOCOL
    resync_interval: float = 90.0  # Felix's route refresh interval
    # Watch the kernel (links, addresses, routes, our nft table) and repair at once; off: only
    # the periodic resync notices what someone else changed (docs/agent.md).
    kernel_monitor: bool = True
    cni_grace_period: float = 10.0
    bgp: bool = True  # Calico's "bird" networking backend; False: routes from the datastore
    bgp_hold_time: int = 90  # seconds; a dead node's routes go within this
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def node_state_dir(self) -> Path:
        return self.state_dir or DEFAULT_RUN_DIR / self.node_name

    @property
    def mtu_file(self) -> Path:
        return self.node_state_dir / "mtu"

    @property
    def pin_dir(self) -> Path:
        return self.node_state_dir / BPF_PIN_SUBDIR

    @property
    def bgp_dir(self) -> Path:
        return self.node_state_dir / "bgp"

    @property
    def cni_socket(self) -> Path:
        """Where the CNI plugin reaches this agent (``agent_socket`` in the conflist)."""
        return self.node_state_dir / "cni.sock"

    @property
    def status_file(self) -> Path:
        return self.node_state_dir / "status.json"


@dataclass(frozen=True)
class NodeAddress:
    address: IPv4Interface
    uplink: str
    how: str  # e.g. "interface eth0 (first-found)"


def detect_address(
    netlink: Netlink, method: str, given: IPv4Interface | None = None
) -> NodeAddress:
    """The node's IPv4 address and uplink, given or by ``method``."""
    candidates = _candidates(netlink)
    if given is not None:
        for iface, addr in candidates:
            if addr == given or addr.ip == given.ip:
                return NodeAddress(addr, iface, "given with --ip")
        raise AgentConfigError(
            f"--ip {given}: no interface in this network namespace has that address "
            f"(seen: {_describe(candidates)})"
        )
    kind, _, arg = method.partition("=")
    if kind == "first-found":
        picked = candidates[:1]
    elif kind == "interface":
        try:
            pattern = re.compile(arg)
        except re.error as err:
            raise AgentConfigError(f"--ip-autodetect interface={arg}: bad regex: {err}") from err
        picked = [(i, a) for i, a in candidates if pattern.fullmatch(i)]
    elif kind == "cidr":
        nets = _parse_cidrs(arg)
        picked = [(i, a) for i, a in candidates if any(a.ip in n for n in nets)]
    elif kind == "can-reach":
        src = _source_for(arg)
        picked = [(i, a) for i, a in candidates if a.ip == src]
    else:
        raise AgentConfigError(
            f"--ip-autodetect {method!r}: unknown method; use first-found, "
            "interface=REGEX, cidr=CIDR[,CIDR] or can-reach=IP"
        )
    if not picked:
        raise AgentConfigError(
            f"--ip-autodetect {method}: no IPv4 address matched "
            f"(seen: {_describe(candidates)}); give the address with --ip A.B.C.D/P"
        )
    iface, addr = picked[0]
    return NodeAddress(addr, iface, f"interface {iface} ({method})")


def _candidates(netlink: Netlink) -> list[tuple[str, IPv4Interface]]:
    out: list[tuple[str, IPv4Interface]] = []
    for link in sorted(netlink.list_links(), key=lambda lk: lk.index):
        if _SKIP_IFACES.match(link.name) or not link.up:
            continue
        for addr in netlink.list_addrs(link.name):
            if not (addr.ip.is_loopback or addr.ip.is_link_local):
                out.append((link.name, addr))
    return out


def _describe(candidates: Sequence[tuple[str, IPv4Interface]]) -> str:
    return ", ".join(f"{i} {a}" for i, a in candidates) or "no usable IPv4 address"


def _parse_cidrs(text: str) -> list[IPv4Network]:
    try:
        return [IPv4Network(c.strip(), strict=False) for c in text.split(",") if c.strip()]
    except ValueError as err:
        raise AgentConfigError(f"--ip-autodetect cidr={text}: {err}") from err


def _source_for(target: str) -> IPv4Address:
    """The source address the kernel would use toward ``target`` (no packet is sent)."""
    try:
        dest = IPv4Address(target)
    except ValueError as err:
        raise AgentConfigError(f"--ip-autodetect can-reach={target}: not an IPv4 address") from err
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((str(dest), 9))  # UDP connect only selects a route and a source
        except OSError as err:
            raise AgentConfigError(
                f"--ip-autodetect can-reach={target}: no route ({err.strerror})"
            ) from err
        return IPv4Address(s.getsockname()[0])
