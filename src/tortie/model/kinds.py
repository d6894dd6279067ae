"""The resource kinds tortie knows, and the names users may type for them.

Problem: ``tortie get ippools``, ``tortie delete ipp pool-a`` and ``kind: IPPool`` in a
manifest all name the same kind. calicoctl accepts a fixed set of case-insensitive aliases per
kind; we accept the same ones so muscle memory carries over.

The names themselves (aliases, plurals, scope) are in :mod:`tortie.model.kindinfo`, which
does not import the models; this module adds the classes.

Invariants:
- ``KIND_CLASSES`` maps Calico's exact kind spelling (``IPPool``) to its class; it is
  read-only.
- ``resolve_kind`` is case-insensitive and accepts the exact kind, the plural and calicoctl's
  abbreviations. Manifests must use the exact kind (the loader checks that separately).

Hazards:
- Aliases must not collide between kinds; a unit test checks this.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from tortie.model.kindinfo import KINDS, kind_info, kind_names, suggest_kind
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
    {kind: info.aliases for kind, info in KINDS.items()}
)


def resolve_kind(user_text: str) -> type[Resource]:
    """The class for a kind as a user typed it (``IPPool``, ``ippools``, ``ipp``, ``wep``...)."""
    return KIND_CLASSES[kind_info(user_text).kind]


def is_namespaced(kind: type[Resource] | str) -> bool:
    """Whether resources of this kind live in a namespace (only WorkloadEndpoint does)."""
    cls = resolve_kind(kind) if isinstance(kind, str) else kind
    return cls.NAMESPACED
