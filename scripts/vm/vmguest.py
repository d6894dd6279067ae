#!/usr/bin/env python3
"""A throwaway qemu guest with Debian's cloud kernel that runs one command over the host's files.

Problem: tortie's ``kernel`` IPIP backend needs the ipip module, which the kernel of the
machines we run on does not have; only a guest kernel can prove that backend. This module
builds such a guest once (cached) and runs commands in it, with no tortie import: it is used by
``tests/vm`` and by hand (``scripts/vm/build-guest``, ``scripts/vm/run-in-vm``).

The guest:
- kernel: ``vmlinuz`` of Debian's ``linux-image-*-cloud-amd64`` (an installed one if there is
  one, else the package is fetched with ``apt-get download`` and unpacked into the cache:
  installing it is not needed and would pull in initramfs-tools and udev);
- initramfs: busybox-static, the modules listed in :data:`ROOT_MODULES` with their
  dependencies (each module's own ``depends=`` field, which is what depmod writes into
  ``modules.dep``; ``modules.dep`` itself only exists for an installed kernel), and an
  ``/init`` that loads them, mounts the host's ``/`` read-only over virtiofs under an overlay
  whose upper layer is guest memory (so the guest can write anywhere, and nothing reaches the
  host), puts fresh proc/sys/dev, a tmpfs ``/run`` and a bpffs on top, and runs the command
  chrooted there: the host's binaries, the repository and its venv, as they are on the host;
- output: the command's stdout+stderr go to the second serial port (a file on the host), then
  a marker line ``TORTIE-VM-EXIT <token> <code>`` with a token fresh for every run (so the
  command's own output cannot fake it), then the guest powers off. The kernel console (first
  serial port) goes to another file, shown when something went wrong.

Facts measured on these machines (field notes, section 2): ``/dev/kvm`` is KVM-PVM, under
which stock kernels hang, so the guest runs under TCG (software emulation) on ``-M q35``
(``-M microvm`` hangs); the cloud kernel has no 9p, hence virtiofs; code in the guest runs
20-30x slower than on the host.

Hazards:
- virtiofsd runs as root with the host's ``/`` as its shared directory; the guest mounts it
  read-only, but the virtiofsd of Debian 12 (QEMU's C one) has no read-only mode of its own,
  so the protection is the guest kernel's ``ro`` mount: run only trusted commands. Its default
  sandbox (``namespace``) fails to pivot_root into ``/`` (EBUSY, measured), so it runs with
  ``sandbox=chroot``.
- The guest sees the host's files as they are while it runs (cache=always: a file changed on
  the host during a run may be seen stale); it must not depend on files the host changes then.
- Each run starts exactly one virtiofsd and one qemu and stops exactly those, by PID (never by
  name: other people's qemu may be running), and removes its run directory (sockets, logs).
  Both get SIGKILL if the process that started them dies (``setpriv --pdeathsig``), and a run
  directory left by a killed run (its owner PID gone) is removed by the next run.
- The cache is shared by concurrent runs: building takes an exclusive lock and publishes files
  by atomic rename; a run only reads it.
- The guest has no network device: traffic only flows between the guest's own namespaces.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import hashlib
import io
import lzma
import os
import re
import secrets
import shlex
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CACHE_ENV = "TORTIE_VM_CACHE"
DEFAULT_CACHE = Path("/var/cache/tortie-vm")
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
# Where the guest kernel comes from: the host release's own ("stable"), or its backports suite
# (a newer kernel: Debian 12's is 6.1, its backports carry 6.12, which has the kfuncs of
# bpf/build/ipip.o). Backports are read through a private apt state (see _backports_apt).
KERNEL_SOURCES = ("stable", "backports")
BACKPORTS_MIRROR_ENV = "TORTIE_VM_BACKPORTS_MIRROR"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
# What the guest needs; dependencies are added (and ordered first) by the builder.
ROOT_MODULES = (
    "virtio_pci",
    "virtiofs",
    "overlay",
    "veth",
    "ipip",
    "sch_ingress",  # clsact, and cls_bpf: the tc-BPF IPIP backend in the interop scenario
    "cls_bpf",
)
BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static (statically linked: no libraries)
QEMU = "qemu-system-x86_64"
# Debian 12 ships QEMU's C virtiofsd inside qemu-system-common; Debian 13 has the Rust one in
# its own package (different options: see _virtiofsd_argv).
VIRTIOFSD_CANDIDATES = ("/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd")
VIRTIOFS_TAG = "hostroot"
GUEST_MEMORY_MB = 1024
# TCG's "max" CPU without PKU and CMPXCHG16B. With them, Debian's 6.12 kernel under this QEMU
# (Debian 12's 7.2) panicked in about one boot in 15 (measured: 4 of 55), always with EFLAGS
# holding pointer bits right after a cmpxchg16b (SLUB's freelist) or an iretq; with both off,
# 110 of 110 boots (6.12 and 6.1) ran clean. The kernel falls back to SLUB's locked path.
GUEST_CPU = "max,-pku,-cx16"
CPU_ENV = "TORTIE_VM_CPU"
SOCKET_PATH_MAX = 107  # sun_path
# Bump when the layout of the cache or the init script's contract changes.
BUILD_FORMAT = 3


class VMError(RuntimeError):
    """The guest could not be built, booted, or did not report an exit code."""


class VMUnavailableError(VMError):
    """A prerequisite is missing on this host (qemu, virtiofsd, busybox-static, a kernel)."""


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def _log(msg: str) -> None:
    print(f"vmguest: {msg}", file=sys.stderr, flush=True)


def _run(argv: Sequence[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise VMError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


# -- the kernel -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kernel:
    version: str  # e.g. 6.1.0-56-cloud-amd64
    vmlinuz: Path
    modules: Path  # .../lib/modules/<version>


def _installed_kernel() -> Kernel | None:
    """The newest installed cloud kernel that has ipip.ko, if any."""
    found = []
    for vmlinuz in Path("/boot").glob("vmlinuz-*-cloud-amd64"):
        version = vmlinuz.name.removeprefix("vmlinuz-")
        modules = Path("/lib/modules") / version
        if (modules / "kernel/net/ipv4/ipip.ko").exists():
            found.append(Kernel(version, vmlinuz, modules))
    return max(found, key=lambda k: _version_key(k.version), default=None)


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", version))


def _unpacked_kernels(root: Path) -> list[Kernel]:
    out = []
    for pkg in root.glob("*/.complete"):
        base = pkg.parent
        for vmlinuz in (base / "boot").glob("vmlinuz-*"):
            version = vmlinuz.name.removeprefix("vmlinuz-")
            out.append(Kernel(version, vmlinuz, base / "lib/modules" / version))
    return sorted(out, key=lambda k: _version_key(k.version))


def _fetch_kernel_package(into: Path, apt_options: Sequence[str] = ()) -> str:
    """``apt-get download`` the package the cloud meta-package depends on; its name."""
    depends = _run(["apt-cache", *apt_options, "depends", KERNEL_META_PACKAGE])
    match = re.search(r"Depends: (linux-image-\S+-cloud-amd64)\b", depends)
    if match is None:
        raise VMError(f"apt knows no {KERNEL_META_PACKAGE}: {depends.strip()}")
    package = match.group(1)
    _log(f"fetching {package} (apt-get download)")
    # Sandbox user root: _apt cannot write into our root-only cache directory.
    argv = ["apt-get", *apt_options, "download", "-q", "-o", "APT::Sandbox::User=root", package]
    _run(argv, into)
    return package


def _os_codename() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "VERSION_CODENAME" and value.strip('"'):
            return value.strip('"')
    raise VMUnavailableError("/etc/os-release names no VERSION_CODENAME (not Debian?)")


def _backports_apt(state: Path) -> list[str]:
    """apt options for a private view of ``<codename>-backports`` under ``state``.

    The host's own apt configuration is left as it is: a sources list, package lists and a
    cache of our own, signed by Debian's archive keyring (the one the host's sources use).
    """
    mirror = os.environ.get(BACKPORTS_MIRROR_ENV) or DEFAULT_MIRROR
    suite = f"{_os_codename()}-backports"
    (state / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (state / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    sources = state / "sources.list"
    sources.write_text(f"deb [signed-by={DEBIAN_KEYRING}] {mirror} {suite} main\n")
    return [
        "-o", f"Dir::Etc::SourceList={sources}",
        "-o", "Dir::Etc::SourceParts=/nonexistent",
        "-o", f"Dir::State::Lists={state / 'lists'}",
        "-o", f"Dir::Cache={state / 'cache'}",
        "-o", "APT::Sandbox::User=root",
    ]  # fmt: skip


def _download_kernel(root: Path, source: str = "stable") -> Kernel:
    """Fetch and unpack the package the cloud meta-package points at (no installation)."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise VMUnavailableError("no cloud kernel installed and no apt-get/dpkg-deb to fetch one")
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
        try:
            if source == "backports":
                apt = _backports_apt(Path(tmp) / "apt")
                _run(["apt-get", *apt, "update", "-qq"])
                package = _fetch_kernel_package(Path(tmp), apt)
            else:
                package = _fetch_stable_package(Path(tmp))
        except VMError as exc:
            raise VMUnavailableError(f"cannot fetch the {source} guest kernel: {exc}") from exc
        (deb,) = Path(tmp).glob("*.deb")
        unpacked = Path(tmp) / "unpacked"
        _run(["dpkg-deb", "-x", str(deb), str(unpacked)])
        (unpacked / ".complete").write_text(deb.name + "\n")
        target = root / package
        if target.exists():
            shutil.rmtree(target)
        unpacked.rename(target)
    kernels = [k for k in _unpacked_kernels(root) if k.vmlinuz.is_relative_to(root / package)]
    if not kernels:
        raise VMError(f"{package} has no /boot/vmlinuz-*")
    return kernels[-1]


