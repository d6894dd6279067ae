"""etcd v3 datastore: the :mod:`.api` contract mapped onto etcd's own semantics over gRPC.

Problem: a multi-node cluster shares tortie's state in etcd, as Calico does. etcd already has
the model :mod:`.api` describes (a global revision, create/mod revisions per key, txn with
compares, watch from a revision, compaction), so this module is a thin translation.

Client: the generated gRPC stubs and messages shipped by ``etcd-sdk-python`` (``pyetcd``), used
directly rather than through its ``Etcd3Client``: that client hides the response headers
(a failed txn's revision), marks an endpoint failed for 5 minutes after one error, shares one
watch stream and callback thread among all watches, and has no per-watch way to surface a
compaction as an exception from ``next()``. The stubs are the maintained part of the package.

Mapping:
- ``create``: txn ``create_revision(key) == 0`` then put; ``update``/``delete(rev)``: txn
  ``mod_revision == rev and version > 0`` (the ``version`` guard keeps ``rev=0`` from matching an
  absent key), the failure branch reads the key atomically to tell NotFound from Conflict.
- ``txn``: each :class:`Compare` is ``mod_revision == n``; etcd treats an absent key's
  mod_revision as 0, which is the contract's "must not exist".
- Compaction: etcd drops a delete's tombstone that sits *at* its compaction revision (measured
  on 3.4.23: watch from R after compact(R) misses a delete at R), while the contract promises a
  watch from the horizon sees every event at it. So ``compact(R)`` asks etcd to compact at
  ``R - 1`` and ``watch(p, S)`` asks etcd for ``S - 1`` and drops events below ``S``; etcd's
  ``compact_revision`` C answers "horizon C + 1". This stays right when something else (etcd's
  auto-compaction) compacts the cluster.

Invariants: every RPC has a deadline (``timeout``, 5 s by default), so a dead cluster gives
:class:`UnavailableError` naming the URL within about ``timeout`` per endpoint, not a hang;
grpc errors never escape.

Hazards:
- Endpoints are tried in turn; the one that answered is kept first. A write is retried on
  another endpoint only when the first said UNAVAILABLE; on a deadline its outcome is unknown,
  so it raises :class:`UnavailableError` saying so (a CAS caller re-reads and retries).
- gRPC channels must not cross ``fork()``: open a new store in the child.
- Each watch holds a gRPC stream and a reader thread until :meth:`EtcdWatch.close`.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import grpc  # type: ignore[import-untyped]

from tortie.datastore.api import (
    IDENTITY_KEY,
    AlreadyExistsError,
    CompactedError,
    Compare,
    ConflictError,
    DatastoreError,
    EventType,
    KeyValue,
    ListResult,
    NotFoundError,
    Op,
    Put,
    TxnResult,
    UnavailableError,
    WatchEvent,
)
from tortie.datastore.etcd_stubs import load_etcdrpc
from tortie.datastore.memory import check_distinct_keys

# Not `from pyetcd import etcdrpc`: that loads pyetcd's unused client too (etcd_stubs).
etcdrpc: Any = load_etcdrpc()

__all__ = ["DEFAULT_TIMEOUT", "EtcdDatastore", "EtcdWatch"]

DEFAULT_TIMEOUT = 5.0

_CHANNEL_OPTIONS = [
    # Reconnect quickly after etcd comes back (gRPC's default backoff grows to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
    # A big list must not fail on gRPC's 4 MiB default.
    ("grpc.max_receive_message_length", 512 * 1024 * 1024),
    # Notice a silently dead peer under an idle watch. etcd's default enforcement policy
    # accepts pings every 5 s or slower.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


def _b(s: str) -> bytes:
    return s.encode("utf-8")


def _s(b: bytes) -> str:
    # "replace": a key or value written by another tool must not crash a list.
    return b.decode("utf-8", errors="replace")


def _prefix_range(prefix: str) -> tuple[bytes, bytes]:
    """etcd's (key, range_end) for every key starting with ``prefix``."""
    if not prefix:
        return b"\0", b"\0"  # range_end "\0" means "every key >= key"
    end = bytearray(_b(prefix))
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return _b(prefix), b"\0"
    end[-1] += 1
    return _b(prefix), bytes(end)


def _kv(kv: Any) -> KeyValue:
    return KeyValue(_s(kv.key), _s(kv.value), int(kv.create_revision), int(kv.mod_revision))


