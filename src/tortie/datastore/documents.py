"""Stored resources read as documents, for showing them (``tortie get``).

Problem: :class:`~tortie.datastore.resources.ResourceStore` decodes every stored value with
the pydantic models, and importing them costs a short-lived command about 0.1 s (issue 17,
item 14: ``tortie get`` must take at most 0.15 s). What tortie stored is ``to_document()`` of
a validated resource, which :func:`tortie.model.stored.canonical` recognises without the
models; only other values need them.

Invariants:
- A document read here equals ``ResourceStore(store).get(...)``'s resource as
  ``to_document()`` (with ``metadata.resourceVersion`` the key's mod revision), for every value:
  recognised ones directly, the others through :func:`~tortie.datastore.decode.decode_resource`.
- A value that is not a valid resource of its kind (bytes that are not JSON, a field out of
  range, a field written by a newer tortie) is reported as :class:`CorruptResourceError` with
  its key, as ``ResourceStore`` reports it: the models decide whatever is not recognised.
- Nothing is written; pydantic is imported only for a value that is not recognised.
"""

from __future__ import annotations

import json
from typing import Any

from tortie.datastore.api import Datastore, KeyValue
from tortie.datastore.resource_errors import CorruptResourceError, ResourceNotFoundError
from tortie.model.keys import kind_prefix, resource_key
from tortie.model.stored import canonical, with_resource_version

__all__ = [
    "CorruptResourceError",
    "ResourceNotFoundError",
    "document_of",
    "get_document",
    "list_documents",
    "require_document",
]


def document_of(kind: str, kv: KeyValue) -> dict[str, Any]:
    """The stored value ``kv`` of a ``kind`` resource (exact spelling) as a document."""
    try:
        doc = canonical(kind, json.loads(kv.value))
    except (ValueError, RecursionError):
        doc = None  # not JSON (or nested too deep to read): the model path says so, with the key
    if doc is not None:
        return with_resource_version(doc, str(kv.mod_revision))
    # Not as tortie writes it: the models decide (and pydantic is imported, ~0.1 s).
    from tortie.datastore.decode import decode_resource
    from tortie.model.kinds import KIND_CLASSES

    return decode_resource(KIND_CLASSES[kind], kv).to_document()


def list_documents(
    store: Datastore, kind: str, namespace: str | None = None
) -> list[dict[str, Any]]:
    """Every ``kind`` resource (in ``namespace``, or all namespaces when None), in key order."""
    return [document_of(kind, kv) for kv in store.list(kind_prefix(kind, namespace)).items]


def get_document(
    store: Datastore, kind: str, name: str, namespace: str | None = None
) -> dict[str, Any] | None:
    kv = store.get(resource_key(kind, name, namespace))
    return None if kv is None else document_of(kind, kv)


def require_document(
    store: Datastore, kind: str, name: str, namespace: str | None = None
) -> dict[str, Any]:
    doc = get_document(store, kind, name, namespace)
    if doc is None:
        raise ResourceNotFoundError(kind, name, namespace)
    return doc
