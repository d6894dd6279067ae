"""Open a datastore from its URL: the one place that knows the URL forms.

Problem: the CLI, the agent and the CNI plugin all take a datastore URL (``--datastore`` or
``$TORTIE_DATASTORE``) and must agree on what it means and fail the same way on a bad one.

URL forms (anything else raises :class:`InvalidURLError`, whose message lists the forms):

- ``sqlite:///abs/path.db`` (also ``sqlite:/abs/path.db``): an SQLite file. Opening never
  makes it: ``open_datastore(url, create=True)`` (``tortie datastore init``, an agent's first
  start) is the one way to create a store (docs/datastore.md).
- ``sqlite:relative/path.db``: relative to the current directory (handy in labs and tests).
  ``sqlite://name.db`` is rejected: the part after ``//`` is a host, and SQLite has none;
  reading it as a relative path would silently put the file somewhere unexpected.
- ``etcd://host:port[,host:port...]`` (also ``etcd+http://``): etcd v3 over plain gRPC; the port
  defaults to 2379; IPv6 hosts in brackets. TLS (``etcd+https://``) is not supported yet.
- ``memory://``: a fresh in-process store (tests, one process only).
- ``?timeout=SECONDS`` on sqlite or etcd: the busy timeout (sqlite, default 30) or the
  per-RPC deadline (etcd, default 5).

Invariants: importing this module imports no backend; ``open_datastore`` imports the one the
URL names, so the CLI starts without loading gRPC. Every failure, for any text given as a URL,
is a :class:`~tortie.datastore.api.DatastoreError` naming the URL (a property test feeds it
arbitrary text); without ``create`` no file is made or changed.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote

from tortie.datastore.api import Datastore, InvalidURLError, UnavailableError

__all__ = ["ParsedURL", "open_datastore", "parse_url"]

ETCD_DEFAULT_PORT = 2379
_PORT = re.compile(r"[0-9]{1,5}")  # ASCII digits only: str.isdigit() accepts "²"


@dataclass(frozen=True, slots=True)
class ParsedURL:
    backend: str  # "sqlite", "etcd" or "memory"
    path: str | None = None  # sqlite: the absolute file path
    endpoints: tuple[str, ...] = ()  # etcd: "host:port" each
    timeout: float | None = None  # from ?timeout=


def _timeout(url: str, query: str) -> float | None:
    if not query:
        return None
    params = parse_qs(query, keep_blank_values=True)
    unknown = sorted(set(params) - {"timeout"})
    if unknown:
        raise InvalidURLError(url, f"unknown parameter(s) {', '.join(unknown)}")
    if "timeout" not in params:  # "?&": a query that names nothing
        raise InvalidURLError(url, f"the query {query!r} names no parameter (known: timeout)")
    raw = params["timeout"][-1]
    try:
        value = float(raw)
    except ValueError:
        raise InvalidURLError(url, f"timeout={raw!r} is not a number of seconds") from None
    if not (value > 0 and math.isfinite(value)):
        raise InvalidURLError(url, f"timeout={raw!r} must be a positive number of seconds")
    return value


def _endpoint(url: str, item: str) -> str:
    host, port = item, str(ETCD_DEFAULT_PORT)
    if item.startswith("["):  # [v6addr] or [v6addr]:port
        close = item.find("]")
        if close < 0:
            raise InvalidURLError(url, f"unclosed '[' in {item!r}")
        host, rest = item[: close + 1], item[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise InvalidURLError(url, f"bad endpoint {item!r}")
            port = rest[1:]
    elif ":" in item:
        host, port = item.rsplit(":", 1)
    if not host or host == "[]":
        raise InvalidURLError(url, f"endpoint {item!r} has no host")
    if not _PORT.fullmatch(port) or not 0 < int(port) < 65536:
        raise InvalidURLError(url, f"endpoint {item!r} has a bad port")
    return f"{host}:{int(port)}"


def parse_url(url: str) -> ParsedURL:
    """Parse and validate a datastore URL without opening anything."""
    if not isinstance(url, str) or ":" not in url:
        raise InvalidURLError(str(url), "no scheme")
    scheme, _, rest = url.partition(":")
    scheme = scheme.lower()
    # Parsed by hand: urllib's rules (netloc for "sqlite:rel.db"? IPv6 errors as ValueError)
    # are not the ones documented above.
    rest, _, query = rest.partition("?")
    if "#" in rest or "#" in query:
        raise InvalidURLError(url, "fragments ('#') are not allowed")

    if scheme == "memory":
        if rest not in ("//", "") or query:
            raise InvalidURLError(url, "memory:// takes no host, path or parameters")
        return ParsedURL("memory")

    if scheme == "sqlite":
        timeout = _timeout(url, query)
        if rest.startswith("//"):
            authority, slash, path = rest[2:].partition("/")
            if authority:
                raise InvalidURLError(
                    url,
                    f"{authority!r} is in the host position; write sqlite:///abs/path.db "
                    "(three slashes) or sqlite:relative/path.db",
                )
            path = slash + path
        else:
            path = rest
        path = unquote(path)
        if not path or path.endswith("/"):
            raise InvalidURLError(url, "no database file path")
        if "\0" in path:
            raise InvalidURLError(url, "the path contains a NUL byte (%00)")
        return ParsedURL("sqlite", path=os.path.abspath(path), timeout=timeout)

    if scheme in ("etcd", "etcd+http"):
        timeout = _timeout(url, query)
        if not rest.startswith("//"):
            raise InvalidURLError(url, "no etcd endpoint")
        netloc, slash, path = rest[2:].partition("/")
        if not netloc:
            raise InvalidURLError(url, "no etcd endpoint")
        if path:
            raise InvalidURLError(url, f"etcd URLs take no path (got {slash + path!r})")
        if "@" in netloc:
            raise InvalidURLError(url, "credentials in the URL are not supported")
        endpoints = tuple(_endpoint(url, item) for item in netloc.split(","))
        return ParsedURL("etcd", endpoints=endpoints, timeout=timeout)

    if scheme in ("etcd+https", "etcds"):
        raise InvalidURLError(url, "etcd over TLS is not supported yet")
    raise InvalidURLError(url, f"unknown scheme {scheme!r}")


def open_datastore(url: str, *, create: bool = False) -> Datastore:
    """Open the datastore ``url`` names.

    Without ``create`` nothing is created or changed: a missing SQLite file is
    :class:`~tortie.datastore.api.DatastoreMissingError`, a file that is not a tortie store
    :class:`~tortie.datastore.api.NotADatastoreError`. With ``create`` a missing store is
    created and an existing one given an id if it has none (SQLite schema 1, an etcd without
    the identity key): ``tortie datastore init`` and an agent's first start.

    Raises :class:`InvalidURLError` for a malformed URL and
    :class:`~tortie.datastore.api.UnavailableError` (naming the URL and what to do) when the
    store cannot be opened or reached.
    """
    parsed = parse_url(url)
    # Backends are imported on demand (hence the PLC0415 waivers): see the module docstring.
    if parsed.backend == "memory":
        from tortie.datastore.memory import MemoryDatastore

        return MemoryDatastore(url)
    if parsed.backend == "sqlite":
        from tortie.datastore.sqlite import DEFAULT_BUSY_TIMEOUT, SqliteDatastore

        assert parsed.path is not None
        return SqliteDatastore(
            parsed.path,
            url=url,
            busy_timeout=parsed.timeout or DEFAULT_BUSY_TIMEOUT,
            create=create,
        )
    # The etcd backend loads gRPC and protobuf (~0.2 s), and may fail to if they are missing.
    try:
        from tortie.datastore.etcd import DEFAULT_TIMEOUT, EtcdDatastore
    except ImportError as e:
        raise UnavailableError(
            url, f"the etcd client cannot be loaded ({e}); reinstall tortie's dependencies"
        ) from None

    store = EtcdDatastore(parsed.endpoints, url=url, timeout=parsed.timeout or DEFAULT_TIMEOUT)
    if create:
        try:
            store.ensure_identity()
        except BaseException:
            store.close()
            raise
    return store
