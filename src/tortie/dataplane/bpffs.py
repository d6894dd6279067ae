"""Making sure a directory is inside a BPF filesystem (bpffs), where BPF objects can be pinned.

Problem: pinned objects outlive the process that loaded them (the agent can restart without
disturbing traffic), but only inside a bpffs. This host has none mounted at /sys/fs/bpf, and
``ip netns exec`` hides that path anyway (it remounts /sys). Each tortie node pins under its own
directory; if that directory is not on a bpffs we mount a fresh bpffs instance right there
(every bpffs mount is a separate instance, so nodes never see each other's pins).

Invariants: never mounts over a directory that already is on a bpffs; mounts with mode 0700.
Hazards: a mount is host state: whoever mounted (a test fixture, the lab) unmounts; pins in it
vanish with the mount, and with them any program not attached somewhere. A mount made inside a
private mount namespace (a process started by ``ip netns exec``) vanishes when that process
exits: run the agent with ``nsenter --net=...`` or mount the pin directory's bpffs beforehand
in the host's mount namespace, or a restarted agent finds no pins and reloads.
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

MNT_DETACH = 2
SYS_BPF = Path("/sys/fs/bpf")


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _unescape(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as octal.
    for code in ("\\040", "\\011", "\\012", "\\134"):
        field = field.replace(code, chr(int(code[1:], 8)))
    return field


def filesystem_type(path: str | os.PathLike[str]) -> str:
    """The type of the filesystem ``path`` is on (longest matching mount point wins)."""
    target = os.path.realpath(path)
    best, fstype = "", ""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            mount_point = _unescape(left.split()[4])
            inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
            if inside and len(mount_point) >= len(best):
                best, fstype = mount_point, right.split()[0]
    return fstype


def is_bpffs(path: str | os.PathLike[str]) -> bool:
    return filesystem_type(path) == "bpf"


def _mount(path: str | os.PathLike[str]) -> None:
    if _libc().mount(b"bpf", os.fsencode(path), b"bpf", 0, b"mode=0700") != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount bpffs on {path}: {os.strerror(err)}")


def ensure_bpffs(path: str | os.PathLike[str]) -> bool:
    """Create ``path`` and make sure it is on a bpffs; True if we mounted one now.

    Under the conventional /sys/fs/bpf (an empty sysfs directory until a bpffs is mounted
    there, and sysfs refuses mkdir) the bpffs goes on /sys/fs/bpf itself, as every BPF agent
    does; anywhere else, on ``path``.
    """
    target = Path(os.path.realpath(path))
    if (target == SYS_BPF or SYS_BPF in target.parents) and not is_bpffs(SYS_BPF):
        _mount(SYS_BPF)
        target.mkdir(parents=True, exist_ok=True)
        return True
    target.mkdir(parents=True, exist_ok=True)
    if is_bpffs(target):
        return False
    _mount(target)
    return True


def unmount(path: str | os.PathLike[str]) -> None:
    """Lazily unmount ``path`` (tests and lab teardown)."""
    if _libc().umount2(os.fsencode(path), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount {path}: {os.strerror(err)}")
