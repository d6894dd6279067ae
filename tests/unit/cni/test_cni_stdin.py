"""Whatever comes on stdin, both plugins answer with one CNI error JSON (issue 17, item 11).

Before: a config nested ~1,000 deep was a RecursionError, raised again while printing the
error, so the runtime got a traceback and no JSON at all. Now stdin is checked for size,
UTF-8 and depth before it is parsed (tortie.cni.invocation), and any failure is code 6.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cni_fakes import FakeAgent, cni_env, net_config, run_plugin
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tortie.cni import ipam_plugin, plugin
from tortie.cni.invocation import MAX_STDIN, read_invocation, reported_version
from tortie.cni.spec import SUPPORTED_VERSIONS
from tortie.model.cnierrors import CniError
from tortie.model.cniwire import Code
from tortie.model.nesting import MAX_DEPTH

pytestmark = pytest.mark.unit


def nested(depth: int, opener: str = "[") -> bytes:
    closer = {"[": "]", '{"a":': "}"}[opener]
    inner = opener * depth + "1" + closer * depth
    return f'{{"cniVersion":"1.0.0","name":"net","type":"tortie","x":{inner}}}'.encode()


BAD_STDIN = {
    "deep arrays": nested(5000),
    "deep objects": nested(5000, '{"a":'),
    "just past the limit": nested(MAX_DEPTH),  # the config's own object makes it 101
    "too large": b'{"cniVersion":"1.0.0","name":"net",' + b" " * MAX_STDIN + b'"x":1}',
    "not UTF-8": b'{"cniVersion":"1.0.0","name":"n\xe9t"}',
    "UTF-16": '{"cniVersion":"1.0.0","name":"net"}'.encode("utf-16"),
}


def one_error(stdout: str) -> dict[str, Any]:
    """The output is exactly one CNI error object."""
    lines = stdout.splitlines()
    assert len(lines) == 1, stdout[:500]
    doc = json.loads(lines[0])
    assert isinstance(doc["code"], int) and isinstance(doc["msg"], str) and doc["msg"]
    assert doc["cniVersion"] in SUPPORTED_VERSIONS
    return doc


@pytest.mark.parametrize("case", sorted(BAD_STDIN))
def test_bad_stdin_is_code_6_with_the_reason(agent: FakeAgent, case: str) -> None:
    out = run_plugin(cni_env("ADD"), BAD_STDIN[case])
    assert out.status == 1
    doc = one_error(out.stdout)
    assert doc["code"] == Code.DECODE_FAILURE
    reason = {
        "deep arrays": "nested more than 100 levels",
        "deep objects": "nested more than 100 levels",
        "just past the limit": "nested more than 100 levels",
        "too large": f"larger than {MAX_STDIN} bytes",
        "not UTF-8": "utf-8",
        "UTF-16": "utf-8",
    }[case]
    assert reason in doc["details"]
    assert agent.requests == []


def test_a_config_at_the_depth_limit_is_served(agent: FakeAgent) -> None:
    cfg = net_config(agent.path)
    value: Any = 1
    for _ in range(MAX_DEPTH - 1):  # inside the config object: MAX_DEPTH in all
        value = [value]
    cfg["x"] = value
    out = run_plugin(cni_env("DEL"), cfg)
    assert out.status == 0, out.stdout
    assert len(agent.requests) == 1


@pytest.mark.parametrize("module", ["tortie.cni.plugin", "tortie.cni.ipam_plugin"])
@pytest.mark.parametrize("case", ["deep arrays", "too large", "not UTF-8"])
def test_plugin_processes_answer_with_json(module: str, case: str, tmp_path: Path) -> None:
    """The real processes: stdin read by main(), error JSON on stdout, no traceback."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        **cni_env("ADD"),
    }
    stdin = BAD_STDIN[case] * (3 if case == "too large" else 1)
    entry = f"import sys; from {module} import main; sys.exit(main())"  # the console script
    proc = subprocess.run(
        [sys.executable, "-c", entry], input=stdin, env=env, capture_output=True, check=False
    )
    assert proc.returncode == 1
    assert one_error(proc.stdout.decode())["code"] == Code.DECODE_FAILURE
    assert b"Traceback" not in proc.stderr


def test_a_bug_in_tortie_ipam_still_gives_json(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_: object) -> None:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(ipam_plugin, "_serve", boom)
    out = io.StringIO()
    cfg = {"cniVersion": "0.4.0", "name": "net", "ipam": {"type": "tortie-ipam"}}
    status = ipam_plugin.run(cni_env("DEL"), json.dumps(cfg).encode(), out)
    doc = one_error(out.getvalue())
    assert (status, doc["code"], doc["cniVersion"]) == (1, Code.INTERNAL, "0.4.0")
    assert "boom" in doc["msg"]


# -- any input at all ---------------------------------------------------------------------------
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=6)
)
STRUCTURES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)


@st.composite
def configs(draw: st.DrawFn) -> bytes:
    """Config-shaped JSON with arbitrary values, sometimes wrapped very deep."""
    doc: dict[str, Any] = {
        "cniVersion": draw(st.sampled_from([*SUPPORTED_VERSIONS, "0.2.0", 1, None])),
        "name": draw(st.sampled_from(["net", "", "a b", 5])),
        "type": "tortie",
        "agent_socket": "/nonexistent/tortie-test/cni.sock",
    }
    doc.update(
        draw(st.dictionaries(st.sampled_from(["ipam", "mtu", "prevResult", "x"]), STRUCTURES))
    )
    text = json.dumps(doc)
    depth = draw(st.sampled_from([0, 0, 50, 99, 100, 101, 400, 3000]))
    if depth:
        text = text[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"
    return text.encode()


def check_answer(stdin: bytes, command: str) -> None:
    out = io.StringIO()
    status = plugin.run(cni_env(command), stdin, out)
    if status == 0:  # only VERSION can succeed without an agent
        assert command == "VERSION"
        assert set(json.loads(out.getvalue())) == {"cniVersion", "supportedVersions"}
    else:
        one_error(out.getvalue())


@given(st.binary(max_size=400), st.sampled_from(["ADD", "DEL", "CHECK", "VERSION", "GC"]))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_any_bytes_get_one_json_answer(stdin: bytes, command: str) -> None:
    check_answer(stdin, command)


@given(configs(), st.sampled_from(["ADD", "DEL", "STATUS", "VERSION"]))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_any_structure_gets_one_json_answer(stdin: bytes, command: str) -> None:
    check_answer(stdin, command)
    reported_version(stdin)  # never raises
    with contextlib.suppress(CniError):
        read_invocation(cni_env(command), stdin)
