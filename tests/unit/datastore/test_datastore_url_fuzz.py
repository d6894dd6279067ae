"""Property tests (issue 17, item 11): any text given as a datastore URL gets a clear
:class:`DatastoreError` or a store, never a traceback, and opening never creates a file."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import string
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tortie.datastore.api import DatastoreError, InvalidURLError
from tortie.datastore.factory import ParsedURL, open_datastore, parse_url
from tortie.datastore.sqlite import SqliteDatastore

pytestmark = pytest.mark.unit

# Every code point, surrogates too (argv can carry them: undecodable bytes, surrogateescape).
ANY_CHAR = st.characters(codec=None, categories=None)
MAX_NAME = 60
DEPTH = MAX_NAME // 3 + 2  # more levels than "../" * n in a name can climb
ANY_TEXT = st.text(ANY_CHAR, max_size=MAX_NAME)
URLISH = st.sampled_from(string.ascii_letters + string.digits + ":/?#[]@!$&'()*+,;=%.-_~ \\\0")
SCHEMES = st.sampled_from(
    ["sqlite:", "sqlite:/", "sqlite://", "sqlite:///", "etcd://", "etcd+http://", "etcd:",
     "etcds://", "memory:", "memory://", "SQLITE:///", ""]
)  # fmt: skip
PERCENT_BYTES = st.binary(max_size=20).map(lambda b: "".join(f"%{x:02x}" for x in b))


def url_texts() -> st.SearchStrategy[str]:
    tail = st.one_of(ANY_TEXT, st.text(URLISH, max_size=40), PERCENT_BYTES)
    return st.one_of(ANY_TEXT, st.tuples(SCHEMES, tail).map("".join))


@given(url_texts())
@settings(max_examples=600)
@example("sqlite:///proc/self/status")
@example("sqlite:///tmp/a%00b.db")
@example("sqlite:///tmp/a\0b.db")
@example("etcd://h:²")
@example("etcd://[::1]:99999")
@example("sqlite:///tmp/\udcff.db")
def test_parse_url_gives_a_parsed_url_or_a_clear_error(text: str) -> None:
    try:
        parsed = parse_url(text)
    except InvalidURLError as err:
        assert "expected sqlite:///" in str(err)
        return
    assert isinstance(parsed, ParsedURL)
    if parsed.backend == "sqlite":
        assert parsed.path is not None and os.path.isabs(parsed.path) and "\0" not in parsed.path
    elif parsed.backend == "etcd":
        assert parsed.endpoints and all(":" in e for e in parsed.endpoints)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with a tortie store, a plain file, a foreign database and a subdir, nested
    deeper than any generated name can climb with "../" (paths are also kept relative or
    under it): run against code that does create files, this test must not litter the
    machine (an earlier version, pointed at /etc/passwd, chmodded it on the old code)."""
    root = tmp_path_factory.mktemp("urlfuzz")
    for _ in range(DEPTH):
        root = root / "d"
    root.mkdir(parents=True)
    SqliteDatastore(root / "store.db", create=True).close()
    (root / "plain").write_text("not a database\n")
    (root / "plain").chmod(0o644)
    c = sqlite3.connect(root / "other.db")
    c.execute("CREATE TABLE t (x)")
    c.commit()
    c.close()
    (root / "dir").mkdir()
    return root


def listing(sandbox: Path) -> dict[str, tuple[str, int]]:
    """Every file under the sandbox's top directory (the store's own -wal/-shm aside) with its
    hash and mode."""
    root = sandbox.parents[DEPTH - 1]
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if name.startswith("store.db-"):
                continue
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            out[str(p.relative_to(root))] = (digest, p.stat().st_mode)
    return out


NAMES = st.one_of(
    ANY_TEXT,
    st.sampled_from(["store.db", "plain", "other.db", "dir", "dir/", "dir/x.db", "..", "."]),
    st.tuples(st.sampled_from(["", "dir/", "../", "./"]), ANY_TEXT).map("".join),
    st.integers(1, MAX_NAME // 3).map(lambda n: "../" * n + "x.db"),
)


@given(name=NAMES, form=st.sampled_from(["abs", "abs-quoted", "abs-slashes", "rel", "rel-quoted"]))
@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(name="a\0b", form="abs")
@example(name="%00", form="abs")
@example(name="\udcff", form="abs-quoted")
@example(name="store.db", form="abs-slashes")
def test_open_datastore_on_any_path_errs_clearly_and_creates_nothing(
    sandbox: Path, monkeypatch: pytest.MonkeyPatch, name: str, form: str
) -> None:
    monkeypatch.chdir(sandbox)
    before = listing(sandbox)
    quoted = quote(name.encode("utf-8", "surrogatepass"))
    url = {
        "abs": f"sqlite://{sandbox}/{name}",
        "abs-quoted": f"sqlite://{sandbox}/{quoted}",
        "abs-slashes": f"sqlite:///{sandbox}/{quoted}",  # the path starts with //
        "rel": f"sqlite:./{name}",  # ./: a name starting with / stays inside the sandbox
        "rel-quoted": f"sqlite:./{quoted}",
    }[form]
    try:
        store = open_datastore(url)
    except DatastoreError as err:
        assert str(err)
    else:
        assert os.path.samefile(store.path, sandbox / "store.db")  # type: ignore[attr-defined]
        store.close()  # only the tortie store opens
    assert listing(sandbox) == before
