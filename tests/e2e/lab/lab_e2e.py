"""Helpers for the lab e2e tests: run ``tortie lab`` as a process, ping matrices, and an
inventory of everything a lab could leave on the host.

Every lab lives under a private root (``TORTIE_LAB_ROOT``) with a unique name, and is removed
at teardown whatever happened. Traffic only flows between addresses inside the lab's
namespaces.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tortie.lab.ops import Lab, open_lab
from tortie.lab.procs import pids_with_token
from tortie.lab.registry import LabPaths

CLI = [sys.executable, str(Path(__file__).with_name("labcli.py")), "lab"]


@dataclass
class LabCli:
    root: Path

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "TORTIE_LAB_ROOT": str(self.root)}

    @property
    def paths(self) -> LabPaths:
        return LabPaths(root=self.root)

    def run(
        self, *args: str, check: bool = True, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*CLI, *args],
            capture_output=True,
            text=True,
            env={**self.env, **(env or {})},
            check=False,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"tortie lab {' '.join(args)} exited {proc.returncode}:\n"
                f"{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*CLI, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**self.env, **(env or {})},
        )

    def open(self, name: str) -> Lab:
        return open_lab(self.paths, name)


def unique_name(stem: str) -> str:
    return f"{stem}-{secrets.token_hex(3)}"


@contextlib.contextmanager
def lab_cli(root: Path | None = None) -> Iterator[LabCli]:
    """A private lab root; every lab in it is brought down at the end. By default a short one,
    ``/tmp/tl-XXXXXXXX/labs``, removed at the end if empty (a failed ``down`` keeps its
    evidence). Not pytest's ``tmp_path``: the agents' sockets live in the lab's node
    directories (``.../labs/<lab>/nodes/node4/bgp/exabgp.sock``), a unix socket path holds at
    most 107 bytes, and ``lab up`` refuses a root too deep for them."""
    made = None
    if root is None:
        made = Path(tempfile.mkdtemp(prefix="tl-", dir="/tmp"))
        root = made / "labs"
    cli = LabCli(root)
    try:
        yield cli
    finally:
        for name in cli.paths.labs():
            cli.run("down", "--name", name, "-q", check=False)
        if made is not None:
            for path in (root, made):
                with contextlib.suppress(OSError):
                    os.rmdir(path)


def ping(lab: Lab, source: str, dest: str) -> bool:
    argv = lab.ping_argv(source, dest, count=1, wait=2)
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0


def ping_matrix(lab: Lab) -> dict[tuple[str, str], bool]:
    """Every ordered pair of distinct endpoints (nodes and pods), pinged once, in parallel."""
    names = [n.name for n in lab.topology.nodes] + [p.name for p in lab.topology.pods]
    pairs = [(a, b) for a in names for b in names if a != b]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda ab: ping(lab, *ab), pairs))
    return dict(zip(pairs, results, strict=True))


def assert_full_connectivity(lab: Lab) -> None:
    matrix = ping_matrix(lab)
    failed = [f"{a}->{b}" for (a, b), ok in matrix.items() if not ok]
    assert not failed, f"no reply for {', '.join(failed)} (of {len(matrix)} pairs)"


@dataclass(frozen=True)
class Footprint:
    """Everything of one lab visible on the host."""

    namespaces: tuple[str, ...]
    root_links: tuple[str, ...]
    mounts: tuple[str, ...]
    processes: tuple[int, ...]
    lab_dir_exists: bool
    id_links: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not (
            self.namespaces
            or self.root_links
            or self.mounts
            or self.processes
            or self.lab_dir_exists
            or self.id_links
        )


def footprint(
    lab_dir: Path,
    prefix: str | None,
    token: str | None,
    ids_dir: Path = Path("/run/tortie/lab-ids"),
) -> Footprint:
    namespaces: list[str] = []
    if prefix:
        namespaces = [n for n in os.listdir("/run/netns") if n.startswith(prefix)]
    links = subprocess.run(
        ["ip", "-o", "link", "show"], capture_output=True, text=True, check=True
    ).stdout
    root_links = [
        line.split(":")[1].strip().split("@")[0]
        for line in links.splitlines()
        if prefix and line.split(":")[1].strip().startswith(prefix)
    ]
    with open("/proc/self/mountinfo") as f:
        mounts = [
            line.split()[4]
            for line in f
            if str(lab_dir) in line.split()[4]
            or (prefix and line.split()[4].startswith(f"/run/netns/{prefix}"))
        ]
    id_links = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(ids_dir):
            with contextlib.suppress(OSError):
                if os.readlink(entry.path) == str(lab_dir):
                    id_links.append(entry.path)
    return Footprint(
        namespaces=tuple(namespaces),
        root_links=tuple(root_links),
        mounts=tuple(mounts),
        processes=tuple(pids_with_token(token)) if token else (),
        lab_dir_exists=lab_dir.exists(),
        id_links=tuple(id_links),
    )
