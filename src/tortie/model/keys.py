"""Datastore key names for resources.

Problem: every backend stores resources under string keys, and the syncer, the CLI and the
agent must agree on them and be able to list one kind (or one namespace) by prefix.

Layout::

    /tortie/v3/<plural>/<name>                      cluster-scoped kinds
    /tortie/v3/workloadendpoints/<namespace>/<name> namespaced kinds
    /tortie/ipam/v2/...                             IPAM state (owned by tortie.ipam)

Invariants:
- Prefixes end with '/', so listing ``ippools/a`` never returns ``ippools/ab``.
- Names and namespaces are validated (no '/'), so a key splits back into exactly one
  ``(kind, namespace, name)``.

Hazards:
- This module does not import the models (only :mod:`tortie.model.kindinfo`'s names), so
  reading commands can build keys without pydantic.
- Renaming anything here orphans stored data: these strings are a storage format.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from tortie.model.errors import ModelError
from tortie.model.fields import FieldError, check_name, check_namespace
from tortie.model.kindinfo import KINDS, kind_info

if TYPE_CHECKING:
    from tortie.model.resources import Resource

__all__ = [
    "IPAM_ROOT",
    "RESOURCE_ROOT",
    "ResourceKey",
    "key_for",
    "kind_prefix",
    "parse_key",
    "resource_key",
]

RESOURCE_ROOT = "/tortie/v3/"
IPAM_ROOT = "/tortie/ipam/v2/"


class ResourceKey(NamedTuple):
    kind: str
    namespace: str | None
    name: str


def kind_prefix(kind: str, namespace: str | None = None) -> str:
    """The prefix under which resources of ``kind`` (in ``namespace``) are stored.

    For a namespaced kind without ``namespace`` this is the prefix of all namespaces.
    """
    info = kind_info(kind)
    prefix = f"{RESOURCE_ROOT}{info.plural}/"
    if namespace is None:
        return prefix
    if not info.namespaced:
        raise ModelError(f"{info.kind} is not namespaced; do not give a namespace")
    return f"{prefix}{_checked(check_namespace, namespace)}/"


def resource_key(kind: str, name: str, namespace: str | None = None) -> str:
    """The key of one resource."""
    info = kind_info(kind)
    if info.namespaced and namespace is None:
        raise ModelError(f"{info.kind} is namespaced; give a namespace")
    return kind_prefix(kind, namespace) + _checked(check_name, name)


def key_for(resource: Resource) -> str:
    """The key of ``resource``."""
    return resource_key(resource.KIND, resource.metadata.name, resource.metadata.namespace)


def parse_key(key: str) -> ResourceKey:
    """Split a resource key back into ``(kind, namespace, name)``."""
    if not key.startswith(RESOURCE_ROOT):
        raise ModelError(f"{key!r} is not a resource key (expected {RESOURCE_ROOT}...)")
    parts = key[len(RESOURCE_ROOT) :].split("/")
    for info in KINDS.values():
        if parts[0] != info.plural:
            continue
        if info.namespaced and len(parts) == 3 and parts[1] and parts[2]:
            return ResourceKey(info.kind, parts[1], parts[2])
        if not info.namespaced and len(parts) == 2 and parts[1]:
            return ResourceKey(info.kind, None, parts[1])
    raise ModelError(f"{key!r} is not a resource key")


def _checked(check: Callable[[str], str], value: str) -> str:
    try:
        return check(value)
    except FieldError as exc:
        raise ModelError(exc.message) from None
