"""``tortie-ipam``: tortie's IPAM as a CNI IPAM plugin for other plugins, over SQLite."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from tortie.cni import ipam_plugin
from tortie.datastore.factory import open_datastore
from tortie.datastore.resources import ResourceStore
from tortie.ipam.client import IPAM
from tortie.model.cniwire import Code
from tortie.model.resources import IPPool


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite://{tmp_path}/ds.db"
    store = open_datastore(url, create=True)
    ResourceStore(store).apply(
        [
            IPPool.from_document(
                {
                    "apiVersion": "projectcalico.org/v3",
                    "kind": "IPPool",
                    "metadata": {"name": "p"},
                    "spec": {"cidr": "10.245.0.0/30", "blockSize": 30},
                }
            )
        ]
    )
    store.close()
    return url


def _config(url: str, version: str = "1.0.0", **ipam: Any) -> dict[str, Any]:
    return {
        "cniVersion": version,
        "name": "br-net",
        "type": "bridge",
        "ipam": {"type": "tortie-ipam", "datastore": url, "nodename": "node-1", **ipam},
    }


def _run(
    command: str, config: dict[str, Any] | bytes, cid: str = "c1", **env: str
) -> tuple[int, Any]:
    environ = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": "/run/netns/x",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/opt/cni/bin",
        **env,
    }
    out = io.StringIO()
    data = config if isinstance(config, bytes) else json.dumps(config).encode()
    status = ipam_plugin.run(environ, data, out)
    text = out.getvalue()
    return status, json.loads(text) if text else None


def _held(url: str, handle: str) -> list[str]:
    store = open_datastore(url)
    try:
        return [str(a) for a in IPAM(store).addresses_for_handle(handle)]
    finally:
        store.close()


def test_version() -> None:
    status, doc = _run("VERSION", b"")
    assert status == 0 and "1.0.0" in doc["supportedVersions"]


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_add_returns_an_address_in_the_version(url: str, version: str) -> None:
    status, doc = _run("ADD", _config(url, version))
    assert status == 0, doc
    assert doc["cniVersion"] == version
    (ip,) = doc["ips"]
    assert ip["address"].startswith("10.245.0.") and ip["address"].endswith("/32")
    assert ("version" in ip) == version.startswith("0.")
    assert "interface" not in ip and "interfaces" not in doc
    assert _held(url, "br-net.c1") == [ip["address"][:-3]]


def test_add_is_idempotent_and_del_releases(url: str) -> None:
    _, first = _run("ADD", _config(url))
    _, again = _run("ADD", _config(url))
    assert first["ips"] == again["ips"]
    assert _run("DEL", _config(url))[0] == 0
    assert _held(url, "br-net.c1") == []
    assert _run("DEL", _config(url), CNI_NETNS="")[0] == 0


def test_add_pod_attributes_and_specific_ip(url: str) -> None:
    cfg = _config(url)
    cfg["runtimeConfig"] = {"ips": ["10.245.0.2/32"]}
    status, doc = _run("ADD", cfg, CNI_ARGS="K8S_POD_NAMESPACE=a;K8S_POD_NAME=b")
    assert status == 0 and doc["ips"][0]["address"] == "10.245.0.2/32"


def test_exhaustion_is_no_address(url: str) -> None:
    for i in range(4):
        assert _run("ADD", _config(url), cid=f"c{i}")[0] == 0
    status, doc = _run("ADD", _config(url), cid="c9")
    assert status == 1 and doc["code"] == Code.NO_ADDRESS


def test_check(url: str) -> None:
    _, doc = _run("ADD", _config(url))
    cfg = _config(url, prevResult=None)
    cfg["prevResult"] = doc
    assert _run("CHECK", cfg)[0] == 0
    _run("DEL", _config(url))
    status, err = _run("CHECK", cfg)
    assert status == 1 and err["code"] == Code.CHECK_FAILED


def test_gc_and_status(url: str) -> None:
    for cid in ("a", "b"):
        _run("ADD", _config(url, "1.1.0"), cid=cid)
    cfg = _config(url, "1.1.0")
    cfg["cni.dev/valid-attachments"] = [{"containerID": "a", "ifname": "eth0"}]
    assert _run("GC", cfg)[0] == 0
    assert _held(url, "br-net.a") and not _held(url, "br-net.b")
    assert _run("STATUS", _config(url, "1.1.0"))[0] == 0
    for cid in ("x", "y", "z"):
        _run("ADD", _config(url, "1.1.0"), cid=cid)
    status, doc = _run("STATUS", _config(url, "1.1.0"))
    assert status == 1 and doc["code"] == Code.PLUGIN_NOT_AVAILABLE


def test_datastore_down_is_try_again_later(tmp_path: Path) -> None:
    cfg = _config("etcd://127.0.0.1:1?timeout=0.5")
    status, doc = _run("ADD", cfg)
    assert status == 1 and doc["code"] == Code.TRY_AGAIN_LATER


def test_bad_input(url: str) -> None:
    assert _run("ADD", b"{")[1]["code"] == Code.DECODE_FAILURE
    assert (
        _run("ADD", {"cniVersion": "1.0.0", "name": "n"})[1]["code"] == Code.INVALID_NETWORK_CONFIG
    )
    assert _run("ADD", _config(url, ipv4_pools="x"))[1]["code"] == Code.INVALID_NETWORK_CONFIG
    assert _run("ADD", _config(url), CNI_IFNAME="")[1]["code"] == Code.INVALID_ENVIRONMENT
