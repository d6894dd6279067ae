"""The resource commands on hostile input and secrets (issue 17, items 11, 12 and 13)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import yaml

from tortie.ctl.main import main
from tortie.model.loader import MAX_INPUT_BYTES
from tortie.model.resources import REDACTED

pytestmark = pytest.mark.unit

PEER = """\
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata:
  name: tor-a
spec:
  peerIP: 192.168.49.1
  asNumber: 64513
  password:
    value: s3cret-md5
"""


@pytest.fixture
def ds(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/state/tortie.db"
    assert main(["--datastore", url, "datastore", "init"]) == 0  # opening never creates
    return url


def run(ds: str, *args: str) -> int:
    return main(["--datastore", ds, *args])


def write(tmp_path: Path, name: str, data: str | bytes) -> str:
    p = tmp_path / name
    if isinstance(data, bytes):
        p.write_bytes(data)
    else:
        p.write_text(data)
    return str(p)


def stdin(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))


# -- item 11: no tracebacks -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "data", "words"),
    [
        ("deep.yaml", "".join("  " * i + "a:\n" for i in range(600)), "nested more than 100"),
        ("deep.json", '{"a":' * 1200 + "1" + "}" * 1200, "nested more than 100"),
        ("flow.yaml", "x: " + "[" * 5000, "nested more than 100"),
        ("latin1.yaml", "kind: IPPool # caf\xe9\n".encode("latin-1"), "not UTF-8"),
        ("big.yaml", "#" * (MAX_INPUT_BYTES + 1), "larger than 16777216 bytes"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    ds: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    data: str | bytes,
    words: str,
) -> None:
    assert run(ds, "apply", "-f", write(tmp_path, name, data)) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / name}"), err[:300]
    assert words in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_a_directory_is_limited_as_a_whole(
    ds: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "many"
    d.mkdir()
    for n in range(3):
        write(d, f"{n}.yaml", "#" * (MAX_INPUT_BYTES // 2))
    assert run(ds, "apply", "-f", str(d)) == 1
    assert "larger than 16777216 bytes" in capsys.readouterr().err


# -- item 13: secrets -------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_get_redacts_passwords(
    ds: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    assert run(ds, "apply", "-f", write(tmp_path, "peer.yaml", PEER)) == 0
    capsys.readouterr()
    for args in (["tor-a"], []):
        assert run(ds, "get", "bgppeer", *args, "-o", fmt) == 0
        out = capsys.readouterr()
        assert "s3cret-md5" not in out.out
        doc = yaml.safe_load(out.out) if fmt == "yaml" else json.loads(out.out)
        peer = doc if args else doc["items"][0]
        assert peer["spec"]["password"] == {"value": REDACTED}
        assert "1 password(s) shown as <redacted>" in out.err and "--show-secrets" in out.err
    assert run(ds, "get", "bgppeers", "-o", "wide") == 0
    assert "s3cret" not in capsys.readouterr().out
    assert run(ds, "get", "bgppeer", "tor-a", "-o", fmt, "--show-secrets") == 0
    out = capsys.readouterr()
    assert "s3cret-md5" in out.out and out.err == ""


def test_get_then_apply_keeps_the_password(
    ds: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's round trip: ``tortie get ... -o yaml | tortie apply -f -``."""
    assert run(ds, "apply", "-f", write(tmp_path, "peer.yaml", PEER)) == 0
    capsys.readouterr()
    assert run(ds, "get", "bgppeer", "tor-a", "-o", "yaml") == 0
    shown = capsys.readouterr().out
    assert REDACTED in shown
    stdin(monkeypatch, shown.replace("asNumber: 64513", "asNumber: 64514"))
    assert run(ds, "apply", "-f", "-") == 0
    capsys.readouterr()
    assert run(ds, "get", "bgppeer", "tor-a", "-o", "json", "--show-secrets") == 0
    spec = json.loads(capsys.readouterr().out)["spec"]
    assert spec["password"] == {"value": "s3cret-md5"} and spec["asNumber"] == 64514


def test_a_redacted_password_for_a_new_peer_is_refused(
    ds: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = PEER.replace("s3cret-md5", f"'{REDACTED}'")
    assert run(ds, "create", "-f", write(tmp_path, "new.yaml", text)) == 1
    err = capsys.readouterr().err
    assert "new.yaml" in err and "spec.password.value" in err and "no stored password" in err
    assert run(ds, "get", "bgppeers", "-o", "yaml") == 0
    assert "tor-a" not in capsys.readouterr().out
