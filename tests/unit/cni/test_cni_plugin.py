"""The ``tortie`` plugin: every bad input gets the spec's error; good input reaches the agent
as the right request; answers are printed in the runtime's CNI version."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from cni_fakes import ADD_RESULT, FakeAgent, Outcome, cni_env, net_config, run_plugin

from tortie.cni.spec import SUPPORTED_VERSIONS
from tortie.model.cniwire import CniRequest, CniResponse, Code, failure


def _assert_error(outcome: Outcome, code: int, *words: str) -> dict[str, object]:
    assert outcome.status == 1
    doc: dict[str, object] = outcome.doc
    assert doc["code"] == code, doc
    assert isinstance(doc["msg"], str) and doc["msg"]
    text = f"{doc['msg']} {doc.get('details', '')}"
    for word in words:
        assert word in text, text
    assert doc["cniVersion"] in SUPPORTED_VERSIONS
    return doc


# -- VERSION ----------------------------------------------------------------------------------


@pytest.mark.parametrize("stdin", [b"", b"garbage", b'{"cniVersion": "0.4.0"}', b"[1]"])
def test_version_always_answers(stdin: bytes) -> None:
    out = run_plugin({"CNI_COMMAND": "VERSION"}, stdin)
    assert out.status == 0
    doc = out.doc
    assert doc["supportedVersions"] == ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]
    assert doc["cniVersion"] == ("0.4.0" if b"0.4.0" in stdin else "1.1.0")


# -- environment --------------------------------------------------------------------------------


def test_missing_command_is_code_4(agent: FakeAgent) -> None:
    out = run_plugin({}, net_config(agent.path))
    _assert_error(out, Code.INVALID_ENVIRONMENT, "CNI_COMMAND")
    assert agent.requests == []


def test_unknown_command_is_code_4(agent: FakeAgent) -> None:
    out = run_plugin(cni_env("FROB"), net_config(agent.path))
    _assert_error(out, Code.INVALID_ENVIRONMENT, "FROB")


@pytest.mark.parametrize(
    ("command", "unset", "expected"),
    [
        ("ADD", ["CNI_CONTAINERID"], "[CNI_CONTAINERID]"),
        ("ADD", ["CNI_NETNS", "CNI_IFNAME"], "[CNI_NETNS CNI_IFNAME]"),
        ("ADD", ["CNI_PATH"], "[CNI_PATH]"),
        ("CHECK", ["CNI_NETNS"], "[CNI_NETNS]"),
        ("DEL", ["CNI_IFNAME"], "[CNI_IFNAME]"),
        ("DEL", ["CNI_CONTAINERID", "CNI_PATH"], "[CNI_CONTAINERID CNI_PATH]"),
    ],
)
def test_missing_variables_are_named(
    agent: FakeAgent, command: str, unset: list[str], expected: str
) -> None:
    env = cni_env(command, **dict.fromkeys(unset, "<unset>"))
    out = run_plugin(env, net_config(agent.path, prevResult=ADD_RESULT))
    _assert_error(out, Code.INVALID_ENVIRONMENT, expected)
    assert agent.requests == []


def test_del_needs_no_netns(agent: FakeAgent) -> None:
    out = run_plugin(cni_env("DEL", CNI_NETNS="<unset>"), net_config(agent.path))
    assert out.status == 0 and out.stdout == ""
    assert agent.requests[0].netns == ""


@pytest.mark.parametrize(
    ("var", "value"),
    [("CNI_CONTAINERID", "-bad"), ("CNI_CONTAINERID", "a b"), ("CNI_IFNAME", "x" * 16)],
)
def test_invalid_variables_are_code_4(agent: FakeAgent, var: str, value: str) -> None:
    out = run_plugin(cni_env("ADD", **{var: value}), net_config(agent.path))
    _assert_error(out, Code.INVALID_ENVIRONMENT)
    assert agent.requests == []


def test_bad_cni_args_is_code_4(agent: FakeAgent) -> None:
    out = run_plugin(cni_env("ADD", CNI_ARGS="K8S_POD_NAME"), net_config(agent.path))
    _assert_error(out, Code.INVALID_ENVIRONMENT, "CNI_ARGS")


# -- stdin --------------------------------------------------------------------------------------


@pytest.mark.parametrize("stdin", [b"", b"   ", b"{not json", b"\xff\xfe\x00", b"[]", b'"x"'])
def test_garbage_stdin_is_code_6(agent: FakeAgent, stdin: bytes) -> None:
    out = run_plugin(cni_env("ADD"), stdin)
    doc = _assert_error(out, Code.DECODE_FAILURE)
    assert doc["cniVersion"] == "1.1.0"
    assert agent.requests == []


def test_unknown_version_is_code_1(agent: FakeAgent) -> None:
    out = run_plugin(cni_env("ADD"), net_config(agent.path, version="0.2.0"))
    _assert_error(out, Code.INCOMPATIBLE_VERSION, "0.2.0", "1.0.0")
    cfg = net_config(agent.path)
    del cfg["cniVersion"]
    _assert_error(run_plugin(cni_env("ADD"), cfg), Code.INCOMPATIBLE_VERSION)
    assert agent.requests == []


@pytest.mark.parametrize(
    ("command", "version"), [("CHECK", "0.3.1"), ("GC", "1.0.0"), ("STATUS", "0.4.0")]
)
def test_verb_too_new_for_config_version_is_code_1(
    agent: FakeAgent, command: str, version: str
) -> None:
    cfg = net_config(agent.path, version=version, prevResult=ADD_RESULT)
    cfg["cni.dev/valid-attachments"] = []
    out = run_plugin(cni_env(command), cfg)
    doc = _assert_error(out, Code.INCOMPATIBLE_VERSION, command)
    assert doc["cniVersion"] == version


@pytest.mark.parametrize(
    ("change", "code", "word"),
    [
        ({"name": ""}, Code.INVALID_NETWORK_CONFIG, "network name"),
        ({"name": "bad name"}, Code.INVALID_NETWORK_CONFIG, "network name"),
        ({"mtu": "1500"}, Code.INVALID_NETWORK_CONFIG, "mtu"),
        ({"mtu": 20}, Code.INVALID_NETWORK_CONFIG, "mtu"),
        ({"mtu": True}, Code.INVALID_NETWORK_CONFIG, "mtu"),
        ({"nodename": 5}, Code.INVALID_NETWORK_CONFIG, "nodename"),
        ({"nodename": "a/b"}, Code.INVALID_NETWORK_CONFIG, "nodename"),
        ({"agent_socket": "relative.sock"}, Code.INVALID_NETWORK_CONFIG, "agent_socket"),
        ({"datastore": ["x"]}, Code.INVALID_NETWORK_CONFIG, "datastore"),
        ({"timeout": 0}, Code.INVALID_NETWORK_CONFIG, "timeout"),
        ({"ipam": "tortie-ipam"}, Code.INVALID_NETWORK_CONFIG, "ipam"),
        ({"ipam": {"type": "host-local"}}, Code.UNSUPPORTED_FIELD, "host-local"),
        ({"ipam": {"assign_ipv6": "true"}}, Code.UNSUPPORTED_FIELD, "assign_ipv6"),
        ({"ipam": {"ipv4_pools": "10.0.0.0/8"}}, Code.INVALID_NETWORK_CONFIG, "ipv4_pools"),
        ({"runtimeConfig": {"ips": "10.0.0.1"}}, Code.INVALID_NETWORK_CONFIG, "ips"),
        ({"prevResult": {"ips": "x"}}, Code.DECODE_FAILURE, "prevResult"),
    ],
)
def test_invalid_config_values(
    agent: FakeAgent, change: dict[str, object], code: int, word: str
) -> None:
    out = run_plugin(cni_env("ADD"), net_config(agent.path, **change))
    _assert_error(out, code, word)
    assert agent.requests == []


def test_check_without_prev_result_is_code_7(agent: FakeAgent) -> None:
    out = run_plugin(cni_env("CHECK"), net_config(agent.path))
    _assert_error(out, Code.INVALID_NETWORK_CONFIG, "prevResult")


def test_gc_without_attachment_list_is_refused(agent: FakeAgent) -> None:
    out = run_plugin(cni_env("GC"), net_config(agent.path, version="1.1.0"))
    _assert_error(out, Code.INVALID_NETWORK_CONFIG, "valid-attachments")
    assert agent.requests == []


# -- agent down ---------------------------------------------------------------------------------


def test_agent_not_running_is_try_again_later(short_dir: Path) -> None:
    path = str(short_dir / "missing.sock")
    out = run_plugin(cni_env("ADD"), net_config(path))
    _assert_error(out, Code.TRY_AGAIN_LATER, path, "tortie node run")


def test_stale_socket_is_try_again_later(short_dir: Path) -> None:
    path = str(short_dir / "stale.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.close()  # the file stays, nobody listens
    for command in ("ADD", "DEL", "CHECK"):
        out = run_plugin(cni_env(command), net_config(path, prevResult=ADD_RESULT))
        _assert_error(out, Code.TRY_AGAIN_LATER, path, "tortie node run")


def test_status_with_agent_down_is_plugin_not_available(short_dir: Path) -> None:
    out = run_plugin(cni_env("STATUS"), net_config(str(short_dir / "x.sock"), version="1.1.0"))
    _assert_error(out, Code.PLUGIN_NOT_AVAILABLE, "tortie node run")


def test_default_socket_follows_nodename(agent: FakeAgent) -> None:
    cfg = net_config(agent.path, nodename="tt-no-such-node")
    del cfg["agent_socket"]
    out = run_plugin(cni_env("ADD"), cfg)
    _assert_error(out, Code.TRY_AGAIN_LATER, "/run/tortie/tt-no-such-node/cni.sock")


def test_agent_closing_without_answer(agent: FakeAgent) -> None:
    agent.raw = lambda data: b""
    _assert_error(run_plugin(cni_env("DEL"), net_config(agent.path)), Code.TRY_AGAIN_LATER)
    agent.raw = lambda data: b"{garbage"
    _assert_error(run_plugin(cni_env("DEL"), net_config(agent.path)), Code.DECODE_FAILURE)


# -- requests and answers -------------------------------------------------------------------------


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_add_result_in_requested_version(agent: FakeAgent, version: str) -> None:
    agent.reply = lambda req: CniResponse(result=ADD_RESULT)
    out = run_plugin(cni_env("ADD"), net_config(agent.path, version=version))
    assert out.status == 0, out.stdout
    doc = out.doc
    assert doc["cniVersion"] == version
    assert doc["ips"][0]["address"] == "10.244.0.5/32"
    assert doc["ips"][0]["interface"] == 1
    assert ("version" in doc["ips"][0]) == version.startswith("0.")
    assert ("mtu" in doc["interfaces"][1]) == (version == "1.1.0")


def test_add_request_carries_what_the_agent_needs(agent: FakeAgent) -> None:
    agent.reply = lambda req: CniResponse(result=ADD_RESULT)
    cfg = net_config(
        agent.path,
        mtu=1400,
        ipam={"type": "tortie-ipam", "ipv4_pools": ["10.244.0.0/16"]},
        runtimeConfig={"IPs": ["10.244.0.77/32"]},  # containerd-style capitalised key
    )
    env = cni_env("ADD", CNI_NETNS="relative/ns")
    assert run_plugin(env, cfg).status == 0
    (req,) = agent.requests
    assert req == CniRequest(
        "ADD",
        "k8s-pod-network",
        container_id="c0ffee",
        netns=os.path.abspath("relative/ns"),
        ifname="eth0",
        node="node-1",
        datastore="memory://",
        mtu=1400,
        pod_namespace="web",
        pod="web-0",
        pools=("10.244.0.0/16",),
        ips=("10.244.0.77/32",),
    )


def test_pod_name_without_namespace_means_default(agent: FakeAgent) -> None:
    run_plugin(
        cni_env("DEL", CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=podman-1"), net_config(agent.path)
    )
    assert (agent.requests[0].pod_namespace, agent.requests[0].pod) == ("default", "podman-1")
    run_plugin(cni_env("DEL", CNI_ARGS=""), net_config(agent.path))
    assert (agent.requests[1].pod_namespace, agent.requests[1].pod) == (None, None)


def test_add_keeps_a_previous_plugins_result(agent: FakeAgent) -> None:
    agent.reply = lambda req: CniResponse(result=ADD_RESULT)
    prev = {
        "cniVersion": "0.4.0",
        "interfaces": [{"name": "lo0", "sandbox": "/x"}],
        "ips": [{"version": "4", "address": "192.168.1.2/24", "interface": 0}],
        "dns": {},
    }
    out = run_plugin(cni_env("ADD"), net_config(agent.path, version="0.4.0", prevResult=prev))
    doc = out.doc
    assert [i["name"] for i in doc["interfaces"]] == ["lo0", "cali1234567890a", "eth0"]
    assert [ip["interface"] for ip in doc["ips"]] == [0, 2]
    assert agent.requests[0].prev_result == {
        "interfaces": prev["interfaces"],
        "ips": [{"address": "192.168.1.2/24", "interface": 0}],
        "dns": {},
    }


def test_check_sends_canonical_prev_result(agent: FakeAgent) -> None:
    shaped = dict(ADD_RESULT, cniVersion="0.4.0")
    shaped["ips"] = [dict(ADD_RESULT["ips"][0], version="4")]
    out = run_plugin(cni_env("CHECK"), net_config(agent.path, version="0.4.0", prevResult=shaped))
    assert (out.status, out.stdout) == (0, "")
    assert agent.requests[0].prev_result is not None
    assert agent.requests[0].prev_result["ips"] == ADD_RESULT["ips"]


def test_gc_reads_both_attachment_keys(agent: FakeAgent) -> None:
    cfg = net_config(agent.path, version="1.1.0")
    cfg["cni.dev/valid-attachments"] = [{"containerID": "a", "ifname": "eth0"}]
    cfg["cni.dev/attachments"] = [
        {"containerID": "b", "ifname": "eth0"},
        {"containerID": "a", "ifname": "eth0"},
    ]
    out = run_plugin(cni_env("GC", CNI_CONTAINERID="<unset>", CNI_IFNAME="<unset>"), cfg)
    assert (out.status, out.stdout) == (0, "")
    got = {(a.container_id, a.ifname) for a in agent.requests[0].valid_attachments}
    assert got == {("a", "eth0"), ("b", "eth0")}


def test_gc_attachment_entries_are_validated(agent: FakeAgent) -> None:
    cfg = net_config(agent.path, version="1.1.0")
    cfg["cni.dev/attachments"] = [{"containerID": "a"}]
    _assert_error(run_plugin(cni_env("GC"), cfg), Code.INVALID_NETWORK_CONFIG, "ifname")


def test_agent_errors_pass_through(agent: FakeAgent) -> None:
    agent.reply = lambda req: failure(Code.NO_ADDRESS, "pool exhausted", "10.244.0.0/30")
    out = run_plugin(cni_env("ADD"), net_config(agent.path, version="0.3.1"))
    doc = _assert_error(out, Code.NO_ADDRESS, "pool exhausted", "10.244.0.0/30")
    assert doc["cniVersion"] == "0.3.1"


def test_status_ok_prints_nothing(agent: FakeAgent) -> None:
    out = run_plugin(cni_env("STATUS"), net_config(agent.path, version="1.1.0"))
    assert (out.status, out.stdout) == (0, "")
    assert agent.requests[0].command == "STATUS"


def test_a_bug_still_gives_spec_json(agent: FakeAgent, monkeypatch: pytest.MonkeyPatch) -> None:
    from tortie.cni import plugin

    def boom(*_: object) -> None:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(plugin, "call_agent", boom)
    _assert_error(run_plugin(cni_env("DEL"), net_config(agent.path)), Code.INTERNAL, "boom")


def test_error_output_is_one_json_document(agent: FakeAgent) -> None:
    out = run_plugin(cni_env("ADD"), b"nope")
    assert json.loads(out.stdout)["code"] == Code.DECODE_FAILURE