def _identity_of(url: str, value: str) -> str:
    try:
        ident = json.loads(value)["id"]
    except (ValueError, KeyError, TypeError):
        ident = None
    if not isinstance(ident, str) or not ident:
        raise DatastoreError(
            f"datastore {url}: {IDENTITY_KEY} holds no valid id ({value[:80]!r}); it is written "
            'by `tortie datastore init` as JSON with an "id" (docs/datastore.md)'
        )
    return ident


def _mod_eq(key: str, rev: int) -> Any:
    return etcdrpc.Compare(
        key=_b(key),
        target=etcdrpc.Compare.MOD,
        result=etcdrpc.Compare.EQUAL,
        mod_revision=rev,
    )


def _exists(key: str) -> Any:
    return etcdrpc.Compare(
        key=_b(key),
        target=etcdrpc.Compare.VERSION,
        result=etcdrpc.Compare.GREATER,
        version=0,
    )


def _absent(key: str) -> Any:
    return etcdrpc.Compare(
        key=_b(key),
        target=etcdrpc.Compare.CREATE,
        result=etcdrpc.Compare.EQUAL,
        create_revision=0,
    )


def _op_put(key: str, value: str, prev_kv: bool = False) -> Any:
    return etcdrpc.RequestOp(
        request_put=etcdrpc.PutRequest(key=_b(key), value=_b(value), prev_kv=prev_kv)
    )


def _op_delete(key: str) -> Any:
    return etcdrpc.RequestOp(request_delete_range=etcdrpc.DeleteRangeRequest(key=_b(key)))


def _op_get(key: str) -> Any:
    return etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=_b(key)))


class _Endpoint:
    def __init__(self, netloc: str) -> None:
        self.netloc = netloc
        self.channel = grpc.insecure_channel(netloc, options=_CHANNEL_OPTIONS)
        self.kv = etcdrpc.KVStub(self.channel)
        self.watch = etcdrpc.WatchStub(self.channel)

    def close(self) -> None:
        self.channel.close()