def _fetch_stable_package(into: Path) -> str:
    """From the host's own apt sources; their lists are refreshed once if they lack it."""
    try:
        return _fetch_kernel_package(into)
    except VMError as exc:
        _log(f"{exc}; trying again after apt-get update")
        _run(["apt-get", "update", "-qq"])
        return _fetch_kernel_package(into)


def find_kernel(cache: Path, *, fetch: bool = True, source: str = "stable") -> Kernel:
    """The guest kernel from ``source`` (see :data:`KERNEL_SOURCES`).

    ``stable``: an installed cloud kernel, else one unpacked in the cache, else fetch one from
    the host's apt sources. ``backports``: one unpacked in the cache, else fetch it from
    ``<codename>-backports`` (e.g. 6.12 on Debian 12, whose own kernel is 6.1). Each source has
    its own cache directory, so one never shadows the other.
    """
    if source not in KERNEL_SOURCES:
        raise VMError(f"unknown kernel source {source!r}: use one of {', '.join(KERNEL_SOURCES)}")
    root = cache / ("kernels" if source == "stable" else f"kernels-{source}")
    if source == "stable":
        installed = _installed_kernel()
        if installed is not None:
            return installed
    unpacked = _unpacked_kernels(root)
    if unpacked:
        return unpacked[-1]
    if not fetch:
        raise VMUnavailableError(f"no {source} cloud kernel installed or unpacked under {root}")
    return _download_kernel(root, source)


