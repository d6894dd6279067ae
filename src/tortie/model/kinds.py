"""The resource kinds tortie knows, and the names users may type for them.

Problem: ``tortie get ippools``, ``tortie delete ipp pool-a`` and ``kind: IPPool`` in a
manifest all name the same kind. calicoctl accepts a fixed set of case-insensitive aliases per
kind; we accept the same ones so muscle memory carries over.

Invariants:
- ``KIND_CLASSES`` maps Calico's exact kind spelling (``IPPool``) to its class; it is
  read-only.
- ``resolve_kind`` is case-insensitive and accepts the exact kind, the plural and calicoctl's
  abbreviations. Manifests must use the exact kind (the loader checks that separately).

Hazards:
- Aliases must not collide between kinds; a unit test checks this.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from types import MappingProxyType

from tortie.model.errors import ModelError
from tortie.model.resources import (
    BGPConfiguration,
    BGPPeer,
    IPAMConfiguration,
    IPPool,
    Node,
    Resource,
    WorkloadEndpoint,
)

__all__ = [
    "KIND_ALIASES",
    "KIND_CLASSES",
    "is_namespaced",
    "kind_names",
    "resolve_kind",
    "suggest_kind",
]

KIND_CLASSES: Mapping[str, type[Resource]] = MappingProxyType(
    {
        cls.KIND: cls
        for cls in (IPPool, IPAMConfiguration, Node, BGPConfiguration, BGPPeer, WorkloadEndpoint)
    }
)

# calicoctl's names for each kind (resourcemgr registrations), lowercase.
KIND_ALIASES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "IPPool": ("ippool", "ippools", "ipp", "ipps", "pool", "pools"),
        "IPAMConfiguration": (
            "ipamconfiguration",
            "ipamconfigurations",
            "ipamconfig",
            "ipamconfigs",
        ),
        "Node": ("node", "nodes", "no", "nos"),
        "BGPConfiguration": (
            "bgpconfiguration",
            "bgpconfigurations",
            "bgpconfig",
            "bgpconfigs",
        ),
        "BGPPeer": ("bgppeer", "bgppeers", "bgpp", "bgpps", "bp", "bps"),
        "WorkloadEndpoint": ("workloadendpoint", "workloadendpoints", "wep", "weps"),
    }
)


def kind_names() -> list[str]:
    """The exact kind names, sorted (for messages)."""
    return sorted(KIND_CLASSES)


def resolve_kind(user_text: str) -> type[Resource]:
    """The class for a kind as a user typed it (``IPPool``, ``ippools``, ``ipp``, ``wep``...)."""
    wanted = user_text.strip().lower()
    for kind, aliases in KIND_ALIASES.items():
        if wanted == kind.lower() or wanted in aliases:
            return KIND_CLASSES[kind]
    close = suggest_kind(user_text)
    hint = f"; did you mean {close}?" if close else ""
    raise ModelError(
        f"unknown resource kind {user_text!r}; known kinds: {', '.join(kind_names())}{hint}"
    )


def suggest_kind(user_text: str) -> str | None:
    """The kind a user probably meant (exact spelling), or ``None``."""
    wanted = user_text.strip().lower()
    names = {kind.lower(): kind for kind in KIND_CLASSES}
    names.update({a: kind for kind, aliases in KIND_ALIASES.items() for a in aliases})
    close = difflib.get_close_matches(wanted, list(names), n=1, cutoff=0.7)
    return names[close[0]] if close else None


def is_namespaced(kind: type[Resource] | str) -> bool:
    """Whether resources of this kind live in a namespace (only WorkloadEndpoint does)."""
    cls = resolve_kind(kind) if isinstance(kind, str) else kind
    return cls.NAMESPACED
