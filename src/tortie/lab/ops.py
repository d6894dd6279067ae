"""Acting inside a running lab: which namespace and address a name means, and the commands
``tortie lab exec``, ``ping`` and ``capture`` run there.

Problem: users (and the trace, the demo, the benchmarks) say "pod1" or "node2"; the kernel
wants ``/run/netns/tl3-p1`` and ``10.244.0.1``. A pod's address is the one its wiring gave it
(recorded in the state file: IPAM chooses it when the CNI plugin wires the pod), a node's is
its uplink address.

Invariants: commands enter only the network namespace (``nsenter --net``), never the mount
namespace, so /sys/fs/bpf and every path stay as on the host; every command carries the lab's
token (``down`` stops leftovers) and, for a node, the node's environment
(:class:`~tortie.lab.runtime.NodeRuntime`), so ``tortie`` run there acts as that node.

``tortie`` inside ``lab exec`` is the tortie running the lab (issue 17, item 15: ``tortie lab
exec node1 -- tortie node status`` failed unless the virtualenv was on ``PATH``, and ``sudo``
resets ``PATH``): the directory of the running interpreter (a virtualenv's ``bin``, where its
``tortie`` script is) goes first on the command's ``PATH``, and a bare ``tortie`` that is still
not found there runs as ``<this python> -m tortie.ctl.main``.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass

from tortie.lab.errors import LabError, LabStateError
from tortie.lab.procs import TOKEN_ENV
from tortie.lab.registry import LabPaths
from tortie.lab.runtime import LAB_ENV, node_runtime
from tortie.lab.state import LabState, load_state
from tortie.lab.topology import LabOptions, NodeSpec, PodSpec, Topology, build_topology


@dataclass(frozen=True)
class Lab:
    """A lab as found on disk: its state and the topology rebuilt from its options."""

    state: LabState
    topology: Topology

    def netns(self, name: str) -> str:
        return self.topology.target(name).netns

    def netns_path(self, name: str) -> str:
        return f"/run/netns/{self.netns(name)}"

    def address(self, name: str) -> str:
        target = self.topology.target(name)
        if isinstance(target, NodeSpec):
            return str(target.ip)
        record = self.state.pods.get(name)
        if record is None or record.ip is None:
            raise LabError(f"{name} has no address yet (lab phase: {self.state.phase})")
        return record.ip

    def default_iface(self, name: str) -> str:
        """What ``capture`` listens on by default: a node's uplink, a pod's eth0."""
        target = self.topology.target(name)
        return target.uplink if isinstance(target, NodeSpec) else target.ifname

    def env(self, name: str) -> dict[str, str]:
        target = self.topology.target(name)
        if isinstance(target, PodSpec):
            return {LAB_ENV: self.state.name, TOKEN_ENV: self.state.token}
        return node_runtime(self.topology, self.state, target.name).env()

    def nsenter(self, name: str, argv: list[str]) -> list[str]:
        return ["nsenter", f"--net={self.netns_path(name)}", "--", *argv]

    def exec_argv(self, name: str, argv: list[str]) -> tuple[list[str], dict[str, str]]:
        """The command line and full environment that run ``argv`` "on" ``name``."""
        if not argv:
            raise LabError("nothing to run: give a command after '--'")
        if not os.path.exists(self.netns_path(name)):
            raise LabError(
                f"{name}'s namespace {self.netns(name)} does not exist "
                f"(lab phase: {self.state.phase}); rebuild the lab"
            )
        env = {**os.environ, **self.env(name)}
        env["PATH"] = tool_path(env.get("PATH"))
        return self.nsenter(name, tortie_argv(argv, env["PATH"])), env

    def ping_argv(
        self, source: str, dest: str, count: int = 3, interval: float = 0.2, wait: float = 1.0
    ) -> list[str]:
        address = dest if _looks_like_ip(dest) else self.address(dest)
        ping = ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", str(wait), address]
        return self.nsenter(source, ping)

    def capture_argv(
        self, name: str, iface: str | None = None, count: int | None = None
    ) -> list[str]:
        argv = ["tcpdump", "-n", "-l", "-i", iface or self.default_iface(name)]
        if count is not None:
            argv += ["-c", str(count)]
        return self.nsenter(name, argv)


def tool_path(path: str | None, python: str = sys.executable) -> str:
    """``path`` with the running interpreter's directory first (once)."""
    here = os.path.dirname(python)
    rest = [p for p in (path or os.defpath).split(os.pathsep) if p and p != here]
    return os.pathsep.join([here, *rest]) if here else os.pathsep.join(rest)


def tortie_argv(argv: list[str], path: str, python: str = sys.executable) -> list[str]:
    """``argv``, with a bare ``tortie`` that ``path`` does not find run by ``python``."""
    if argv and argv[0] == "tortie" and shutil.which("tortie", path=path) is None:
        return [python, "-m", "tortie.ctl.main", *argv[1:]]
    return argv


def _looks_like_ip(text: str) -> bool:
    parts = text.split(".")
    return len(parts) == 4 and all(p.isdigit() for p in parts)


def open_lab(paths: LabPaths, name: str | None) -> Lab:
    """The lab ``name`` (default: the only lab) with its topology."""
    resolved = paths.resolve(name)
    try:
        state = load_state(paths.state_file(resolved))
    except FileNotFoundError:
        raise LabStateError(
            f"lab {resolved!r} has no state file yet (a lab up was killed at its very start); "
            f"remove it with 'tortie lab down --name {resolved}'"
        ) from None
    if state.lab_id is None:
        raise LabStateError(
            f"lab {resolved!r} never got an id (phase {state.phase}); "
            f"remove it with 'tortie lab down --name {resolved}'"
        )
    return Lab(state, build_topology(LabOptions.from_json(state.options), state.lab_id))