# -- modules ----------------------------------------------------------------------------------


def module_bytes(path: Path) -> bytes:
    """A module's ELF bytes: Debian 12 ships plain ``.ko`` files, Debian 13 ``.ko.xz``
    (decompressed here: busybox's insmod loads plain files only)."""
    data = path.read_bytes()
    return lzma.decompress(data) if path.name.endswith(".xz") else data


def module_name(path: Path) -> str:
    """``ip_tunnel`` for ``.../ip_tunnel.ko[.xz]`` (the kernel's spelling: ``-`` is ``_``)."""
    return path.name.split(".ko")[0].replace("-", "_")


def modinfo(path: Path) -> dict[str, str]:
    """The ``.modinfo`` section of an ELF64 kernel module."""
    data = module_bytes(path)
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise VMError(f"{path}: not an ELF64 object (only plain and .xz modules are supported)")
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from(
            "<IIQQQQ", data, shoff + i * shentsize
        )
        return name, offset, size

    _, stroff, _ = section(shstrndx)
    for i in range(shnum):
        name, offset, size = section(i)
        end = data.index(b"\0", stroff + name)
        if data[stroff + name : end] == b".modinfo":
            fields: dict[str, str] = {}
            for item in data[offset : offset + size].split(b"\0"):
                key, sep, value = item.decode(errors="replace").partition("=")
                if sep and key not in fields:
                    fields[key] = value
            return fields
    raise VMError(f"{path}: no .modinfo section")


