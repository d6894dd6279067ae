"""Typed access to Calico-shaped resources stored in a :class:`Datastore`.

Problem: the CLI, the agent and the CNI plugin all read and write resources (IPPool, Node,
BGPPeer, ...). They must agree on keys, on the stored form, and on what an apply means.

Invariants:
- Stored value = ``resource.to_document()`` as JSON, without ``metadata.resourceVersion``:
  the resource version IS the datastore mod revision, filled in on read (as Calico does).
- ``apply``/``create``/``delete_many`` are all-or-nothing: one datastore transaction guarded by
  the revision of every key read, retried a bounded number of times if something else wrote
  meanwhile. Set-level validation (overlapping pools) runs against the state the transaction
  is guarded by, so two racing applies cannot together create an overlap.
- A document carrying ``metadata.resourceVersion`` is a compare-and-swap precondition.
- ``uid`` and ``creationTimestamp`` are set on creation and preserved by updates.

Hazards: values in the store may be corrupt or written by a newer tortie; such an entry is
reported with its key (:class:`CorruptResourceError`), never silently dropped or crashed on.
"""

from __future__ import annotations

import builtins
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from tortie.datastore.api import (
    Compare,
    ConflictError,
    Datastore,
    DatastoreError,
    Delete,
    KeyValue,
    NotFoundError,
    Op,
    Put,
)
from tortie.model.errors import ModelError
from tortie.model.keys import key_for, kind_prefix, resource_key
from tortie.model.resources import IPPool, Resource
from tortie.model.validation import check_pools

R = TypeVar("R", bound=Resource)

MAX_TXN_RETRIES = 20


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


class ResourceExistsError(DatastoreError):
    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"{kind} {name!r} already exists; use 'tortie apply' to replace it")


class ResourceConflictError(DatastoreError):
    pass


@dataclass(frozen=True)
class _Planned:
    resource: Resource
    key: str
    current: KeyValue | None


