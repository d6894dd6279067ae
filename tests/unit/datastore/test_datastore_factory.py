"""Datastore URLs: the accepted forms, the rejected ones, and that opening is lazy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tortie.datastore.api import InvalidURLError, UnavailableError
from tortie.datastore.factory import ParsedURL, open_datastore, parse_url
from tortie.datastore.memory import MemoryDatastore
from tortie.datastore.sqlite import SqliteDatastore

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("url", "parsed"),
    [
        ("memory://", ParsedURL("memory")),
        ("sqlite:///var/lib/tortie/tortie.db", ParsedURL("sqlite", "/var/lib/tortie/tortie.db")),
        ("sqlite:/abs/x.db", ParsedURL("sqlite", "/abs/x.db")),
        ("SQLITE:///abs/x.db", ParsedURL("sqlite", "/abs/x.db")),
        ("sqlite:///abs/with%20space.db", ParsedURL("sqlite", "/abs/with space.db")),
        ("sqlite:///abs/x.db?timeout=2.5", ParsedURL("sqlite", "/abs/x.db", timeout=2.5)),
        ("etcd://127.0.0.1:2379", ParsedURL("etcd", endpoints=("127.0.0.1:2379",))),
        ("etcd://etcd1", ParsedURL("etcd", endpoints=("etcd1:2379",))),
        ("etcd+http://a:1,b:2/", ParsedURL("etcd", endpoints=("a:1", "b:2"))),
        ("etcd://[::1]:2379", ParsedURL("etcd", endpoints=("[::1]:2379",))),
        ("etcd://[::1]", ParsedURL("etcd", endpoints=("[::1]:2379",))),
        ("etcd://h:1?timeout=3", ParsedURL("etcd", endpoints=("h:1",), timeout=3.0)),
    ],
)
def test_accepted_urls(url: str, parsed: ParsedURL) -> None:
    assert parse_url(url) == parsed


def test_relative_sqlite_path_is_relative_to_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_url("sqlite:data/t.db") == ParsedURL("sqlite", str(tmp_path / "data/t.db"))
    store = open_datastore("sqlite:data/t.db", create=True)
    try:
        assert isinstance(store, SqliteDatastore)
        assert store.url == "sqlite:data/t.db"
        assert (tmp_path / "data" / "t.db").exists()
    finally:
        store.close()


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("", "no scheme"),
        ("/var/lib/tortie.db", "no scheme"),
        ("postgres://x/y", "unknown scheme"),
        ("sqlite://", "no database file path"),
        ("sqlite:", "no database file path"),
        ("sqlite:///dir/", "no database file path"),
        ("sqlite://relative.db", "host position"),
        ("sqlite:///x.db?timeout=abc", "not a number"),
        ("sqlite:///x.db?timeout=-1", "positive"),
        ("sqlite:///x.db?busy=1", "unknown parameter"),
        ("SQLITE:?&", "names no parameter"),  # was a KeyError (found by Hypothesis)
        ("etcd://h:1?&&", "names no parameter"),
        ("sqlite:///x.db#frag", "fragments"),
        ("etcd://", "no etcd endpoint"),
        ("etcd:host:2379", "no etcd endpoint"),
        ("etcd://h:0", "bad port"),
        ("etcd://h:99999", "bad port"),
        ("etcd://h:port", "bad port"),
        ("etcd://:2379", "no host"),
        ("etcd://a:1,,b:2", "no host"),
        ("etcd://[::1:2379", "unclosed"),
        ("etcd://h:1/path", "no path"),
        ("etcd://user:pw@h:1", "credentials"),
        ("etcd+https://h:1", "TLS"),
        ("memory://x", "memory://"),
        ("memory://?timeout=1", "memory://"),
    ],
)
def test_rejected_urls(url: str, why: str) -> None:
    with pytest.raises(InvalidURLError, match=why) as ei:
        open_datastore(url)
    assert "expected sqlite:///" in str(ei.value)  # the message lists the valid forms


def test_open_memory() -> None:
    store = open_datastore("memory://")
    assert isinstance(store, MemoryDatastore)
    assert store.url == "memory://"


def test_open_sqlite_keeps_the_url(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/t.db?timeout=1"
    store = open_datastore(url, create=True)
    try:
        assert store.url == url
        store.put("/a", "1")
    finally:
        store.close()


def test_open_sqlite_unavailable_names_url(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    url = f"sqlite://{tmp_path}/f/t.db"
    with pytest.raises(UnavailableError) as ei:
        open_datastore(url, create=True)
    assert url in str(ei.value)


def test_importing_the_factory_does_not_load_grpc() -> None:
    code = (
        "import sys, tortie.datastore.factory, tortie.datastore.syncer\n"
        "from tortie.datastore.factory import open_datastore\n"
        "open_datastore('memory://')\n"
        "bad = [m for m in ('grpc', 'pyetcd', 'google.protobuf', 'tortie.datastore.etcd')"
        " if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("ci", [True, False])
def test_missing_etcd_fails_under_ci_and_skips_otherwise(ci: bool) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TORTIE_REQUIRE_ALL")}
    env["TORTIE_ETCD"] = "/nonexistent/etcd"
    if ci:
        env["CI"] = "true"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/interop/test_etcd_datastore.py::test_closed_store_is_unavailable",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "etcd not found" in r.stdout, r.stdout
    if ci:
        assert r.returncode == 1, r.stdout
        assert "1 error" in r.stdout, r.stdout
    else:
        assert r.returncode == 0, r.stdout
        assert "1 skipped" in r.stdout, r.stdout
