"""The resource commands end to end, in-process, over a temporary SQLite datastore."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml

from tortie.ctl.main import main

POOLS = """\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: default-ipv4-ippool
spec:
  cidr: 10.244.0.0/16
  ipipMode: Always
  natOutgoing: true
  nodeSelector: all()
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: pool-b
spec:
  cidr: 10.245.0.0/16
  blockSize: 28
"""

PEER = """\
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata:
  name: tor-a
spec:
  peerIP: 192.168.49.1
  asNumber: 64513
"""

BGPCONFIG = """\
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata:
  name: default
spec:
  nodeToNodeMeshEnabled: false
  asNumber: 65000
"""


@pytest.fixture
def ds(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/state/tortie.db"
    assert main(["--datastore", url, "datastore", "init"]) == 0  # opening never creates
    return url


def run(ds: str, *args: str) -> int:
    return main(["--datastore", ds, *args])


def write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_apply_get_table_and_wide(
    ds: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(ds, "apply", "-f", write(tmp_path, "pools.yaml", POOLS)) == 0
    assert "Successfully applied 2 resource(s)" in capsys.readouterr().out
    assert run(ds, "get", "ippools") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["NAME", "CIDR", "SELECTOR"]
    assert out[1].split() == ["default-ipv4-ippool", "10.244.0.0/16", "all()"]
    # Columns are aligned: each header starts where its cells start.
    assert out[0].index("CIDR") == out[1].index("10.244") == out[2].index("10.245")
    assert run(ds, "get", "ippool", "-o", "wide") == 0
    wide = capsys.readouterr().out.splitlines()
    assert wide[0].split()[:6] == ["NAME", "CIDR", "BLOCKSIZE", "NAT", "IPIPMODE", "VXLANMODE"]
    assert wide[1].split()[:6] == [
        "default-ipv4-ippool",
        "10.244.0.0/16",
        "26",
        "true",
        "Always",
        "Never",
    ]


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_get_round_trips_through_apply(
    ds: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    run(ds, "apply", "-f", write(tmp_path, "pools.yaml", POOLS))
    run(ds, "apply", "-f", write(tmp_path, "peer.yaml", PEER))
    capsys.readouterr()
    for kind in ("ippools", "bgppeers"):
        assert run(ds, "get", kind, "-o", fmt) == 0
        dumped = capsys.readouterr().out
        again = write(tmp_path, f"again.{fmt}", dumped)
        assert run(ds, "apply", "-f", again) == 0, capsys.readouterr().err
        capsys.readouterr()
        assert run(ds, "get", kind, "-o", fmt) == 0
        redumped = capsys.readouterr().out
        # Identical except resourceVersion, which every write advances.
        strip = _strip_versions(yaml.safe_load(dumped))
        assert strip == _strip_versions(yaml.safe_load(redumped))


def _strip_versions(doc: object) -> object:
    if isinstance(doc, dict):
        return {k: _strip_versions(v) for k, v in doc.items() if k != "resourceVersion"}
    if isinstance(doc, list):
        return [_strip_versions(v) for v in doc]
    return doc


def test_single_get_yaml_is_the_calico_document(
    ds: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(ds, "apply", "-f", write(tmp_path, "bgp.yaml", BGPCONFIG))
    capsys.readouterr()
    assert run(ds, "get", "bgpconfiguration", "default", "-o", "json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["apiVersion"] == "projectcalico.org/v3"
    assert doc["kind"] == "BGPConfiguration"
    assert doc["metadata"]["name"] == "default"
    assert doc["metadata"]["resourceVersion"]
    assert doc["metadata"]["uid"] and doc["metadata"]["creationTimestamp"]
    assert doc["spec"]["nodeToNodeMeshEnabled"] is False
    assert doc["spec"]["asNumber"] == 65000


def test_uid_and_creation_kept_across_apply(
    ds: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = write(tmp_path, "bgp.yaml", BGPCONFIG)
    run(ds, "apply", "-f", f)
    run(ds, "get", "bgpconfig", "default", "-o", "json")
    first = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    run(ds, "apply", "-f", f)
    capsys.readouterr()
    run(ds, "get", "bgpconfig", "default", "-o", "json")
    second = json.loads(capsys.readouterr().out)
    assert first["metadata"]["uid"] == second["metadata"]["uid"]
    assert int(second["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])


def _stored(ds: str, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    run(ds, "get", "ippools", "-o", "json")
    return capsys.readouterr().out


BAD_INPUTS = {
    "malformed yaml": ("kind: IPPool\n  metadata: [\n", "line"),
    "unknown kind": (
        "apiVersion: projectcalico.org/v3\nkind: Pool\nmetadata: {name: x}\nspec: {}\n",
        "Pool",
    ),
    "unknown field": (
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: x}\n"
        "spec: {cidr: 10.9.0.0/16, ipipmode: Always}\n",
        "ipipmode",
    ),
    "cidr not masked": (
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: x}\n"
        "spec: {cidr: 10.9.0.1/16}\n",
        "spec.cidr",
    ),
    "block size out of range": (
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: x}\n"
        "spec: {cidr: 10.9.0.0/16, blockSize: 33}\n",
        "blockSize",
    ),
    "block larger than pool": (
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: x}\n"
        "spec: {cidr: 10.9.0.0/24, blockSize: 22}\n",
        "blockSize",
    ),
    "ipip and vxlan": (
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: x}\n"
        "spec: {cidr: 10.9.0.0/16, ipipMode: Always, vxlanMode: Always}\n",
        "vxlanMode",
    ),
    "ipip on ipv6": (
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: x}\n"
        "spec: {cidr: 'fd00:10::/64', ipipMode: Always}\n",
        "ipipMode",
    ),
    "overlapping pool": (
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: x}\n"
        "spec: {cidr: 10.244.128.0/17}\n",
        "overlap",
    ),
    "link-local pool": (
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: x}\n"
        "spec: {cidr: 169.254.0.0/16}\n",
        "link-local",
    ),
    "bad selector": (
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: x}\n"
        "spec: {cidr: 10.9.0.0/16, nodeSelector: \"zone == 'a' &&\"}\n",
        "nodeSelector",
    ),
    "as out of range": (
        "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: x}\n"
        "spec: {peerIP: 192.168.1.1, asNumber: 4294967296}\n",
        "asNumber",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_invalid_input_names_place_and_writes_nothing(
    ds: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    run(ds, "apply", "-f", write(tmp_path, "pools.yaml", POOLS))
    before = _stored(ds, capsys)
    text, needle = BAD_INPUTS[case]
    # The bad document comes second, after a valid one: all-or-nothing must hold.
    good = (
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: fresh}\n"
        "spec: {cidr: 10.250.0.0/16}\n---\n"
    )
    f = write(tmp_path, "bad.yaml", good + text)
    assert run(ds, "apply", "-f", f) != 0
    err = capsys.readouterr().err
    assert err.startswith("error: "), err
    assert "bad.yaml" in err, err
    assert needle in err, err
    assert len(err.strip().splitlines()) <= 2, err
    assert _stored(ds, capsys) == before


def test_create_existing_fails_and_writes_nothing(
    ds: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(ds, "apply", "-f", write(tmp_path, "pools.yaml", POOLS))
    before = _stored(ds, capsys)
    both = write(tmp_path, "both.yaml", PEER + "---\n" + POOLS)
    assert run(ds, "create", "-f", both) == 1
    assert "already exists" in capsys.readouterr().err
    assert _stored(ds, capsys) == before
    assert run(ds, "get", "bgppeers") == 0
    assert capsys.readouterr().out.strip().splitlines() == ["NAME   PEERIP   NODE   ASN"]


def test_delete_by_name_and_by_file(
    ds: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = write(tmp_path, "pools.yaml", POOLS)
    run(ds, "apply", "-f", f)
    assert run(ds, "delete", "ippool", "pool-b") == 0
    assert run(ds, "delete", "ippool", "pool-b") == 1
    assert "does not exist" in capsys.readouterr().err
    assert run(ds, "delete", "ippool", "pool-b", "--skip-not-exists") == 0
    assert run(ds, "delete", "-f", f) == 1  # pool-b is gone: all-or-nothing, nothing deleted
    assert "default-ipv4-ippool" in _stored(ds, capsys)
    assert run(ds, "delete", "-f", f, "--skip-not-exists") == 0
    capsys.readouterr()
    run(ds, "get", "ippools", "-o", "json")
    assert "default-ipv4-ippool" not in capsys.readouterr().out


def test_stdin(
    ds: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(PEER))
    assert run(ds, "apply", "-f", "-") == 0
    capsys.readouterr()
    run(ds, "get", "bgppeer", "tor-a")
    assert "192.168.49.1" in capsys.readouterr().out


def test_missing_file_and_unknown_kind(ds: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(ds, "apply", "-f", "/nonexistent/x.yaml") == 1
    assert "no such file" in capsys.readouterr().err
    assert run(ds, "get", "frobnicators") == 1
    err = capsys.readouterr().err
    assert "frobnicators" in err and "ippool" in err.lower()


def _put_raw(ds: str, key: str, value: str) -> None:
    """Write ``value`` under ``key`` as another tool would (no validation)."""
    from tortie.datastore.api import Put
    from tortie.datastore.factory import open_datastore

    store = open_datastore(ds)
    try:
        assert store.txn([], [Put(key, value)]).succeeded
    finally:
        store.close()


@pytest.mark.parametrize(
    "value",
    [
        "{not json",
        '{"apiVersion":"projectcalico.org/v3","kind":"IPPool","metadata":{"name":"bad"},'
        '"spec":{"cidr":"10.9.0.0/16","blockSize":99}}',
        "[" * 100_000 + "]" * 100_000,  # main: a RecursionError traceback
    ],
)
@pytest.mark.parametrize("how", [(), ("-o", "yaml"), ("-o", "json"), ("-o", "wide"), ("bad",)])
def test_get_reports_a_corrupt_stored_resource_with_its_key(
    ds: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    value: str,
    how: tuple[str, ...],
) -> None:
    run(ds, "apply", "-f", write(tmp_path, "pools.yaml", POOLS))
    _put_raw(ds, "/tortie/v3/ippools/bad", value)
    capsys.readouterr()
    assert run(ds, "get", "ippools", *how) == 1
    out = capsys.readouterr()
    assert out.err.startswith("error: /tortie/v3/ippools/bad: stored resource is unreadable (")
    assert "Traceback" not in out.err and out.out == ""


def test_get_shows_a_valid_entry_another_tool_wrote_as_apply_would_have(
    ds: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # No defaults, no uid: not as tortie writes it, so the model reads it (and fills defaults).
    _put_raw(ds, "/tortie/v3/ippools/hand", json.dumps(
        {"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "hand"},
         "spec": {"cidr": "10.9.0.0/16"}}
    ))  # fmt: skip
    assert run(ds, "get", "ippool", "hand", "-o", "json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["spec"]["blockSize"] == 26 and doc["spec"]["nodeSelector"] == "all()"
    assert int(doc["metadata"]["resourceVersion"]) > 0


def test_datastore_unavailable_is_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    url = f"sqlite:///{blocker}/sub/tortie.db"  # parent is a file: cannot be created
    assert main(["--datastore", url, "get", "ippools"]) == 1
    err = capsys.readouterr().err
    assert url in err and "Traceback" not in err
    assert main(["--datastore", "bogus://x", "get", "ippools"]) == 1
    assert "bogus://x" in capsys.readouterr().err


def test_sqlite_file_mode(ds: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(ds, "apply", "-f", write(tmp_path, "peer.yaml", PEER))
    db = tmp_path / "state" / "tortie.db"
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert "v0.1.0" in capsys.readouterr().out


def test_env_datastore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/env.db"
    monkeypatch.setenv("TORTIE_DATASTORE", url)
    assert main(["datastore", "init"]) == 0
    assert (tmp_path / "env.db").exists()
    assert main(["apply", "-f", write(tmp_path, "peer.yaml", PEER)]) == 0
