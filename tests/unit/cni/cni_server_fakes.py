"""A failing datastore for testing the agent's CNI server without root (the kernel is
:class:`tortie.dataplane.fake_netns.FakeNamespaces`).

``FlakyStore`` wraps a datastore and raises UnavailableError for the keys (or all keys) a test
marks as down.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from tortie.datastore.api import (
    Compare,
    Datastore,
    KeyValue,
    ListResult,
    Op,
    TxnResult,
    UnavailableError,
)


class FlakyStore:
    """A Datastore whose keys matching ``down`` raise UnavailableError (all when True)."""

    def __init__(self, inner: Datastore) -> None:
        self.inner = inner
        self.down: bool | Callable[[str], bool] = False

    def _check(self, *keys: str) -> None:
        if self.down is True or (callable(self.down) and any(self.down(k) for k in keys)):
            raise UnavailableError(self.inner.url, "connection refused (test)")

    @property
    def url(self) -> str:
        return self.inner.url

    def get(self, key: str) -> KeyValue | None:
        self._check(key)
        return self.inner.get(key)

    def list(self, prefix: str) -> ListResult:
        self._check(prefix)
        return self.inner.list(prefix)

    def create(self, key: str, value: str) -> KeyValue:
        self._check(key)
        return self.inner.create(key, value)

    def update(self, key: str, value: str, mod_revision: int) -> KeyValue:
        self._check(key)
        return self.inner.update(key, value, mod_revision)

    def put(self, key: str, value: str) -> KeyValue:
        self._check(key)
        return self.inner.put(key, value)

    def delete(self, key: str, mod_revision: int | None = None) -> None:
        self._check(key)
        self.inner.delete(key, mod_revision)

    def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        self._check(*(c.key for c in compares), *(o.key for o in ops))
        return self.inner.txn(compares, ops)

    def revision(self) -> int:
        self._check("")
        return self.inner.revision()

    def watch(self, prefix: str, start_revision: int) -> Any:
        return self.inner.watch(prefix, start_revision)

    def compact(self, revision: int) -> None:
        self.inner.compact(revision)

    def close(self) -> None:
        self.inner.close()
