"""Network namespaces for tests: files standing for namespaces, each with its own FakeNetlink.

Problem: a pod's wiring spans two namespaces (the node's and the pod's), refuses paths that are
not a pod's namespace, and proves a veth's two ends by ifindex and netns id. Tests of that
logic (the CNI server's verbs, :mod:`tortie.dataplane.wiring`) must run without root, so this
is a :class:`~tortie.dataplane.netlink.Namespaces` whose namespaces are plain files in a test
directory: a namespace's identity is its file's (st_dev, st_ino), as a real one's is its nsfs
inode, so a path, a second path to the same file and ``/proc/self/fd/N`` of an open one are
the same namespace, exactly as with the kernel.

What it models: opening a path that does not exist raises FileNotFoundError; a file that is no
(longer a) namespace raises :class:`~tortie.dataplane.netns.NotANetnsError` (an unmounted pin
is an empty file); :meth:`FakeNamespaces.remove` makes a namespace go away as Linux does when
its last user leaves, its veths deleted and with them their peers in other namespaces. The
"calling thread's own" namespace (``None``) is the host's.

Hazards: the fake's identities are real files' inodes: keep the directory for the test's
duration (tmp_path does).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from tortie.dataplane.fake_netlink import FakeNetlink
from tortie.dataplane.netns import NetnsId, NetnsRef, NotANetnsError, netns_path


class FakeNamespaces:
    """Namespaces under ``directory``; ``host`` is the node's (and the caller's own)."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self._by_id: dict[NetnsId, FakeNetlink] = {}
        self._unmounted: list[FakeNetlink] = []
        self.host_path = self.add("host")
        self.host = self.at(self.host_path)

    def add(self, name: str) -> str:
        """A new namespace (an empty file ``ns-<name>``); returns its path."""
        path = self.directory / f"ns-{name}"
        path.touch(exist_ok=False)
        netlink = FakeNetlink()
        netlink.identity = self._stat(str(path))
        netlink.resolve = self.netlink
        self._by_id[netlink.identity] = netlink
        return str(path)

    def at(self, path: str) -> FakeNetlink:
        """The namespace at ``path`` (KeyError: none)."""
        return self._by_id[self._stat(path)]

    def unmount(self, path: str) -> None:
        """``path`` stays, but is no namespace any more (an unmounted pin: an empty file); the
        namespace itself lives on while something uses it (its veths stay)."""
        self._unmounted.append(self._by_id.pop(self._stat(path)))

    def remove(self, path: str) -> None:
        """The namespace and its path go (its veths go, taking their peers along)."""
        self._destroy(self._stat(path))
        os.unlink(path)

    def _destroy(self, identity: NetnsId) -> None:
        netlink = self._by_id.pop(identity)
        for name in [n for n in netlink.veth_peers if n in netlink.links]:
            netlink.delete_link(name)

    @staticmethod
    def _stat(path: str) -> NetnsId:
        st = os.stat(path)
        return (st.st_dev, st.st_ino)

    def _path(self, ns: NetnsRef) -> str:
        return netns_path(ns) or self.host_path

    # -- the Namespaces protocol ------------------------------------------------------------

    def open(self, ns: NetnsRef) -> tuple[int, NetnsId]:
        fd = os.open(self._path(ns), os.O_RDONLY | os.O_CLOEXEC)
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) not in self._by_id:
            os.close(fd)
            raise NotANetnsError(errno.EINVAL, "not a namespace file (fake)")
        return fd, (st.st_dev, st.st_ino)

    def identity(self, ns: NetnsRef) -> NetnsId:
        return self._stat(self._path(ns))

    def netlink(self, ns: NetnsRef) -> FakeNetlink:
        path = self._path(ns)
        found = self._by_id.get(self._stat(path))
        if found is None:
            raise OSError(errno.EINVAL, f"setns({path}): Invalid argument")
        return found
