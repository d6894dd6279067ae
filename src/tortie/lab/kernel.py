"""The few kernel operations a lab needs, behind one small interface.

Problem: building a lab is a few dozen link/address/route commands spread over a handful of
namespaces, plus sysctls and bpffs mounts. The builder should say *what* (and record it first)
while this module does it, and unit tests substitute a recording fake.

Why ``ip`` (iproute2) and not pyroute2 here:
- one ``ip -n NS -batch -`` process runs all commands for a namespace (under 10 ms), while a
  process importing pyroute2 pays 0.2-0.3 s before its first message;
- a veth is created in one namespace with its peer directly in another (``... peer name eth0
  netns NS``), so no interface ever exists, even for an instant, in the host's namespace;
- the commands *are* the documentation: ``tortie lab up --dry-run``, docs/lab.md and the
  benchmark's "ideal pod path" show exactly what was run, and anyone can replay them by hand;
- ``ip netns add/del`` own the /run/netns bind-mount convention (shared mount propagation,
  unlink after a half-made namespace) that every other tool expects.
Sysctls are written to /proc/sys from a thread inside the namespace
(:func:`tortie.dataplane.netns.ensure_sysctls`): no process, and no ``ip netns exec``, which
would remount /sys. bpffs mounts use :mod:`tortie.dataplane.bpffs`.

Invariants: :meth:`HostKernel.netns_delete` and :meth:`HostKernel.unmount` succeed when the
object is already gone (``down`` is idempotent); every failure is a
:class:`~tortie.lab.errors.LabBuildError` naming the namespace and the command.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from tortie.lab.errors import LabBuildError

NETNS_DIR = Path("/run/netns")


class Kernel(Protocol):
    def netns_add(self, name: str) -> None: ...
    def netns_delete(self, name: str) -> None: ...
    def netns_exists(self, name: str) -> bool: ...
    def ip_batch(self, netns: str, commands: Sequence[str]) -> None: ...
    def sysctls(self, netns: str, values: Mapping[str, str]) -> None: ...
    def mount_bpffs(self, path: Path) -> bool: ...
    def unmount(self, path: Path) -> None: ...


def _unescape(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as octal.
    for code in ("\\040", "\\011", "\\012", "\\134"):
        field = field.replace(code, chr(int(code[1:], 8)))
    return field


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below ``path`` (deepest first), from /proc/self/mountinfo."""
    target = os.path.realpath(path).rstrip("/")
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = _unescape(line.split()[4])
            if point == target or point.startswith(target + "/"):
                found.append(Path(point))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def is_mount_point(path: Path) -> bool:
    return Path(os.path.realpath(path)) in mounts_under(path)


class HostKernel:
    """The real kernel, through iproute2 and /proc/sys."""

    def __init__(self, netns_dir: Path = NETNS_DIR) -> None:
        self.netns_dir = netns_dir

    def _run(self, argv: list[str], stdin: str | None = None, what: str = "") -> str:
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip()
            raise LabBuildError(f"{what or ' '.join(argv)}: {detail}")
        return proc.stdout

    def netns_add(self, name: str) -> None:
        self._run(["ip", "netns", "add", name])

    def netns_delete(self, name: str) -> None:
        # A half-made namespace (``ip netns add`` killed) is a plain file: ``ip netns del``
        # unmounts (failing quietly) and unlinks it all the same.
        if os.path.lexists(self.netns_dir / name):
            self._run(["ip", "netns", "del", name])

    def netns_exists(self, name: str) -> bool:
        return os.path.lexists(self.netns_dir / name)

    def ip_batch(self, netns: str, commands: Sequence[str]) -> None:
        if not commands:
            return
        proc = subprocess.run(
            ["ip", "-n", netns, "-batch", "-"],
            input="\n".join(commands) + "\n",
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise LabBuildError(
                f"in namespace {netns}: {_failed_command(proc.stderr, commands)}: "
                f"{proc.stderr.strip()}"
            )

    def sysctls(self, netns: str, values: Mapping[str, str]) -> None:
        from tortie.dataplane.netns import ensure_sysctls

        path = os.fspath(self.netns_dir / netns)
        # A kernel booted with ipv6.disable=1 has no net/ipv6 keys at all: those are optional;
        # any other missing key is a bug (a typo, an interface that is not there).
        optional = {k: v for k, v in values.items() if k.startswith("net/ipv6/")}
        required = {k: v for k, v in values.items() if k not in optional}
        try:
            ensure_sysctls(required, path)
            ensure_sysctls(optional, path, missing_ok=True)
        except OSError as err:
            raise LabBuildError(f"in namespace {netns}: sysctl: {err}") from err

    def mount_bpffs(self, path: Path) -> bool:
        from tortie.dataplane.bpffs import ensure_bpffs

        try:
            return ensure_bpffs(path)
        except OSError as err:
            raise LabBuildError(f"mount bpffs on {path}: {err}") from err

    def unmount(self, path: Path) -> None:
        from tortie.dataplane.bpffs import unmount

        if not os.path.exists(path) or not is_mount_point(path):
            return
        try:
            unmount(path)
        except OSError as err:
            raise LabBuildError(f"umount {path}: {err}") from err


def _failed_command(stderr: str, commands: Sequence[str]) -> str:
    # iproute2 reports "Command failed -:N" with N the 1-based line of the batch.
    for line in stderr.splitlines():
        if line.startswith("Command failed -:"):
            try:
                return f"'ip {commands[int(line.rsplit(':', 1)[1]) - 1]}'"
            except (ValueError, IndexError):
                break
    return "ip -batch"
