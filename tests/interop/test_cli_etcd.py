"""Calico manifests through the CLI on a real etcd: apply, get, round-trip, refuse bad input.

The same commands the unit tier runs on SQLite (tests/unit/ctl/test_cli.py), against a
private etcd 3.4 on loopback, so both backends are proven behind `tortie apply/get`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import EtcdProcess
from tortie.ctl.main import main

MANIFESTS = """\
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
kind: BGPConfiguration
metadata:
  name: default
spec:
  nodeToNodeMeshEnabled: false
  asNumber: 65000
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata:
  name: rack1-tor
spec:
  peerIP: 192.168.49.1
  asNumber: 64513
  nodeSelector: rack == 'rack-1'
"""


@pytest.fixture
def etcd(start_etcd: EtcdProcess) -> str:
    start_etcd.start()
    return start_etcd.url


def run(url: str, *args: str) -> int:
    return main(["--datastore", url, *args])


def test_apply_get_round_trip_on_etcd(
    etcd: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "cluster.yaml"
    f.write_text(MANIFESTS)
    assert run(etcd, "apply", "-f", str(f)) == 0
    assert "Successfully applied 3 resource(s)" in capsys.readouterr().out
    for kind in ("ippools", "bgpconfigurations", "bgppeers"):
        assert run(etcd, "get", kind, "-o", "yaml") == 0
        dumped = capsys.readouterr().out
        again = tmp_path / f"{kind}.yaml"
        again.write_text(dumped)
        assert run(etcd, "apply", "-f", str(again)) == 0
        capsys.readouterr()
        assert run(etcd, "get", kind, "-o", "yaml") == 0
        redumped = capsys.readouterr().out
        assert _strip(yaml.safe_load(dumped)) == _strip(yaml.safe_load(redumped))
    assert run(etcd, "get", "bgppeer", "rack1-tor", "-o", "json") == 0
    peer = json.loads(capsys.readouterr().out)
    assert peer["spec"] == {
        "peerIP": "192.168.49.1",
        "asNumber": 64513,
        "nodeSelector": "rack == 'rack-1'",
    }
    assert run(etcd, "get", "ippools", "-o", "wide") == 0
    assert "Always" in capsys.readouterr().out


def test_invalid_input_writes_nothing_on_etcd(
    etcd: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "cluster.yaml"
    f.write_text(MANIFESTS)
    run(etcd, "apply", "-f", str(f))
    capsys.readouterr()
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: fresh}\n"
        "spec: {cidr: 10.250.0.0/16}\n---\n"
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: overlapping}\n"
        "spec: {cidr: 10.244.64.0/18}\n"
    )
    assert run(etcd, "apply", "-f", str(bad)) == 1
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "overlaps" in err
    run(etcd, "get", "ippools", "-o", "json")
    names = {i["metadata"]["name"] for i in json.loads(capsys.readouterr().out)["items"]}
    assert names == {"default-ipv4-ippool"}


def test_etcd_down_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    url = "etcd://127.0.0.1:1"
    assert run(url, "get", "ippools") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and url in err and "Traceback" not in err


def _strip(doc: object) -> object:
    if isinstance(doc, dict):
        return {k: _strip(v) for k, v in doc.items() if k != "resourceVersion"}
    if isinstance(doc, list):
        return [_strip(v) for v in doc]
    return doc


def test_datastore_init_info_and_accept_on_etcd(
    etcd: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/datastore.md: on etcd, init writes the identity key once; info shows it; a node
    accepts the store now at the URL."""
    assert run(etcd, "datastore", "info", "-o", "json") == 0
    assert json.loads(capsys.readouterr().out)["id"] == ""  # a fresh etcd: nobody initialised it
    assert run(etcd, "datastore", "accept", "--node", "n1", "--state-dir", str(tmp_path)) == 1
    assert "tortie datastore init" in capsys.readouterr().err
    assert run(etcd, "datastore", "init") == 0
    ident = capsys.readouterr().out.split(" id ")[1].split(",")[0]
    assert run(etcd, "datastore", "init") == 0
    assert ident in capsys.readouterr().out  # idempotent
    assert run(etcd, "datastore", "info", "-o", "json") == 0
    assert json.loads(capsys.readouterr().out)["id"] == ident
    assert run(etcd, "datastore", "accept", "--node", "n1", "--state-dir", str(tmp_path)) == 0
    assert json.loads((tmp_path / "datastore.json").read_text())["id"] == ident
