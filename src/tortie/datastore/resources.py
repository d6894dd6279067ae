"""Typed access to Calico-shaped resources stored in a :class:`Datastore`.

Problem: the CLI, the agent and the CNI plugin all read and write resources (IPPool, Node,
BGPPeer, ...). They must agree on keys, on the stored form, and on what an apply means.

Invariants:
- Stored value = ``resource.to_document()`` as JSON, without ``metadata.resourceVersion``:
  the resource version IS the datastore mod revision, filled in on read (as Calico does).
- ``apply``/``create``/``delete_many`` are all-or-nothing: one datastore transaction guarded by
  the revision of every key read, retried a bounded number of times if something else wrote
  meanwhile.
- Set-level validation (overlapping pools) runs against the pool set the transaction is
  guarded by: every transaction that writes or deletes an IPPool also puts
  :data:`POOL_GUARD_KEY`, and one that validates pools compares that key's revision as read
  before listing them. So two racing applies cannot together create an overlap, whatever
  keys they write (the same scheme on every backend: it needs only compare and put).
- A stored resource is at most ``MAX_RESOURCE_BYTES`` of JSON (etcd's request limit), so
  what SQLite accepts, etcd accepts too.
- A BGPPeer password equal to :data:`~tortie.model.resources.REDACTED` (what ``tortie get``
  prints) keeps the stored password; with no stored password it is refused.
- A document carrying ``metadata.resourceVersion`` is a compare-and-swap precondition.
- ``uid`` and ``creationTimestamp`` are set on creation and preserved by updates.

Hazards:
- Values in the store may be corrupt or written by a newer tortie; such an entry is reported
  with its key (:class:`CorruptResourceError`), never silently dropped or crashed on. The
  reading commands use :mod:`tortie.datastore.documents`, which reports them the same way.
- The pool guard holds only among writers that use this class: a pool written with the
  datastore's own tools (etcdctl, sqlite3) bumps nothing. ``tortie ipam check`` reports
  overlapping pools whatever wrote them.
"""

from __future__ import annotations

import builtins
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from tortie.datastore.api import (
    Compare,
    Datastore,
    DatastoreError,
    Delete,
    KeyValue,
    Op,
    Put,
)
from tortie.datastore.decode import decode_resource
from tortie.datastore.resource_errors import CorruptResourceError, ResourceNotFoundError
from tortie.model.errors import ValidationError
from tortie.model.keys import key_for, kind_prefix, resource_key
from tortie.model.resources import REDACTED, BGPPeer, IPPool, Resource, is_redacted
from tortie.model.validation import check_pools, check_stored_size

R = TypeVar("R", bound=Resource)

MAX_TXN_RETRIES = 20

# Bumped (put) by every transaction that creates, changes or deletes an IPPool, and compared
# by every transaction that validates pools against each other. Comparing the revisions of
# the pools one listed is not enough: a pool created meanwhile has a key that was never
# listed, so two applies of overlapping new pools could both commit. Outside RESOURCE_ROOT
# and IPAM_ROOT, so the agent's view ignores it (agent/state.py).
POOL_GUARD_KEY = "/tortie/meta/guards/ippools"
_POOL_GUARD_VALUE = '{"guards":"IPPool","note":"bumped by every IPPool write"}'


