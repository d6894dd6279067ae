"""The lab's state file: a write-ahead record of everything ``lab up`` created.

Problem: ``lab up`` creates host state (namespaces, which are bind mounts under /run/netns,
bpffs mounts, directories, processes, datastore resources). If it is killed with ``kill -9``
half-way, nothing in the kernel remembers what belonged to it. So every object is written to
``<lab dir>/state.json`` *before* it is created (processes: the moment their PID exists), and
``lab down`` removes what the file lists, whatever exists of it.

Invariants:
- The file is replaced atomically (temporary file, fsync, rename, fsync of the directory):
  a reader sees the previous or the next version, never a torn one.
- Recording is idempotent (recording a namespace twice keeps one entry), so a retried step
  does not duplicate work for ``down``.
- An entry means "may exist": ``down`` treats absent objects as already removed.
- Only one process writes at a time: the holder of the lab's lock (:mod:`.registry`).

Hazard: a recorded PID may be reused by an unrelated process after ours died; records carry
the process start time and command line, and :mod:`.procs` checks both before signalling.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tortie.lab.errors import LabStateError

STATE_VERSION = 1
STATE_NAME = "state.json"


@dataclass(frozen=True)
class ProcessRecord:
    """A process the lab started (or the builder itself), identified beyond its PID."""

    role: str  # "builder", "agent", "speaker", ...
    pid: int
    start_time: int  # clock ticks after boot: /proc/PID/stat field 22
    cmdline: tuple[str, ...]
    node: str | None = None
    log: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProcessRecord:
        return cls(
            role=str(data["role"]),
            pid=int(data["pid"]),
            start_time=int(data["start_time"]),
            cmdline=tuple(str(x) for x in data["cmdline"]),
            node=data.get("node"),
            log=data.get("log"),
        )


@dataclass(frozen=True)
class NodeDirs:
    """Per-node directories, handed to the agent and the CNI plugin of that node."""

    state_dir: str  # the agent's --state-dir (MTU file, status, CNI socket)
    bpf_dir: str  # a bpffs mount of its own: the agent's pin directory (state_dir/bpf)
    cni_conf_dir: str  # the runtime's net.d: the conflist lives here
    cni_bin_dir: str  # CNI_PATH: the plugins
    log_dir: str


@dataclass(frozen=True)
class LinkRecord:
    """A veth pair (or bridge: no peer) inside the lab's namespaces; goes with them."""

    netns: str
    name: str
    peer_netns: str | None = None
    peer: str | None = None


@dataclass(frozen=True)
class PodRecord:
    name: str
    node: str
    netns: str
    wiring: str  # "manual" or "cni"
    ip: str | None = None  # known once wired (manual: the topology's; cni: the result's)
    host_ifname: str | None = None
    container_id: str | None = None


@dataclass
class LabState:
    name: str
    lab_dir: str
    token: str  # in the environment of every process the lab starts (orphan sweep)
    options: dict[str, Any]  # LabOptions.to_json()
    created: float = field(default_factory=time.time)
    version: int = STATE_VERSION
    phase: str = "building"  # building -> up | failed; down: tearing-down
    lab_id: int | None = None
    id_link: str | None = None
    builder: ProcessRecord | None = None
    datastore: str | None = None
    datastore_is_ours: bool = False  # an SQLite file in the lab dir: removed with it
    datastore_created: list[tuple[str, str]] = field(default_factory=list)  # (kind, name)
    dirs: list[str] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    links: list[LinkRecord] = field(default_factory=list)
    processes: list[ProcessRecord] = field(default_factory=list)
    nodes: dict[str, NodeDirs] = field(default_factory=dict)
    pods: dict[str, PodRecord] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    def node_processes(self, node: str) -> list[ProcessRecord]:
        return [p for p in self.processes if p.node == node]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabState:
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            got = data.get("version") if isinstance(data, dict) else type(data).__name__
            raise LabStateError(f"state version {got!r} is not {STATE_VERSION}")
        builder = data.get("builder")
        return cls(
            name=str(data["name"]),
            lab_dir=str(data["lab_dir"]),
            token=str(data["token"]),
            options=dict(data["options"]),
            created=float(data["created"]),
            phase=str(data["phase"]),
            lab_id=data.get("lab_id"),
            id_link=data.get("id_link"),
            builder=ProcessRecord.from_json(builder) if builder else None,
            datastore=data.get("datastore"),
            datastore_is_ours=bool(data.get("datastore_is_ours", False)),
            datastore_created=[(str(k), str(n)) for k, n in data.get("datastore_created", [])],
            dirs=[str(x) for x in data.get("dirs", [])],
            mounts=[str(x) for x in data.get("mounts", [])],
            namespaces=[str(x) for x in data.get("namespaces", [])],
            links=[LinkRecord(**x) for x in data.get("links", [])],
            processes=[ProcessRecord.from_json(x) for x in data.get("processes", [])],
            nodes={k: NodeDirs(**v) for k, v in data.get("nodes", {}).items()},
            pods={k: PodRecord(**v) for k, v in data.get("pods", {}).items()},
            timings={str(k): float(v) for k, v in data.get("timings", {}).items()},
            error=data.get("error"),
        )


def state_path(lab_dir: str | os.PathLike[str]) -> Path:
    return Path(lab_dir) / STATE_NAME


def load_state(path: Path) -> LabState:
    try:
        data = json.loads(path.read_text())
        return LabState.from_json(data)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise LabStateError(
            f"{path}: unreadable lab state ({err}); remove the lab's namespaces "
            "(ip netns list) and that directory by hand"
        ) from err


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class Journal:
    """The state plus its file: every ``record_*`` saves before returning.

    ``after_save(n)`` is called after the n-th save (tests use it to stop a build at a
    chosen point and kill it there).
    """

    def __init__(
        self,
        state: LabState,
        after_save: Callable[[int], None] | None = None,
    ) -> None:
        self.state = state
        self.path = state_path(state.lab_dir)
        self.saves = 0
        self._after_save = after_save

    def save(self) -> None:
        write_atomically(self.path, json.dumps(self.state.to_json(), indent=1) + "\n")
        self.saves += 1
        if self._after_save is not None:
            self._after_save(self.saves)

    def record_dir(self, path: str | os.PathLike[str]) -> None:
        self._add(self.state.dirs, os.fspath(path))

    def record_mount(self, path: str | os.PathLike[str]) -> None:
        self._add(self.state.mounts, os.fspath(path))

    def record_namespace(self, name: str) -> None:
        self._add(self.state.namespaces, name)

    def record_links(self, links: list[LinkRecord]) -> None:
        new = [link for link in links if link not in self.state.links]
        if new:
            self.state.links.extend(new)
            self.save()

    def record_process(self, record: ProcessRecord) -> None:
        self.state.processes.append(record)
        self.save()

    def record_node(self, node: str, dirs: NodeDirs) -> None:
        self.state.nodes[node] = dirs
        self.save()

    def record_pod(self, pod: PodRecord) -> None:
        self.state.pods[pod.name] = pod
        self.save()

    def record_datastore_resource(self, kind: str, name: str) -> None:
        self._add(self.state.datastore_created, (kind, name))

    def set(self, **changes: Any) -> None:
        for key, value in changes.items():
            if not hasattr(self.state, key):
                raise AttributeError(key)
            setattr(self.state, key, value)
        self.save()

    def _add(self, items: list[Any], item: Any) -> None:
        if item not in items:
            items.append(item)
            self.save()