class EtcdDatastore:
    """The datastore on an etcd v3 cluster (``endpoints``: ``host:port`` strings).

    Construction checks that some endpoint answers (one cheap read), so a wrong URL fails at
    open with :class:`UnavailableError`, not at first use."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        check: bool = True,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self._url = url or "etcd://" + ",".join(endpoints)
        self.timeout = timeout
        self._endpoints = [_Endpoint(e) for e in endpoints]
        self._lock = threading.Lock()
        self._current = 0  # index of the endpoint that answered last
        self._closed = False
        if check:
            try:
                self.revision()
            except BaseException:
                self.close()
                raise

    @property
    def url(self) -> str:
        return self._url

    # -- RPC plumbing -------------------------------------------------------------------------
    def _order(self) -> list[int]:
        with self._lock:
            if self._closed:
                raise UnavailableError(self._url, "the datastore has been closed")
            first = self._current
        n = len(self._endpoints)
        return [(first + i) % n for i in range(n)]

    def _call(self, method: str, request: Any, *, write: bool) -> Any:
        """Call ``KV.method`` on the first endpoint that answers."""
        failures: list[str] = []
        for i in self._order():
            ep = self._endpoints[i]
            try:
                response = getattr(ep.kv, method)(request, timeout=self.timeout)
            except grpc.RpcError as e:
                code = e.code()
                if code == grpc.StatusCode.UNAVAILABLE:
                    failures.append(f"{ep.netloc}: {e.details()}")
                    continue
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    if write:
                        raise UnavailableError(
                            self._url,
                            f"{ep.netloc} did not answer within {self.timeout:g} s; the write "
                            "may or may not have been applied: read and retry",
                        ) from None
                    failures.append(f"{ep.netloc}: no answer within {self.timeout:g} s")
                    continue
                raise self._translate(e) from None
            with self._lock:
                self._current = i
            return response
        raise UnavailableError(self._url, "; ".join(failures) + " (is etcd running and reachable?)")

    def _translate(self, e: Any) -> DatastoreError:
        code = e.code()
        details = e.details() or str(code)
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return UnavailableError(self._url, f"etcd refused access: {details}")
        if code in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.OUT_OF_RANGE,
        ):
            return DatastoreError(f"etcd rejected the request: {details}")
        return UnavailableError(self._url, f"{code.name}: {details}")

    # -- reads --------------------------------------------------------------------------------
    def get(self, key: str) -> KeyValue | None:
        resp = self._call("Range", etcdrpc.RangeRequest(key=_b(key)), write=False)
        return _kv(resp.kvs[0]) if resp.kvs else None

    def list(self, prefix: str) -> ListResult:
        key, end = _prefix_range(prefix)
        # etcd returns a range in key (byte) order, read at one revision: the header's.
        resp = self._call("Range", etcdrpc.RangeRequest(key=key, range_end=end), write=False)
        return ListResult(
            items=tuple(_kv(kv) for kv in resp.kvs), revision=int(resp.header.revision)
        )

    def revision(self) -> int:
        req = etcdrpc.RangeRequest(key=b"\0", count_only=True)
        return int(self._call("Range", req, write=False).header.revision)

    # -- identity (docs/datastore.md) ---------------------------------------------------------
    def identity(self) -> str:
        kv = self.get(IDENTITY_KEY)
        return "" if kv is None else _identity_of(self._url, kv.value)

    def ensure_identity(self) -> str:
        """Write the identity key if absent (create-if-absent, one txn); return the id."""
        doc = {"id": str(uuid4()), "created": datetime.now(UTC).isoformat(timespec="seconds")}
        resp = self._txn(
            [_absent(IDENTITY_KEY)],
            [_op_put(IDENTITY_KEY, json.dumps(doc))],
            [_op_get(IDENTITY_KEY)],
        )
        if resp.succeeded:
            return doc["id"]
        kvs = resp.responses[0].response_range.kvs
        return _identity_of(self._url, _s(kvs[0].value)) if kvs else self.ensure_identity()

    # -- writes -------------------------------------------------------------------------------
    def _txn(self, compare: Sequence[Any], success: Sequence[Any], failure: Sequence[Any]) -> Any:
        req = etcdrpc.TxnRequest(compare=compare, success=success, failure=failure)
        return self._call("Txn", req, write=True)

    def _conflict(self, key: str, expected: int, failure_resp: Any) -> DatastoreError:
        kvs = failure_resp.responses[0].response_range.kvs
        if not kvs:
            return NotFoundError(key)
        return ConflictError(key, expected, int(kvs[0].mod_revision))

    def create(self, key: str, value: str) -> KeyValue:
        resp = self._txn([_absent(key)], [_op_put(key, value)], [])
        if not resp.succeeded:
            raise AlreadyExistsError(key)
        rev = int(resp.header.revision)
        return KeyValue(key, value, rev, rev)

    def update(self, key: str, value: str, mod_revision: int) -> KeyValue:
        resp = self._txn(
            [_mod_eq(key, mod_revision), _exists(key)],
            [_op_put(key, value, prev_kv=True)],
            [_op_get(key)],
        )
        if not resp.succeeded:
            raise self._conflict(key, mod_revision, resp)
        rev = int(resp.header.revision)
        prev = resp.responses[0].response_put.prev_kv
        return KeyValue(key, value, int(prev.create_revision), rev)

    def put(self, key: str, value: str) -> KeyValue:
        req = etcdrpc.PutRequest(key=_b(key), value=_b(value), prev_kv=True)
        resp = self._call("Put", req, write=True)
        rev = int(resp.header.revision)
        created = int(resp.prev_kv.create_revision) if resp.HasField("prev_kv") else rev
        return KeyValue(key, value, created, rev)

    def delete(self, key: str, mod_revision: int | None = None) -> None:
        if mod_revision is None:
            req = etcdrpc.DeleteRangeRequest(key=_b(key))
            if not self._call("DeleteRange", req, write=True).deleted:
                raise NotFoundError(key)
            return
        resp = self._txn(
            [_mod_eq(key, mod_revision), _exists(key)], [_op_delete(key)], [_op_get(key)]
        )
        if not resp.succeeded:
            raise self._conflict(key, mod_revision, resp)

    def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        # etcd rejects these too, but with a less helpful message.
        check_distinct_keys(ops)
        resp = self._txn(
            [_mod_eq(c.key, c.mod_revision) for c in compares],
            [
                _op_put(op.key, op.value) if isinstance(op, Put) else _op_delete(op.key)
                for op in ops
            ],
            [],
        )
        return TxnResult(bool(resp.succeeded), int(resp.header.revision))

    # -- history ------------------------------------------------------------------------------
    def compact(self, revision: int) -> None:
        # etcd compaction at C keeps every event after C but may drop a tombstone at C: ask it
        # for revision - 1 so the horizon we promise (revision) has complete history.
        target = min(revision, self.revision()) - 1
        if target < 1:
            return
        try:
            self._call("Compact", etcdrpc.CompactionRequest(revision=target), write=True)
        except DatastoreError as e:
            # Compacting at or below the current horizon is a no-op, not an error.
            if isinstance(e, UnavailableError) or "compacted" not in str(e):
                raise

    def watch(self, prefix: str, start_revision: int) -> EtcdWatch:
        failures: list[str] = []
        for i in self._order():
            ep = self._endpoints[i]
            w = EtcdWatch(self, ep, prefix, start_revision)
            try:
                w.wait_created(self.timeout)
            except UnavailableError as e:
                w.close()
                failures.append(f"{ep.netloc}: {e.detail}")
                continue
            except BaseException:
                w.close()
                raise
            with self._lock:
                self._current = i
            return w
        raise UnavailableError(self._url, "; ".join(failures))

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for ep in self._endpoints:
            ep.close()


_Item = list[WatchEvent] | DatastoreError | None


class EtcdWatch:
    """One etcd watch stream; a reader thread turns responses into event batches on a queue.

    :meth:`next` is for one thread; :meth:`close` may be called from any thread."""

    def __init__(self, store: EtcdDatastore, ep: _Endpoint, prefix: str, start: int) -> None:
        self._store = store
        self._start = start
        self._netloc = ep.netloc
        self._items: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._created = threading.Event()
        self._closed = False
        self._error: DatastoreError | None = None  # raised by next() once seen
        self._fatal: DatastoreError | None = None  # set by the reader when the stream ends
        key, end = _prefix_range(prefix)
        # start - 1 (never 0: etcd reads 0 as "from now"): see the module docstring.
        self._requests.put(
            etcdrpc.WatchRequest(
                create_request=etcdrpc.WatchCreateRequest(
                    key=key, range_end=end, start_revision=max(1, start - 1)
                )
            )
        )
        self._call = ep.watch.Watch(self._request_iter())
        self._thread = threading.Thread(target=self._read, name=f"etcd-watch-{prefix}", daemon=True)
        self._thread.start()

    def _request_iter(self) -> Iterator[Any]:
        while True:
            req = self._requests.get()
            if req is None:
                return
            yield req

    def _read(self) -> None:
        url = self._store.url
        try:
            for resp in self._call:
                if resp.compact_revision:
                    self._fail(CompactedError(self._start, int(resp.compact_revision) + 1))
                    return
                if resp.canceled:
                    reason = resp.cancel_reason or "cancelled by the server"
                    self._fail(UnavailableError(url, f"watch cancelled: {reason}"))
                    return
                if resp.created:
                    self._created.set()
                events = [
                    WatchEvent(
                        EventType.PUT if ev.type == 0 else EventType.DELETE,
                        _s(ev.kv.key),
                        _s(ev.kv.value) if ev.type == 0 else None,
                        int(ev.kv.mod_revision),
                    )
                    for ev in resp.events
                    if ev.kv.mod_revision >= self._start
                ]
                if events:
                    self._items.put(events)
            self._fail(UnavailableError(url, f"{self._netloc} ended the watch stream"))
        except grpc.RpcError as e:
            if self._closed:
                self._items.put(None)
                return
            self._fail(UnavailableError(url, f"watch on {self._netloc} broke: {e.details()}"))
        except Exception as e:  # never die silently: the consumer would wait forever
            self._fail(UnavailableError(url, f"watch reader failed: {e!r}"))

    def _fail(self, err: DatastoreError) -> None:
        self._fatal = err
        self._items.put(err)
        self._created.set()

    def wait_created(self, timeout: float) -> None:
        """Block until etcd confirmed the watch; raise :class:`UnavailableError` if the stream
        broke first (so the caller can try another endpoint). A :class:`CompactedError` is left
        for :meth:`next`, as the contract allows."""
        if not self._created.wait(timeout):
            raise UnavailableError(
                self._store.url, f"{self._netloc}: no answer to a watch within {timeout:g} s"
            )
        if isinstance(self._fatal, UnavailableError):
            raise self._fatal

    def next(self, timeout: float | None = None) -> list[WatchEvent]:
        if self._error is not None:
            raise self._error
        if self._closed:
            return []
        try:
            item = self._items.get(timeout=timeout)
        except queue.Empty:
            return []
        if item is None:
            return []
        if isinstance(item, DatastoreError):
            self._error = item
            raise item
        return item

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._requests.put(None)
        self._call.cancel()
        self._items.put(None)  # wake a blocked next()