__all__ = [
    "POOL_GUARD_KEY",
    "CorruptResourceError",
    "ResourceConflictError",
    "ResourceExistsError",
    "ResourceNotFoundError",
    "ResourceStore",
    "decode_resource",
]


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
        return decode_resource(cls, kv)

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
        keys = [key_for(res) for res in resources]
        seen: set[str] = set()
        for res, k in zip(resources, keys, strict=True):
            if k in seen:
                raise ResourceConflictError(
                    f"{res.kind} {res.metadata.name!r} appears twice in the input"
                )
            seen.add(k)
        pools = any(isinstance(res, IPPool) for res in resources)
        for _ in range(MAX_TXN_RETRIES):
            # The guard is read before the pools are listed: a pool written after this read
            # changes the guard, and then the transaction below fails and is retried.
            guard = self.store.get(POOL_GUARD_KEY) if pools else None
            listing = self.store.list(kind_prefix(IPPool.KIND)) if pools else None
            stored_pools = {kv.key: kv for kv in listing.items} if listing else {}
            plans = [
                _Planned(r, k, stored_pools.get(k) if isinstance(r, IPPool) else self.store.get(k))
                for r, k in zip(resources, keys, strict=True)
            ]
            compares: builtins.list[Compare] = []
            ops: builtins.list[Op] = []
            for p in plans:
                self._check_preconditions(p, must_exist, must_not_exist)
                compares.append(Compare(p.key, p.current.mod_revision if p.current else 0))
                ops.append(Put(p.key, self._stored_value(p)))
            if listing is not None:
                check_pools(
                    [p.resource for p in plans if isinstance(p.resource, IPPool)],
                    [self.decode(IPPool, kv) for kv in listing.items],
                )
                compares.append(Compare(POOL_GUARD_KEY, guard.mod_revision if guard else 0))
                ops.append(_bump_pool_guard())
            result = self.store.txn(compares, ops)
            if result.succeeded:
                version = str(result.revision)
                return [_with_resource_version(p.resource, version) for p in plans]
        raise ResourceConflictError(
            "the datastore kept changing while applying; nothing was written, try again"
        )

    def _stored_value(self, p: _Planned) -> str:
        """What ``p`` stores: stamped, with kept secrets, within the size limit."""
        res = self._stamp(replace(p, resource=self._keep_secret(p)))
        value = self.encode(res)
        check_stored_size(res, len(value.encode()))
        return value

    def _keep_secret(self, p: _Planned) -> Resource:
        """A BGPPeer whose password is the redaction marker keeps the stored password.

        ``tortie get -o yaml`` prints the marker instead of the password, so that output
        applied back (the usual edit cycle) must not turn the marker into the password.
        """
        res = p.resource
        if not isinstance(res, BGPPeer) or not is_redacted(res):
            return res
        stored = self.decode(BGPPeer, p.current) if p.current is not None else None
        password = stored.spec.password if stored is not None else None
        if password is None or password.value is None or password.value == REDACTED:
            raise ValidationError(
                f"{REDACTED!r} stands for the stored password, but this BGPPeer has no "
                "stored password to keep; give the password itself (or a secretKeyRef)",
                field="spec.password.value",
                kind=res.KIND,
                name=res.metadata.name,
            )
        return res.with_spec(password=password)

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
        old_meta: dict[str, Any] = {}
        if p.current is not None:
            try:
                old_meta = json.loads(p.current.value).get("metadata", {})
            except (ValueError, AttributeError):
                old_meta = {}
        meta = p.resource.metadata
        uid = _text(old_meta.get("uid")) or meta.uid or self._new_uid()
        created = (
            _text(old_meta.get("creationTimestamp"))
            or meta.creation_timestamp
            or self._clock().strftime("%Y-%m-%dT%H:%M:%SZ")
        )
        # A copy, not a re-validation: only these three strings change (re-validating a
        # resource re-checks every label: 0.4 s for 100k of them).
        stamped = meta.model_copy(
            update={"resource_version": None, "uid": uid, "creation_timestamp": created}
        )
        return p.resource.model_copy(update={"metadata": stamped})

    def delete(self, cls: type[R], name: str, namespace: str | None = None) -> R:
        key = resource_key(cls.KIND, name, namespace)
        kv = self.store.get(key)
        if kv is None:
            raise ResourceNotFoundError(cls.KIND, name, namespace)
        old = self.decode(cls, kv)
        ops: builtins.list[Op] = [Delete(key)]
        if cls is IPPool:
            ops.append(_bump_pool_guard())
        if not self.store.txn([Compare(key, kv.mod_revision)], ops).succeeded:
            if self.store.get(key) is None:
                raise ResourceNotFoundError(cls.KIND, name, namespace)
            raise ResourceConflictError(f"{cls.KIND} {name!r} changed while deleting it; try again")
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
            if any(isinstance(res, IPPool) for res in deleted):
                ops.append(_bump_pool_guard())
            if self.store.txn(compares, ops).succeeded:
                return deleted
        raise ResourceConflictError(
            "the datastore kept changing while deleting; nothing was deleted, try again"
        )


def _text(value: object) -> str | None:
    """A stored metadata string, or None if it is absent or not a string (a corrupt entry)."""
    return value if isinstance(value, str) and value else None


def _bump_pool_guard() -> Put:
    """The op that every transaction writing or deleting an IPPool carries.

    A put changes the key's ``mod_revision`` even when the value is the same, so a writer
    that compared the guard's revision loses to any pool write since its read.
    """
    return Put(POOL_GUARD_KEY, _POOL_GUARD_VALUE)


def _with_resource_version(res: Resource, version: str) -> Resource:
    # A copy without re-validation: the resource was validated, and a revision is a string.
    meta = res.metadata.model_copy(update={"resource_version": version})
    return res.model_copy(update={"metadata": meta})
