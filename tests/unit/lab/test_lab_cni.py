"""The CNI seam's small libcni: environment, conflist chaining, results and errors, with
fake plugins (the real plugin lands with issue 4)."""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from tortie.lab import cni
from tortie.lab.errors import LabBuildError, NotAvailableError
from tortie.lab.runtime import NodeRuntime, node_dirs
from tortie.lab.topology import LabOptions, build_topology

PLUGIN = """#!{python}
import json, os, sys
conf = json.load(sys.stdin)
log = os.path.join(os.path.dirname(sys.argv[0]), "calls.log")
with open(log, "a") as f:
    f.write(json.dumps({{"type": conf["type"], "cmd": os.environ["CNI_COMMAND"],
        "prev": "prevResult" in conf, "env": {{k: v for k, v in os.environ.items()
        if k.startswith("CNI_")}}, "name": conf["name"], "v": conf["cniVersion"]}}) + "\\n")
if conf.get("fail"):
    print(json.dumps({{"cniVersion": "1.0.0", "code": 11, "msg": "try again later",
        "details": "agent busy"}}))
    sys.exit(1)
if os.environ["CNI_COMMAND"] == "ADD":
    result = conf.get("prevResult") or {{"cniVersion": "1.0.0",
        "interfaces": [{{"name": "cali0123456789a"}}, {{"name": "eth0", "sandbox": "x"}}],
        "ips": [{{"address": "10.244.7.9/32", "interface": 1}}]}}
    print(json.dumps(result))
"""


def identity(argv: Sequence[str]) -> list[str]:
    return list(argv)


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> NodeRuntime:
    # Hermetic: the host's reference plugins (Debian's /usr/lib/cni) are not on CNI_PATH.
    reference = tmp_path / "reference-plugins"
    reference.mkdir()
    monkeypatch.setattr("tortie.lab.cni.REFERENCE_PLUGINS_DIR", str(reference))
    topology = build_topology(LabOptions(), 3)
    dirs = node_dirs(tmp_path, "node1")
    for d in (dirs.cni_bin_dir, dirs.cni_conf_dir):
        os.makedirs(d)
    for kind in ("tortie", "portmap"):
        path = Path(dirs.cni_bin_dir) / kind
        path.write_text(PLUGIN.format(python=sys.executable))
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return NodeRuntime("lab", "tok", topology.node("node1"), dirs, "sqlite:///x.db")


def write_conflist(runtime: NodeRuntime, plugins: list[dict[str, object]]) -> None:
    conflist = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": plugins}
    (Path(runtime.dirs.cni_conf_dir) / "10-tortie.conflist").write_text(json.dumps(conflist))


def calls(runtime: NodeRuntime) -> list[dict[str, object]]:
    log = Path(runtime.dirs.cni_bin_dir) / "calls.log"
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_add_runs_the_chain_in_order_with_prev_result(runtime: NodeRuntime) -> None:
    write_conflist(runtime, [{"type": "tortie"}, {"type": "portmap"}])
    topology = build_topology(LabOptions(), 3)
    pod = topology.pod("pod1")
    call = cni.pod_call("ADD", topology, runtime, pod)
    conflist = cni.load_conflist(runtime.dirs.cni_conf_dir)
    result = cni.run_conflist(conflist, call, identity, dict(os.environ))
    assert result["ips"] == [{"address": "10.244.7.9/32", "interface": 1}]
    seen = calls(runtime)
    assert [(c["type"], c["prev"]) for c in seen] == [("tortie", False), ("portmap", True)]
    env = seen[0]["env"]
    assert env == {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "tl3-pod1",
        "CNI_NETNS": "/run/netns/tl3-p1",
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod1;"
        "K8S_POD_INFRA_CONTAINER_ID=tl3-pod1",
        "CNI_PATH": f"{runtime.dirs.cni_bin_dir}:{cni.REFERENCE_PLUGINS_DIR}",
    }
    assert seen[0]["name"] == "k8s-pod-network" and seen[0]["v"] == "1.0.0"


def test_del_runs_the_chain_in_reverse(runtime: NodeRuntime) -> None:
    write_conflist(runtime, [{"type": "tortie"}, {"type": "portmap"}])
    topology = build_topology(LabOptions(), 3)
    call = cni.pod_call("DEL", topology, runtime, topology.pod("pod1"))
    cni.run_conflist(cni.load_conflist(runtime.dirs.cni_conf_dir), call, identity, {})
    assert [c["type"] for c in calls(runtime)] == ["portmap", "tortie"]


def test_plugin_error_carries_code_and_message(runtime: NodeRuntime) -> None:
    write_conflist(runtime, [{"type": "tortie", "fail": True}])
    topology = build_topology(LabOptions(), 3)
    call = cni.pod_call("ADD", topology, runtime, topology.pod("pod1"))
    with pytest.raises(LabBuildError, match=r"code 11: try again later \(agent busy\)"):
        cni.run_conflist(cni.load_conflist(runtime.dirs.cni_conf_dir), call, identity, {})


def test_missing_plugin_and_conflist(runtime: NodeRuntime, tmp_path: Path) -> None:
    with pytest.raises(LabBuildError, match="install-cni"):
        cni.load_conflist(tmp_path / "nowhere")
    write_conflist(runtime, [{"type": "bridge"}])
    topology = build_topology(LabOptions(), 3)
    call = cni.pod_call("ADD", topology, runtime, topology.pod("pod1"))
    with pytest.raises(LabBuildError, match="'bridge' not found"):
        cni.run_conflist(cni.load_conflist(runtime.dirs.cni_conf_dir), call, identity, {})


def test_cni_wiring_needs_agents() -> None:
    with pytest.raises(NotAvailableError, match="--agents"):
        cni.require_cni(agents=False)


def test_node_runtime_env(runtime: NodeRuntime) -> None:
    env = runtime.env()
    assert env["TORTIE_NODENAME"] == "node1"
    assert env["TORTIE_DATASTORE"] == "sqlite:///x.db"
    assert env["TORTIE_STATE_DIR"] == runtime.dirs.state_dir
    assert env["TORTIE_LAB_TOKEN"] == "tok"
    assert runtime.nsenter(["true"]) == ["nsenter", "--net=/run/netns/tl3-n1", "--", "true"]