class ResourceStore:
    """Resources over a datastore. ``clock`` returns an aware UTC datetime (injectable)."""

    def __init__(
        self,
        store: Datastore,
        clock: Callable[[], datetime] | None = None,
        new_uid: Callable[[], str] | None = None,
    ) -> None:
        self.store = store
        self._clock = clock or (lambda: datetime.now(UTC))
        self._new_uid = new_uid or (lambda: str(uuid.uuid4()))

    # -- decoding -------------------------------------------------------------------------
    def decode(self, cls: type[R], kv: KeyValue) -> R:
        try:
            doc = json.loads(kv.value)
            res = cls.from_document(doc)
        except (ValueError, ModelError) as err:
            raise CorruptResourceError(kv.key, str(err).splitlines()[0]) from err
        return res.with_metadata(resource_version=str(kv.mod_revision))

    @staticmethod
    def encode(res: Resource) -> str:
        doc = res.to_document()
        meta = dict(doc.get("metadata", {}))
        meta.pop("resourceVersion", None)
        doc["metadata"] = meta
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    # -- reads ----------------------------------------------------------------------------
    def get(self, cls: type[R], name: str, namespace: str | None = None) -> R | None:
        kv = self.store.get(resource_key(cls.KIND, name, namespace))
        return None if kv is None else self.decode(cls, kv)

    def require(self, cls: type[R], name: str, namespace: str | None = None) -> R:
        res = self.get(cls, name, namespace)
        if res is None:
            raise ResourceNotFoundError(cls.KIND, name, namespace)
        return res

    def list(self, cls: type[R], namespace: str | None = None) -> builtins.list[R]:
        """All resources of ``cls`` (in ``namespace``, or all namespaces when None)."""
        prefix = kind_prefix(cls.KIND, namespace)
        return [self.decode(cls, kv) for kv in self.store.list(prefix).items]

    # -- writes ---------------------------------------------------------------------------
    def apply(self, resources: Sequence[Resource]) -> builtins.list[Resource]:
        """Create or replace every resource, all or nothing."""
        return self._write(resources, must_exist=False, must_not_exist=False)

    def create(self, resources: Sequence[Resource]) -> builtins.list[Resource]:
        """Create every resource; fail (writing nothing) if any exists."""
        return self._write(resources, must_exist=False, must_not_exist=True)

    def replace(self, resources: Sequence[Resource]) -> builtins.list[Resource]:
        """Replace every resource; fail (writing nothing) if any does not exist."""
        return self._write(resources, must_exist=True, must_not_exist=False)

    def _write(
        self, resources: Sequence[Resource], *, must_exist: bool, must_not_exist: bool
    ) -> builtins.list[Resource]:
        seen: set[str] = set()
        for res in resources:
            k = key_for(res)
            if k in seen:
                raise ResourceConflictError(
                    f"{res.kind} {res.metadata.name!r} appears twice in the input"
                )
            seen.add(k)
        for _ in range(MAX_TXN_RETRIES):
            plans = [_Planned(r, key_for(r), self.store.get(key_for(r))) for r in resources]
            compares: builtins.list[Compare] = []
            ops: builtins.list[Op] = []
            for p in plans:
                self._check_preconditions(p, must_exist, must_not_exist)
                compares.append(Compare(p.key, p.current.mod_revision if p.current else 0))
                ops.append(Put(p.key, self.encode(self._stamp(p))))
            compares += self._validate_set(plans)
            result = self.store.txn(compares, ops)
            if result.succeeded:
                return [
                    p.resource.with_metadata(resource_version=str(result.revision)) for p in plans
                ]
        raise ResourceConflictError(
            "the datastore kept changing while applying; nothing was written, try again"
        )

    def _check_preconditions(self, p: _Planned, must_exist: bool, must_not_exist: bool) -> None:
        res = p.resource
        if must_not_exist and p.current is not None:
            raise ResourceExistsError(res.kind, res.metadata.name)
        if must_exist and p.current is None:
            raise ResourceNotFoundError(res.kind, res.metadata.name, res.metadata.namespace)
        want = res.metadata.resource_version
        if want:
            have = str(p.current.mod_revision) if p.current else "(absent)"
            if want != have:
                raise ResourceConflictError(
                    f"{res.kind} {res.metadata.name!r}: resourceVersion {want} does not match "
                    f"the stored {have}; get it again, or drop resourceVersion to overwrite"
                )

    def _stamp(self, p: _Planned) -> Resource:
        """Keep uid/creationTimestamp of the stored object; mint them for new ones."""
        meta: dict[str, Any] = {"resource_version": None}
        old_meta: dict[str, Any] = {}
        if p.current is not None:
            try:
                old_meta = json.loads(p.current.value).get("metadata", {})
            except ValueError:
                old_meta = {}
        meta["uid"] = old_meta.get("uid") or p.resource.metadata.uid or self._new_uid()
        meta["creation_timestamp"] = (
            old_meta.get("creationTimestamp")
            or p.resource.metadata.creation_timestamp
            or self._clock().strftime("%Y-%m-%dT%H:%M:%SZ")
        )
        return p.resource.with_metadata(**meta)

    def _validate_set(self, plans: Sequence[_Planned]) -> builtins.list[Compare]:
        """Cross-resource validation; returns extra guards for the state it relied on."""
        new_pools = [p.resource for p in plans if isinstance(p.resource, IPPool)]
        if not new_pools:
            return []
        listing = self.store.list(kind_prefix(IPPool.KIND))
        existing = [self.decode(IPPool, kv) for kv in listing.items]
        check_pools(new_pools, existing)
        # Guard on the whole pool set: any pool created/changed meanwhile -> retry.
        planned = {p.key for p in plans}
        return [Compare(kv.key, kv.mod_revision) for kv in listing.items if kv.key not in planned]

    def delete(self, cls: type[R], name: str, namespace: str | None = None) -> R:
        key = resource_key(cls.KIND, name, namespace)
        kv = self.store.get(key)
        if kv is None:
            raise ResourceNotFoundError(cls.KIND, name, namespace)
        old = self.decode(cls, kv)
        try:
            self.store.delete(key, kv.mod_revision)
        except ConflictError as err:
            raise ResourceConflictError(
                f"{cls.KIND} {name!r} changed while deleting it; try again"
            ) from err
        except NotFoundError as err:
            raise ResourceNotFoundError(cls.KIND, name, namespace) from err
        return old

    def delete_many(
        self, resources: Sequence[Resource], *, skip_missing: bool = False
    ) -> builtins.list[Resource]:
        """Delete every resource, all or nothing; missing ones are an error unless skipped."""
        for _ in range(MAX_TXN_RETRIES):
            compares: builtins.list[Compare] = []
            ops: builtins.list[Op] = []
            deleted: builtins.list[Resource] = []
            for res in resources:
                k = key_for(res)
                kv = self.store.get(k)
                if kv is None:
                    if skip_missing:
                        continue
                    raise ResourceNotFoundError(res.kind, res.metadata.name, res.metadata.namespace)
                compares.append(Compare(k, kv.mod_revision))
                ops.append(Delete(k))
                deleted.append(res)
            if self.store.txn(compares, ops).succeeded:
                return deleted
        raise ResourceConflictError(
            "the datastore kept changing while deleting; nothing was deleted, try again"
        )
