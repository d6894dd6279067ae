"""Which namespace a CNI_NETNS path is, without root: the process's own namespace files are
readable by anyone, so the identity checks run on them (the real pod namespaces are in
tests/netns/cni/test_cni_netns_isolation.py)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tortie.dataplane.kernel_netlink import KernelNamespaces
from tortie.dataplane.netns import NotANetnsError, fd_path, netns_identity, open_netns
from tortie.dataplane.wiring import NetnsGoneError, NetnsRefusedError, Wiring


def _wiring() -> Wiring:
    return Wiring(KernelNamespaces(), None)


def test_identity_is_the_namespace_not_the_path() -> None:
    fd, ident = open_netns("/proc/self/ns/net")
    try:
        assert ident == netns_identity(None)
        assert ident == netns_identity(f"/proc/{os.getpid()}/ns/net")
        assert ident == netns_identity(fd_path(fd))  # the open file, wherever it came from
    finally:
        os.close(fd)


@pytest.mark.parametrize("path", ["/proc/self/status", "/proc/self/ns/uts", "regular"])
def test_a_file_that_is_no_network_namespace(path: str, tmp_path: Path) -> None:
    if path == "regular":
        path = str(tmp_path / "file")
        Path(path).write_text("")
    with pytest.raises(NotANetnsError) as err:
        open_netns(path)
    assert err.value.errno == errno.EINVAL


def test_a_missing_path() -> None:
    with pytest.raises(FileNotFoundError):
        open_netns("/nonexistent/netns")


@pytest.mark.parametrize("path", ["/proc/self/ns/net", "/proc/thread-self/ns/net", "pid"])
def test_wiring_refuses_its_own_namespace(path: str) -> None:
    path = f"/proc/{os.getpid()}/ns/net" if path == "pid" else path
    wiring = _wiring()
    with (
        pytest.raises(NetnsRefusedError, match="node's own network namespace"),
        wiring.open_pod_netns(path),
    ):
        pass
    with pytest.raises(NetnsRefusedError), _wiring().open_pod_netns(path, gone_ok=True):
        pass  # DEL too


def test_wiring_refuses_a_file_and_del_treats_it_as_gone(tmp_path: Path) -> None:
    pin = tmp_path / "unmounted-pin"
    pin.write_text("")
    wiring = _wiring()
    with pytest.raises(NetnsRefusedError, match="not a network"), wiring.open_pod_netns(str(pin)):
        pass
    with _wiring().open_pod_netns(str(pin), gone_ok=True) as ns:
        assert ns is None
    with _wiring().open_pod_netns(str(tmp_path / "gone"), gone_ok=True) as ns:
        assert ns is None
    gone = str(tmp_path / "gone")
    with pytest.raises(NetnsGoneError) as err, _wiring().open_pod_netns(gone):
        pass
    assert err.value.code == errno.ENOENT and not isinstance(err.value, NetnsRefusedError)
