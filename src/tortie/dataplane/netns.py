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

Hazards: ``ip netns exec`` also remounts ``/sys``, which hides a bpffs mounted under
``/sys/fs/bpf``. We only switch the network namespace, never the mount namespace, so pinned BPF
paths stay visible; a subprocess started from inside :func:`run_in_netns` inherits the network
namespace only (this is how ``tc`` is run for another namespace).
"""

from __future__ import annotations

import ctypes
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


def netns_path(ns: NetnsRef) -> str | None:
    """The filesystem path of a namespace reference (``None`` stays ``None``)."""
    if ns is None:
        return None
    text = os.fspath(ns)
    if "/" in text:
        return text
    return f"{NETNS_RUN_DIR}/{text}"


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
