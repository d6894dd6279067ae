"""Errors about stored resources, shared by the readers (:mod:`.documents`, :mod:`.decode`) and
:class:`~tortie.datastore.resources.ResourceStore`; importing this loads no model (pydantic)."""

from __future__ import annotations

from tortie.datastore.api import DatastoreError, NotFoundError

__all__ = ["CorruptResourceError", "ResourceNotFoundError"]


class CorruptResourceError(DatastoreError):
    def __init__(self, key: str, detail: str) -> None:
        super().__init__(
            f"{key}: stored resource is unreadable ({detail}); "
            "fix or delete it with 'tortie delete' or the datastore's own tools"
        )
        self.key = key


class ResourceNotFoundError(NotFoundError):
    def __init__(self, kind: str, name: str, namespace: str | None) -> None:
        where = f" in namespace {namespace}" if namespace else ""
        DatastoreError.__init__(self, f"{kind} {name!r}{where} does not exist")
        self.key = name
