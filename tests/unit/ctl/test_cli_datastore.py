"""Issue 17 from the command line: read commands never create or change a datastore, creation
is ``tortie datastore init``, a malformed store refuses writes (items 1, 2, 4)."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlite_damage import corrupt_oldest_changes

from tortie.ctl.main import main

pytestmark = pytest.mark.unit

POOL = """\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: {name}
spec:
  cidr: {cidr}
"""


def tortie(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tortie.ctl.main", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


def files(db: Path) -> dict[str, tuple[int, str, int]]:
    """inode, content hash and mode of ``db`` and every file beside it named after it."""
    out = {}
    for p in sorted(db.parent.iterdir()):
        if p.name.startswith(db.name):
            st = p.stat()
            out[p.name] = (st.st_ino, hashlib.sha256(p.read_bytes()).hexdigest(), st.st_mode)
    return out


AGENT = textwrap.dedent(
    """
    import sys
    from tortie.datastore.factory import open_datastore

    store = open_datastore(sys.argv[1])
    for line in sys.stdin:  # one put per line: "key value"
        key, value = line.split()
        store.put(key, value)
        print("ok", store.revision(), flush=True)
    """
)


def test_read_commands_on_a_moved_away_store_create_nothing_and_lose_nothing(
    tmp_path: Path,
) -> None:
    """Issue 17, item 1, end to end: a live store (an agent process holds it, its last commits
    only in the WAL) moved away; `get`, `ipam show`, `ipam check` and `apply` exit 1 saying
    so, create no file and leave the -wal alone; moved back, every commit is there."""
    db = tmp_path / "datastore.db"
    url = f"sqlite://{db}"
    assert main(["--datastore", url, "datastore", "init"]) == 0
    pools = tmp_path / "pool.yaml"
    pools.write_text(POOL.format(name="p1", cidr="10.50.0.0/16"))
    assert main(["--datastore", url, "apply", "-f", str(pools)]) == 0
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT, url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert agent.stdin is not None and agent.stdout is not None
    try:
        for i in range(30):
            agent.stdin.write(f"/tortie/test/{i} {i}\n")
            agent.stdin.flush()
            assert agent.stdout.readline().startswith("ok")
        assert Path(f"{db}-wal").stat().st_size > 0  # commits not checkpointed
        os.rename(db, tmp_path / "elsewhere.db")
        before = files(db)
        for args in (["get", "ippools"], ["ipam", "show"], ["ipam", "check"]):
            out = tortie("--datastore", url, *args)
            assert out.returncode == 1, (args, out.stdout, out.stderr)
            assert "does not exist" in out.stderr and "moved away" in out.stderr, out.stderr
            assert "Traceback" not in out.stderr
        out = tortie("--datastore", url, "apply", "-f", str(pools))
        assert out.returncode == 1 and "datastore init" in out.stderr
        out = tortie("--datastore", url, "datastore", "init")  # not even init takes it over
        assert out.returncode == 1 and "Refusing to create" in out.stderr
        assert not db.exists()
        assert files(db) == before
        os.rename(tmp_path / "elsewhere.db", db)
        agent.stdin.write("/tortie/test/after 1\n")  # the agent goes on where it was
        agent.stdin.flush()
        assert agent.stdout.readline().startswith("ok")
    finally:
        agent.stdin.close()
        agent.wait(30)
    out = tortie("--datastore", url, "get", "ippools", "-o", "json")
    assert out.returncode == 0 and "p1" in out.stdout
    out = tortie("--datastore", url, "datastore", "info", "-o", "json")
    info = json.loads(out.stdout)
    assert info["revision"] == 33  # init, the pool, 30 + 1 agent commits: none lost


def test_init_is_explicit_idempotent_and_info_shows_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite://{tmp_path}/a/b/t.db"
    assert main(["--datastore", url, "get", "ippools"]) == 1
    assert "tortie datastore init" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    assert main(["--datastore", url, "datastore", "init"]) == 0
    first = capsys.readouterr().out
    assert "created" in first
    assert main(["--datastore", url, "datastore", "init"]) == 0
    again = capsys.readouterr().out
    ident = first.split(" id ")[1].split(",")[0]
    assert "created" not in again and ident in again
    assert main(["--datastore", url, "datastore", "info", "-o", "json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["id"] == ident and info["schema"] == 2 and info["revision"] == 1
    assert oct(os.stat(tmp_path / "a" / "b" / "t.db").st_mode & 0o777) == "0o600"
    assert main(["--datastore", url, "datastore", "info"]) == 0
    assert ident in capsys.readouterr().out


def test_init_refuses_a_file_that_is_not_tortie_s_and_leaves_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "passwd"
    f.write_text("root:x:0:0:root:/root:/bin/bash\n")
    f.chmod(0o644)
    before = files(f)
    manifest = tmp_path / "pool.yaml"
    manifest.write_text(POOL.format(name="p", cidr="10.9.0.0/16"))
    for args in (["datastore", "init"], ["get", "ippools"], ["apply", "-f", str(manifest)]):
        assert main(["--datastore", f"sqlite://{f}", *args]) == 1
        assert "left untouched" in capsys.readouterr().err
    assert files(f) == before


def test_a_write_to_a_malformed_store_exits_1_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 17, item 4: `tortie delete ippool` went ahead (rc 0) on a store whose pages were
    corrupt. Now the first write checks the file and refuses, saying how to recover."""
    db = tmp_path / "t.db"
    url = f"sqlite://{db}"
    assert main(["--datastore", url, "datastore", "init"]) == 0
    manifest = tmp_path / "pools.yaml"
    manifest.write_text(
        "---\n".join(POOL.format(name=f"pool-{i}", cidr=f"10.{i}.0.0/16") for i in range(120))
    )
    assert main(["--datastore", url, "apply", "-f", str(manifest)]) == 0
    capsys.readouterr()
    with sqlite3.connect(db) as c:  # every page into the main file, then break some
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()
    corrupt_oldest_changes(db)
    before = files(db)
    out = tortie("--datastore", url, "delete", "ippool", "pool-3")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "malformed" in out.stderr and str(db) in out.stderr and ".recover" in out.stderr
    assert "Traceback" not in out.stderr
    assert files(db)[db.name] == before[db.name]  # nothing written


def test_accept_records_the_store_for_a_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tortie.agent.trust import Record, load_record, record_path, save_record

    url = f"sqlite://{tmp_path}/t.db"
    assert main(["--datastore", url, "datastore", "init"]) == 0
    capsys.readouterr()
    state = tmp_path / "node1"
    save_record(record_path(state), Record(url, "an-older-store", 99))
    args = ["--datastore", url, "datastore", "accept", "--node", "node1", "--state-dir"]
    assert main([*args, str(state)]) == 0
    out = capsys.readouterr().out
    assert "an-older-store" in out and "restart" in out
    rec = load_record(record_path(state))
    assert rec is not None and rec.id != "an-older-store" and rec.revision == 1