def resolve_modules(modules_dir: Path, roots: Sequence[str]) -> list[Path]:
    """The .ko files for ``roots`` and their dependencies, each after what it depends on.

    Built-in modules (listed in ``modules.builtin``) need nothing and are left out.
    """
    index: dict[str, Path] = {}
    for pattern in ("*.ko", "*.ko.xz"):
        for ko in (modules_dir / "kernel").rglob(pattern):
            index[module_name(ko)] = ko
    builtin = set()
    builtin_list = modules_dir / "modules.builtin"
    if builtin_list.exists():
        for line in builtin_list.read_text().splitlines():
            builtin.add(module_name(Path(line)))
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = name.replace("-", "_")
        if name in seen or name in builtin:
            return
        if name in chain:
            raise VMError(f"module dependency cycle: {' -> '.join((*chain, name))}")
        ko = index.get(name)
        if ko is None:
            raise VMUnavailableError(f"module {name} is not in {modules_dir} (needed by {chain})")
        for dep in filter(None, modinfo(ko).get("depends", "").split(",")):
            visit(dep, (*chain, name))
        seen.add(name)
        order.append(ko)

    for root in roots:
        visit(root, ())
    return order


# -- the initramfs ----------------------------------------------------------------------------

INIT_SCRIPT = r"""#!/bin/busybox sh
# tortie vm guest /init (generated by scripts/vm/vmguest.py; see its docstring).
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
arg() { sed -n "s/.*\<tortie\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
token=$(arg token)
rundir=$(arg run)
out=/dev/ttyS1
finish() {
    echo "TORTIE-VM-EXIT $token $1" >"$out"
    sync
    poweroff -f
    reboot -f
}
fail() { echo "tortie-vm init: $*" >"$out"; finish 125; }
for m in $(cat /modules.list); do
    insmod "/modules/$m.ko" || fail "insmod $m"
done
mkdir -p /lower /rw /host
mount -t virtiofs -o ro hostroot /lower || fail "cannot mount the host root (virtiofs)"
# Writes land in guest memory, never on the host: an overlay with a tmpfs upper layer.
mount -t tmpfs tmpfs /rw && mkdir /rw/upper /rw/work || fail "tmpfs for the overlay"
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /host \
    || fail "cannot mount the overlay on the host root"
cp "/host$rundir/cmd.sh" /cmd.sh || fail "cannot read $rundir/cmd.sh"
# A fresh /run: the host's holds its own netns names, pid files and sockets.
mount -t tmpfs -o mode=755 tmpfs /host/run || fail "tmpfs on /run"
mount -t proc proc /host/proc || fail "proc"
mount -t sysfs sysfs /host/sys || fail "sysfs"
mount -t devtmpfs devtmpfs /host/dev || fail "devtmpfs"
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts devpts /host/dev/pts
mount -t tmpfs tmpfs /host/dev/shm
mount -t bpf bpf /host/sys/fs/bpf 2>/dev/null
cp /cmd.sh /host/run/tortie-vm-cmd.sh
hostname tortie-vm
chroot /host /bin/sh /run/tortie-vm-cmd.sh </dev/null >"$out" 2>&1
finish $?
"""


def _cpio_newc(entries: Sequence[tuple[str, int, bytes]]) -> bytes:
    """A ``newc`` cpio archive of (name, mode, data) entries (mode includes the file type)."""
    out = io.BytesIO()
    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        encoded = name.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(mode) else 1
        fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + encoded)
        out.write(b"\0" * (-out.tell() % 4))
        out.write(data)
        out.write(b"\0" * (-out.tell() % 4))
    return out.getvalue()


def _initramfs(modules: Sequence[Path]) -> bytes:
    names = [module_name(ko) for ko in modules]
    entries: list[tuple[str, int, bytes]] = [
        (d, stat.S_IFDIR | 0o755, b"") for d in ("bin", "dev", "proc", "sys", "modules")
    ]
    entries.append(("bin/busybox", stat.S_IFREG | 0o755, BUSYBOX.read_bytes()))
    entries.append(("init", stat.S_IFREG | 0o755, INIT_SCRIPT.encode()))
    entries.append(("modules.list", stat.S_IFREG | 0o644, "\n".join(names).encode() + b"\n"))
    for ko in modules:
        entries.append((f"modules/{module_name(ko)}.ko", stat.S_IFREG | 0o644, module_bytes(ko)))
    # mtime 0 and a fixed gzip header: the same inputs give the same bytes.
    return gzip.compress(_cpio_newc(entries), compresslevel=6, mtime=0)


