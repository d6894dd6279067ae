"""The seam to the CNI plugin: calling it for a lab pod the way a container runtime does.

Problem: a lab's pods must be created through the real plugin over the real protocol
(environment ``CNI_COMMAND``/``CNI_CONTAINERID``/``CNI_NETNS``/``CNI_IFNAME``/``CNI_ARGS``/
``CNI_PATH``, the network configuration on stdin, a JSON result or error on stdout), from the
node's network namespace (a runtime runs plugins on the host, i.e. the node), with the node's
conflist. This module is a small libcni: it reads the node's conflist and runs each plugin in
it in order (ADD) or in reverse (DEL), passing ``prevResult`` along the chain.

Status: the plugin (``tortie.cni.plugin``, installed as ``tortie`` in the node's CNI bin dir
by ``tortie install-cni``) is being written (issue 4). :func:`require_cni` refuses
``--wire-pods cni`` until it exists, before anything is built.
The plugin hands the work to the node agent over a unix socket, so ``--wire-pods cni`` also
needs ``--agents``; the lab gives each node's agent and conflist a socket in the node's state
directory (:attr:`~tortie.lab.runtime.NodeRuntime.agent_socket`).
TODO(issue 4/5): pass the same socket path to ``tortie node run`` once it takes one, wait for
agent readiness before the first ADD, and add the e2e tests with ``--wire-pods cni``.

Invariants: a plugin error (JSON on stdout, non-zero exit) is a LabBuildError carrying the
spec's code and message; nothing here touches the kernel itself, so whatever the plugin
leaves behind lives in the lab's namespaces and goes with them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tortie.lab.errors import LabBuildError, NotAvailableError
from tortie.lab.runtime import NodeRuntime
from tortie.lab.state import PodRecord
from tortie.lab.topology import PodSpec, Topology

PLUGIN_MODULE = "tortie.cni.plugin"
CNI_VERSION = "1.0.0"
CALL_TIMEOUT = 30.0

Wrap = Callable[[Sequence[str]], list[str]]


def cni_available() -> bool:
    try:
        return importlib.util.find_spec(PLUGIN_MODULE) is not None
    except ModuleNotFoundError:
        return False


def require_cni(agents: bool) -> None:
    """Refuse ``--wire-pods cni`` when it cannot work, before anything is built."""
    if not agents:
        raise NotAvailableError(
            "--wire-pods cni needs the node agents (--agents): the CNI plugin asks its "
            "node's agent to wire the pod; add --agents, or use --wire-pods manual"
        )
    if not cni_available():
        raise NotAvailableError(
            f"--wire-pods cni needs the CNI plugin ({PLUGIN_MODULE}, issue 4), which is not "
            "installed yet; use --wire-pods manual (Calico's wiring done by hand, routed "
            "natively)"
        )


@dataclass(frozen=True)
class CniCall:
    """One plugin invocation's environment (the CNI spec's parameters)."""

    command: str  # ADD, DEL, CHECK
    container_id: str
    netns: str  # a path, e.g. /run/netns/tl1-p1 (empty for a DEL after the sandbox is gone)
    ifname: str
    args: tuple[tuple[str, str], ...]
    path: str  # CNI_PATH: where plugins are found

    def env(self) -> dict[str, str]:
        return {
            "CNI_COMMAND": self.command,
            "CNI_CONTAINERID": self.container_id,
            "CNI_NETNS": self.netns,
            "CNI_IFNAME": self.ifname,
            "CNI_ARGS": ";".join(f"{k}={v}" for k, v in self.args),
            "CNI_PATH": self.path,
        }


def container_id(topology: Topology, pod: PodSpec) -> str:
    """A container ID unique on the host (libcni's character rules)."""
    return f"{topology.prefix}{pod.name}"


def pod_call(
    command: str, topology: Topology, runtime: NodeRuntime, pod: PodSpec, netns: str | None = None
) -> CniCall:
    return CniCall(
        command=command,
        container_id=container_id(topology, pod),
        netns=f"/run/netns/{pod.netns}" if netns is None else netns,
        ifname=pod.ifname,
        args=(
            ("IgnoreUnknown", "1"),
            ("K8S_POD_NAMESPACE", pod.k8s_namespace),
            ("K8S_POD_NAME", pod.name),
            ("K8S_POD_INFRA_CONTAINER_ID", container_id(topology, pod)),
        ),
        # Our plugin first, then Debian's reference plugins (portmap is chained after us),
        # as a real node's /opt/cni/bin holds both.
        path=f"{runtime.dirs.cni_bin_dir}:{REFERENCE_PLUGINS_DIR}",
    )


REFERENCE_PLUGINS_DIR = "/usr/lib/cni"  # Debian's containernetworking-plugins


def install_cni(runtime: NodeRuntime, wrap: Wrap | None = None) -> None:
    """Install the plugin and the conflist into the node's CNI dirs (``tortie install-cni``)."""
    argv = [
        sys.executable,
        "-m",
        "tortie.ctl.main",
        "install-cni",
        "--bin-dir",
        runtime.dirs.cni_bin_dir,
        "--conf-dir",
        runtime.dirs.cni_conf_dir,
        "--datastore",
        runtime.datastore,
        "--nodename",
        runtime.node.name,
        "--agent-socket",
        runtime.agent_socket,
    ]
    proc = subprocess.run(
        (wrap or runtime.nsenter)(argv),
        env={**os.environ, **runtime.env()},
        capture_output=True,
        text=True,
        check=False,
        timeout=CALL_TIMEOUT,
    )
    if proc.returncode != 0:
        raise LabBuildError(
            f"tortie install-cni for {runtime.node.name} failed: {proc.stderr.strip()}"
        )


def load_conflist(conf_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The first ``*.conflist`` in lexical order, as libcni picks it."""
    names = sorted(p for p in Path(conf_dir).glob("*.conflist"))
    if not names:
        raise LabBuildError(f"no *.conflist in {conf_dir}; was 'tortie install-cni' run?")
    try:
        data = json.loads(names[0].read_text())
    except (OSError, ValueError) as err:
        raise LabBuildError(f"{names[0]}: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("plugins"), list):
        raise LabBuildError(f"{names[0]}: a conflist needs a 'plugins' list")
    return data


def exec_plugin(
    plugin_conf: dict[str, Any], call: CniCall, wrap: Wrap, env: dict[str, str]
) -> dict[str, Any]:
    """Run one plugin binary (``<CNI_PATH>/<type>``) and return its parsed result."""
    kind = str(plugin_conf.get("type", ""))
    binary = next(
        (Path(d) / kind for d in call.path.split(":") if (Path(d) / kind).is_file()), None
    )
    if not kind or binary is None:
        raise LabBuildError(f"CNI plugin {kind!r} not found in CNI_PATH {call.path}")
    proc = subprocess.run(
        wrap([str(binary)]),
        input=json.dumps(plugin_conf),
        env={**env, **call.env()},
        capture_output=True,
        text=True,
        check=False,
        timeout=CALL_TIMEOUT,
    )
    try:
        out = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except ValueError:
        out = {"msg": proc.stdout.strip()[:200]}
    if proc.returncode != 0:
        detail = f" ({out['details']})" if out.get("details") else ""
        raise LabBuildError(
            f"CNI {call.command} {call.container_id} via {kind}: code {out.get('code', '?')}: "
            f"{out.get('msg', proc.stderr.strip())}{detail}"
        )
    if not isinstance(out, dict):
        raise LabBuildError(f"CNI {call.command} via {kind}: result is not a JSON object")
    return out


def run_conflist(
    conflist: dict[str, Any],
    call: CniCall,
    wrap: Wrap,
    env: dict[str, str],
    prev_result: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """ADD: each plugin in order, the result of one is the next one's ``prevResult``.
    DEL/CHECK: in reverse (DEL) or in order (CHECK), each given ``prev_result``."""
    plugins = list(conflist["plugins"])
    if call.command == "DEL":
        plugins.reverse()
    result: dict[str, Any] = prev_result or {}
    for plugin in plugins:
        conf = {**plugin, "cniVersion": conflist.get("cniVersion", CNI_VERSION)}
        conf["name"] = conflist.get("name", "")
        if result:
            conf["prevResult"] = result
        out = exec_plugin(conf, call, wrap, env)
        if call.command == "ADD":
            result = out
    return result


def add_pod(topology: Topology, runtime: NodeRuntime, pod: PodSpec) -> PodRecord:
    """CNI ADD for ``pod`` on its node; the record carries the address IPAM gave it.

    TODO(issue 4): exercised so far only with fake plugins (unit tests); the first run against
    the real plugin (``tortie.cni.plugin``, installed as ``<cni_bin_dir>/tortie``) needs the
    agents running and is where a lab e2e test with ``--wire-pods cni`` belongs.
    """
    call = pod_call("ADD", topology, runtime, pod)
    conflist = load_conflist(runtime.dirs.cni_conf_dir)
    result = run_conflist(conflist, call, runtime.nsenter, {**os.environ, **runtime.env()})
    ips = result.get("ips") or []
    address = str(ips[0]["address"]).split("/")[0] if ips else None
    host = next((i.get("name") for i in result.get("interfaces", []) if not i.get("sandbox")), None)
    return PodRecord(
        name=pod.name,
        node=pod.node,
        netns=pod.netns,
        wiring="cni",
        ip=address,
        host_ifname=host,
        container_id=call.container_id,
    )


def delete_pod(topology: Topology, runtime: NodeRuntime, pod: PodSpec) -> None:
    """CNI DEL for ``pod`` (``lab down``, before the agents stop and the namespaces go)."""
    call = pod_call("DEL", topology, runtime, pod)
    conflist = load_conflist(runtime.dirs.cni_conf_dir)
    run_conflist(conflist, call, runtime.nsenter, {**os.environ, **runtime.env()})
