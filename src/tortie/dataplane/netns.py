"""Doing work inside a network namespace from a process that stays outside it.

Problem: several tortie "nodes" share one test host, each in its own network namespace, and one
agent process may drive a namespace it does not live in. Netlink sockets, raw sockets and
``/proc/sys/net`` all belong to the namespace of the *thread* that opens them, so we enter the
namespace in a short-lived thread (``setns(2)`` on a thread moves only that thread), open or do
what we need there, and let the thread die. Sockets opened that way keep working in their
namespace from any thread afterwards.

Invariants: the calling thread never changes namespace; nothing here creates a namespace (a
typo in a name is an error, not a new empty namespace: pyroute2's own ``netns=`` argument
creates missing ones); ``None`` means "the caller's own namespace" and runs inline.

Identity: a namespace is its nsfs inode, not its path. ``/run/netns/node1``, ``/proc/<pid>/ns/net``
of a process in it and any bind mount of it are one namespace; ``(st_dev, st_ino)`` of the file
tells (:func:`netns_identity`, as ``ip netns identify`` compares). A path given by someone else
(a CNI runtime's ``CNI_NETNS``) is opened once with :func:`open_netns`, which checks that it is
a network namespace at all (``NS_GET_NSTYPE``), and the work then goes through that open file
(:func:`fd_path`): the path can be re-pointed meanwhile without us following it. The facts:
docs/cni-namespaces.md.

Hazards: ``ip netns exec`` also remounts ``/sys``, which hides a bpffs mounted under
``/sys/fs/bpf``. We only switch the network namespace, never the mount namespace, so pinned BPF
paths stay visible; a subprocess started from inside :func:`run_in_netns` inherits the network
namespace only (this is how ``tc`` is run for another namespace).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import os
import threading
from collections.abc import Callable, Mapping
from typing import TypeVar

T = TypeVar("T")

# A namespace: a name under /run/netns, a path (/proc/PID/ns/net, a bind mount), or None for
# the caller's own namespace.
NetnsRef = str | os.PathLike[str] | None

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"
NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3), linux/nsfs.h (4.11+): the CLONE_NEW* type of an nsfs fd
# The calling thread's own namespace (/proc/self is the process's main thread: not the same
# thing once a thread has called setns).
OWN_NETNS = "/proc/thread-self/ns/net"

NetnsId = tuple[int, int]  # (st_dev, st_ino) of the namespace's nsfs file


class NotANetnsError(OSError):
    """A path that exists but is not a network namespace (a regular file, another kind of
    namespace)."""


def netns_path(ns: NetnsRef) -> str | None:
    """The filesystem path of a namespace reference (``None`` stays ``None``)."""
    if ns is None:
        return None
    text = os.fspath(ns)
    if "/" in text:
        return text
    return f"{NETNS_RUN_DIR}/{text}"


def netns_identity(ns: NetnsRef) -> NetnsId:
    """Which namespace ``ns`` is (None: the calling thread's); raises OSError if it is gone.

    A named namespace's identity is read from its bind mount, without entering it."""
    st = os.stat(netns_path(ns) or OWN_NETNS)
    return (st.st_dev, st.st_ino)


def open_netns(path: str) -> tuple[int, NetnsId]:
    """Open the network namespace at ``path``: its fd (the caller closes it) and identity.

    Raises FileNotFoundError if nothing is there and :class:`NotANetnsError` if what is there
    is not a network namespace (``setns`` would fail with EINVAL, after the caller may have
    done other work)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
        except OSError as exc:  # ENOTTY: not an nsfs file at all
            raise NotANetnsError(errno.EINVAL, f"not a namespace file: {exc.strerror}") from None
        if kind != CLONE_NEWNET:
            raise NotANetnsError(errno.EINVAL, f"a namespace of another kind ({kind:#x})")
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd, (st.st_dev, st.st_ino)


def fd_path(fd: int) -> str:
    """A path for an open file that resolves to that file, not to where it was opened from
    (``/proc/self/fd`` is the process's fd table, the same in every thread)."""
    return f"/proc/self/fd/{fd}"


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _enter(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc().setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def run_in_netns(ns: NetnsRef, fn: Callable[[], T]) -> T:
    """Run ``fn`` in namespace ``ns`` and return its result (exceptions propagate)."""
    path = netns_path(ns)
    if path is None:
        return fn()
    box: dict[str, object] = {}

    def target() -> None:
        try:
            _enter(path)
            box["result"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"netns:{path}", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]


def _sysctl_path(key: str) -> str:
    # Keys are given in path form ("net/ipv4/conf/cali1/proxy_arp"): interface names may
    # contain dots, which the dotted form cannot express.
    return "/proc/sys/" + key.strip("/")


def read_sysctls(keys: list[str], ns: NetnsRef = None) -> dict[str, str]:
    """Current values (stripped) of ``keys`` in ``ns``."""

    def work() -> dict[str, str]:
        out = {}
        for key in keys:
            with open(_sysctl_path(key)) as f:
                out[key] = f.read().strip()
        return out

    return run_in_netns(ns, work)


def ensure_sysctls(
    values: Mapping[str, str], ns: NetnsRef = None, *, missing_ok: bool = False
) -> list[str]:
    """Set each sysctl whose current value differs; return the keys written.

    Reading first keeps re-assertion free of writes (and of the side effects some sysctls have
    on write, e.g. ``forwarding`` resetting other settings), so the agent can call this on every
    resync. ``missing_ok`` skips keys that do not exist (IPv6 disabled, interface gone).
    """

    def work() -> list[str]:
        written = []
        for key, value in values.items():
            path = _sysctl_path(key)
            try:
                with open(path) as f:
                    current = f.read().strip()
            except FileNotFoundError:
                if missing_ok:
                    continue
                raise
            if current != value:
                with open(path, "w") as f:
                    f.write(value)
                written.append(key)
        return written

    return run_in_netns(ns, work)