@dataclass(frozen=True)
class Guest:
    """What a run needs: the kernel image and the initramfs built for it."""

    kernel: Path
    initramfs: Path
    version: str


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def check_host() -> None:
    """Raise VMUnavailableError naming what is missing to build or run a guest."""
    missing = []
    if shutil.which(QEMU) is None:
        missing.append(f"{QEMU} (Debian: qemu-system-x86)")
    if find_virtiofsd() is None:
        missing.append("virtiofsd (Debian 12: qemu-system-common; Debian 13: virtiofsd)")
    if not BUSYBOX.exists():
        missing.append(f"{BUSYBOX} (Debian: busybox-static)")
    if missing:
        raise VMUnavailableError("missing: " + "; ".join(missing))


def build_guest(
    cache: Path | None = None, *, force: bool = False, fetch: bool = True, source: str = "stable"
) -> Guest:
    """Build (or find in the cache) the kernel and initramfs; idempotent and concurrency-safe.

    ``source``: where the kernel comes from (:data:`KERNEL_SOURCES`, :func:`find_kernel`).
    """
    check_host()
    cache = cache or cache_dir()
    with _locked(cache / ".lock"):
        kernel = find_kernel(cache, fetch=fetch, source=source)
        modules = resolve_modules(kernel.modules, ROOT_MODULES)
        digest = hashlib.sha256(f"{BUILD_FORMAT}\n{INIT_SCRIPT}".encode())
        digest.update(hashlib.sha256(BUSYBOX.read_bytes()).digest())
        for ko in modules:
            digest.update(module_name(ko).encode() + hashlib.sha256(ko.read_bytes()).digest())
        out_dir = cache / "guests" / kernel.version
        initramfs = out_dir / f"initramfs-{digest.hexdigest()[:16]}.cpio.gz"
        vmlinuz = out_dir / "vmlinuz"
        if force or not initramfs.exists() or not vmlinuz.exists():
            # Older initramfs files stay (1.3 MB each): another checkout may still use one.
            out_dir.mkdir(parents=True, exist_ok=True)
            _atomic_write(vmlinuz, kernel.vmlinuz.read_bytes())
            _atomic_write(initramfs, _initramfs(modules))
            _log(
                f"built {initramfs} ({initramfs.stat().st_size // 1024} KiB; modules: "
                + ", ".join(module_name(ko) for ko in modules)
                + ")"
            )
        return Guest(vmlinuz, initramfs, kernel.version)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.rename(path)


# -- running ----------------------------------------------------------------------------------


def find_virtiofsd() -> str | None:
    env = os.environ.get("TORTIE_VIRTIOFSD")
    if env:
        return env
    for path in VIRTIOFSD_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("virtiofsd")


def _virtiofsd_argv(binary: str, socket_path: Path) -> list[str]:
    help_text = subprocess.run(
        [binary, "--help"], capture_output=True, text=True, check=False
    ).stdout
    if "--shared-dir" in help_text:  # the Rust virtiofsd
        argv = [
            binary,
            f"--socket-path={socket_path}",
            "--shared-dir=/",
            "--cache=always",
            "--sandbox=chroot",
        ]
        if "--readonly" in help_text:
            argv.append("--readonly")
        return argv
    # QEMU's C virtiofsd. sandbox=chroot: its default (namespace) pivot_root()s into the shared
    # directory, which fails with EBUSY when that directory is "/" (measured here).
    return [
        binary,
        f"--socket-path={socket_path}",
        "-o",
        "source=/",
        "-o",
        "cache=always",
        "-o",
        "sandbox=chroot",
        "-o",
        "log_level=warn",
    ]


@dataclass(frozen=True)
class RunResult:
    """One guest run: the command's exit code and output, and the guest's console."""

    exit_code: int
    output: str  # the command's stdout and stderr, interleaved
    console: str  # the guest kernel's console (boot messages)
    seconds: float
    qemu_log: str = ""  # qemu's own stdout and stderr (e.g. a TCG plugin's output)


