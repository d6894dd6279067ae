"""The plugin-agent wire protocol: round trips, refusals, the socket path convention."""

from __future__ import annotations

import json

import pytest

from tortie.model import cniwire
from tortie.model.cniwire import Attachment, CniRequest, CniResponse, WireError


def test_request_round_trip() -> None:
    req = CniRequest(
        "GC",
        "k8s-pod-network",
        container_id="c1",
        netns="/run/netns/x",
        ifname="eth0",
        node="n1",
        datastore="memory://",
        mtu=1400,
        pod_namespace="web",
        pod="web-0",
        pools=("10.244.0.0/16",),
        ips=("10.244.0.9",),
        prev_result={"ips": []},
        valid_attachments=(Attachment("c1", "eth0"), Attachment("c2", "net1")),
    )
    back = CniRequest.from_bytes(req.to_bytes())
    assert back == req
    assert back != CniRequest("GC", "k8s-pod-network")
    assert "web-0" in repr(back)
    assert hash(back) == hash(req)


def test_response_round_trip() -> None:
    ok = CniResponse(result={"ips": []})
    assert CniResponse.from_bytes(ok.to_bytes()) == ok
    assert ok.ok
    bad = cniwire.failure(11, "later", "because")
    back = CniResponse.from_bytes(bad.to_bytes())
    assert back == bad and not back.ok
    assert back.error is not None and back.error.code == 11


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"nope",
        b"[]",
        b'{"command": "ADD", "network": "n"}',  # no protocol version
        b'{"v": 99, "command": "ADD", "network": "n"}',
        b'{"v": 1, "command": "FROB", "network": "n"}',
        b'{"v": 1, "command": "ADD"}',
        b'{"v": 1, "command": "ADD", "network": "n", "mtu": true}',
        b'{"v": 1, "command": "ADD", "network": "n", "mtu": -1}',
        b'{"v": 1, "command": "ADD", "network": "n", "pools": [1]}',
        b'{"v": 1, "command": "GC", "network": "n", "validAttachments": [{"ifname": "x"}]}',
        b"\xff\xfe",
    ],
)
def test_bad_requests_are_refused(data: bytes) -> None:
    with pytest.raises(WireError):
        CniRequest.from_bytes(data)


def test_version_mismatch_says_what_to_do() -> None:
    with pytest.raises(WireError, match="install-cni"):
        CniResponse.from_bytes(json.dumps({"v": 2, "ok": True}).encode())


def test_oversized_message_refused() -> None:
    with pytest.raises(WireError, match="limit"):
        CniRequest.from_bytes(b" " * (cniwire.MAX_MESSAGE + 1))


def test_default_socket_path() -> None:
    assert cniwire.default_socket_path("node-1") == "/run/tortie/node-1/cni.sock"
    for bad in ("", ".", "..", "a/b", "x\0y"):
        with pytest.raises(ValueError):
            cniwire.default_socket_path(bad)
    with pytest.raises(ValueError, match="longer"):
        cniwire.default_socket_path("n" * 100)


def test_plugin_imports_nothing_heavy() -> None:
    """The per-pod process imports none of these (each costs it milliseconds)."""
    import subprocess
    import sys

    from tortie.cni.install import package_root

    code = (
        f"import sys; sys.path.insert(0, {package_root()!r})\n"
        "import tortie.cni.plugin\n"
        "heavy = {'pydantic', 'pyroute2', 'dataclasses', 'typing', 'socket', 're', 'json'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "text",
    [b'{"a": [1, 2.5, -3e2, true, false, null, "x\\u00e9\\n"]}', b" [] ", b'"s"', b"0", b"{}"],
)
def test_fast_json_matches_json(text: bytes) -> None:
    assert cniwire.loads(text) == json.loads(text)
    value = json.loads(text)
    assert json.loads(cniwire.dumps(value)) == value
    assert cniwire.dumps(value) == json.dumps(value, separators=(",", ":"))


@pytest.mark.parametrize("text", [b"", b"{", b"[1] x", b"\xff", b"nul", b'{"a" 1}', b'"\x01"'])
def test_fast_json_errors_are_json_errors(text: bytes) -> None:
    with pytest.raises(ValueError) as fast:
        cniwire.loads(text)
    with pytest.raises(ValueError) as slow:
        json.loads(text)
    assert type(fast.value) is type(slow.value) and str(fast.value) == str(slow.value)


def test_fast_json_refuses_what_json_refuses() -> None:
    with pytest.raises(TypeError):
        cniwire.dumps({"a": object()})
