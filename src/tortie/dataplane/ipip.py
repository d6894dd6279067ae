"""IPIP (tunl0) behind one interface, with two backends (chosen by :mod:`.ipip_choice`).

Problem: Calico's IPIP mode routes remote blocks ``via <nodeIP> dev tunl0 onlink`` and needs a
``tunl0`` that encapsulates. Where the kernel has the ipip module, tunl0 is a real tunnel
(:class:`~tortie.dataplane.ipip_kernel.KernelIPIP`); where it has not (these machines), tc-BPF
programs do the same work behind a placeholder tunl0
(:class:`~tortie.dataplane.ipip_bpf.BpfIPIP`). The routes are identical in both, so the route
reconciler never knows which backend is in use.

Invariants: ``ensure_device`` is idempotent and returns what it changed (an empty list when the
node was already set up: an agent restart must not disturb traffic); ``set_known_nodes`` takes
the complete set each time (desired state, not deltas).

Layering (import-linter holds it): this module is the interface, below both backends, and
imports neither; the choice between them (:mod:`.ipip_choice`) sits above all three; the tunnel
address rule, shared with VXLAN, is :mod:`.tunnel`.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address
from typing import Literal, Protocol

from tortie.dataplane.errors import DataplaneError
from tortie.dataplane.tunnel import TunnelAddr

IPIP_OVERHEAD = 20
BackendMode = Literal["auto", "kernel", "bpf"]


class IPIPError(DataplaneError):
    """The node cannot be set up for this backend (e.g. tunl0 exists as something else), or
    the kernel refused a step of it (``errno``); ``retryable`` is False when a person must act."""


class IPIPBackend(Protocol):
    name: str  # "kernel" or "bpf"
    device: str  # "tunl0"

    def ensure_device(self, mtu: int, tunnel_addr: TunnelAddr = None) -> list[str]:
        """Create/configure tunl0 (MTU, up, the /32 tunnel address); return what changed."""
        ...

    def set_known_nodes(self, node_ips: Iterable[IPv4Address]) -> list[str]:
        """The complete set of node IPs IPIP is accepted from; return what changed."""
        ...

    def counters(self) -> dict[str, int]:
        """Packet counters for metrics (names depend on the backend)."""
        ...

    def remove(self) -> list[str]:
        """Undo ensure_device (IPIP turned off): no address, no encapsulation."""
        ...