def _die_with_parent(argv: list[str]) -> list[str]:
    """``argv`` run so that it gets SIGKILL when the thread that started it dies: a killed
    test run (kill -9, a CI time-out) leaves no qemu or virtiofsd behind. setpriv (util-linux,
    essential in Debian) sets the parent-death signal and execs, keeping the PID, so stopping
    the process we started stops the real one."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", *argv] if setpriv else argv


def _stop(proc: subprocess.Popen[bytes] | None, grace: float = 5.0) -> None:
    """Stop exactly this process (by its handle, i.e. its PID) and reap it."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(grace)


def _script(cmd: str | Sequence[str], env: Mapping[str, str], cwd: str) -> str:
    command = cmd if isinstance(cmd, str) else shlex.join(cmd)
    lines = [
        "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "export HOME=/tmp LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1",
    ]
    lines += [f"export {key}={shlex.quote(value)}" for key, value in env.items()]
    lines += [f"cd {shlex.quote(cwd)} || exit 126", command, ""]
    return "\n".join(lines)


def run_in_vm(cmd: str | Sequence[str], timeout: float = 300.0, **kwargs: Any) -> tuple[int, str]:
    """``(exit_code, output)`` of ``cmd`` in a fresh guest; see :func:`run_guest`."""
    result = run_guest(cmd, timeout, **kwargs)
    return result.exit_code, result.output


def run_guest(
    cmd: str | Sequence[str],
    timeout: float = 300.0,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str = "/",
    guest: Guest | None = None,
    smp: int = 1,
    memory_mb: int = GUEST_MEMORY_MB,
    kernel_args: str = "quiet loglevel=4",
    qemu_args: Sequence[str] = (),
) -> RunResult:
    """Boot a guest, run ``cmd`` (a shell string, or argv) in it as root, return its result.

    The command sees the host's files as they are (its writes stay in guest memory; /run is
    empty), runs with ``/bin/sh`` in ``cwd`` with ``env`` added, and has ``timeout`` seconds
    including the boot; past that the guest is killed and VMError raised. ``kernel_args``:
    extra kernel command line (e.g. ``loglevel=7`` to see the boot in
    :attr:`RunResult.console`). ``qemu_args``: appended to qemu's command line (e.g.
    ``-plugin x.so -d plugin``: what qemu writes is :attr:`RunResult.qemu_log`). ``smp`` is
    1: with 2 vCPUs (multi-threaded TCG) on this loaded 2-core host the tortie scenario took
    longer (37-52 s against 20-36 s, measured).
    """
    guest = guest or build_guest()
    virtiofsd = find_virtiofsd()
    if virtiofsd is None:
        raise VMUnavailableError("no virtiofsd")
    token = secrets.token_hex(8)
    # The guest reads cmd.sh from here through the host root; virtiofsd's socket lives here
    # too, and a unix socket path must fit in 107 bytes.
    run_dir = _make_run_dir()
    fsd: subprocess.Popen[bytes] | None = None
    qemu: subprocess.Popen[bytes] | None = None
    start = time.monotonic()
    try:
        (run_dir / "cmd.sh").write_text(_script(cmd, env or {}, cwd))
        sock = run_dir / "fs.sock"
        out_path, console_path = run_dir / "out.log", run_dir / "console.log"
        with open(run_dir / "virtiofsd.log", "wb") as fsd_log:
            fsd = subprocess.Popen(
                _die_with_parent(_virtiofsd_argv(virtiofsd, sock)),
                stdin=subprocess.DEVNULL,
                stdout=fsd_log,
                stderr=subprocess.STDOUT,
            )
        while not sock.exists():
            if fsd.poll() is not None or time.monotonic() - start > 10:
                raise VMError(f"virtiofsd did not start: {_tail(run_dir / 'virtiofsd.log')}")
            time.sleep(0.02)
        append = f"console=ttyS0 {kernel_args} panic=-1 tortie.token={token} tortie.run={run_dir}"
        argv = [
            QEMU,
            "-M",
            "q35",
            "-accel",
            "tcg",
            "-cpu",
            os.environ.get(CPU_ENV) or GUEST_CPU,
            "-smp",
            str(smp),
            "-m",
            str(memory_mb),
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-kernel",
            str(guest.kernel),
            "-initrd",
            str(guest.initramfs),
            "-append",
            append,
            # virtiofs needs the guest's memory shared with virtiofsd.
            "-object",
            f"memory-backend-memfd,id=mem,size={memory_mb}M,share=on",
            "-numa",
            "node,memdev=mem",
            "-chardev",
            f"socket,id=fs,path={sock}",
            "-device",
            f"vhost-user-fs-pci,chardev=fs,tag={VIRTIOFS_TAG}",
            "-serial",
            f"file:{console_path}",
            "-serial",
            f"file:{out_path}",
            *qemu_args,
        ]
        with open(run_dir / "qemu.log", "wb") as qemu_log:
            qemu = subprocess.Popen(
                _die_with_parent(argv),
                stdin=subprocess.DEVNULL,
                stdout=qemu_log,
                stderr=subprocess.STDOUT,
            )
        try:
            qemu.wait(max(1.0, timeout - (time.monotonic() - start)))
        except subprocess.TimeoutExpired:
            _stop(qemu)
            raise VMError(
                f"the guest did not finish in {timeout:.0f} s\n"
                f"--- output ---\n{_tail(out_path)}\n--- console ---\n{_tail(console_path)}"
            ) from None
        output = out_path.read_text(errors="replace").replace("\r\n", "\n")
        console = console_path.read_text(errors="replace").replace("\r\n", "\n")
        match = re.search(rf"^TORTIE-VM-EXIT {token} (\d+)$", output, re.MULTILINE)
        if match is None:
            raise VMError(
                f"the guest reported no exit code (qemu exited {qemu.returncode})\n"
                f"--- output ---\n{output[-3000:]}\n--- console ---\n{console[-3000:]}\n"
                f"--- qemu ---\n{_tail(run_dir / 'qemu.log')}"
            )
        return RunResult(
            exit_code=int(match.group(1)),
            output=output[: match.start()],
            console=console,
            seconds=time.monotonic() - start,
            qemu_log=(run_dir / "qemu.log").read_text(errors="replace"),
        )
    finally:
        _stop(qemu)
        _stop(fsd)
        shutil.rmtree(run_dir, ignore_errors=True)


RUN_DIR_PREFIX = "tortie-vm-"
OWNER_FILE = "owner.pid"


def _make_run_dir() -> Path:
    """A fresh run directory (removing those left by runs whose process was killed)."""
    run_dir = Path(tempfile.mkdtemp(prefix=RUN_DIR_PREFIX))
    if len(str(run_dir / "fs.sock")) > SOCKET_PATH_MAX:
        run_dir.rmdir()
        run_dir = Path(tempfile.mkdtemp(prefix=RUN_DIR_PREFIX, dir="/tmp"))
    (run_dir / OWNER_FILE).write_text(f"{os.getpid()}\n")
    for other in run_dir.parent.glob(RUN_DIR_PREFIX + "*"):
        try:
            owner = int((other / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not ours, or just being made
        if other != run_dir and not _alive(owner):
            shutil.rmtree(other, ignore_errors=True)
    return run_dir


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tail(path: Path, size: int = 3000) -> str:
    try:
        return path.read_text(errors="replace").replace("\r\n", "\n")[-size:]
    except OSError:
        return "(none)"


# -- command line -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build (or find cached) the guest kernel and initramfs")
    build.add_argument("--force", action="store_true", help="rebuild the initramfs")
    build.add_argument("--no-fetch", action="store_true", help="never call apt-get download")
    run = sub.add_parser("run", help="run a shell command in a fresh guest")
    run.add_argument("--timeout", type=float, default=300.0)
    for sub_parser in (build, run):
        sub_parser.add_argument(
            "--kernel",
            choices=KERNEL_SOURCES,
            default="stable",
            help="the host release's cloud kernel (default) or its backports' newer one",
        )
    run.add_argument("--cwd", default=os.getcwd())
    run.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            guest = build_guest(force=args.force, fetch=not args.no_fetch, source=args.kernel)
            print(f"kernel {guest.kernel} ({guest.version})\ninitramfs {guest.initramfs}")
            return 0
        words = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not words:
            parser.error("run: no command")
        # Words are joined into one shell command line, as ssh does.
        guest = build_guest(source=args.kernel)
        result = run_guest(" ".join(words), timeout=args.timeout, cwd=args.cwd, guest=guest)
    except VMError as exc:
        print(f"vmguest: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(result.output)
    _log(f"exit {result.exit_code} after {result.seconds:.1f} s")
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
