"""Dataplane errors (issue 18, item 3): one hierarchy, with errno and retryable, and no bare
OSError out of the entry points the agent calls."""

from __future__ import annotations

import errno
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from tortie.dataplane import nft_exec, tc
from tortie.dataplane.errors import DataplaneError, kernel_call
from tortie.dataplane.fake_netlink import FakeNetlink
from tortie.dataplane.ipip import IPIPError
from tortie.dataplane.ipip_bpf import BpfIPIP
from tortie.dataplane.ipip_kernel import KernelIPIP
from tortie.dataplane.netlink import NetlinkError
from tortie.dataplane.nft_exec import NftError
from tortie.dataplane.tc import TcError
from tortie.dataplane.tcx import TcxError
from tortie.dataplane.vxlan import VXLANError
from tortie.dataplane.workload import NoInterfaceError, configure_workload_interface
from tortie.errors import TortieError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "cls", [DataplaneError, NetlinkError, IPIPError, VXLANError, NftError, TcError, TcxError]
)
def test_every_dataplane_error_is_a_tortie_error_and_an_oserror(cls: type[Exception]) -> None:
    assert issubclass(cls, DataplaneError)
    assert issubclass(cls, TortieError) and issubclass(cls, OSError)
    assert not issubclass(cls, RuntimeError)  # the loop used to catch RuntimeError for them


def test_errno_and_retryable() -> None:
    err = DataplaneError("add address to tunl0: busy", errno=errno.EBUSY)
    assert str(err) == "add address to tunl0: busy" and err.errno == errno.EBUSY
    assert err.retryable
    assert not DataplaneError("no permission", errno=errno.EPERM).retryable
    assert not DataplaneError("bpftool missing", retryable=False).retryable
    assert DataplaneError("no errno at all").errno is None


def test_netlink_error_reads_as_an_oserror_and_knows_what_no_retry_cures() -> None:
    err = NetlinkError(errno.ENODEV)
    assert str(err) == "[Errno 19] No such device" and err.code == errno.ENODEV
    assert err.errno == errno.ENODEV and err.strerror == "No such device"
    assert err.retryable
    assert not NetlinkError(errno.EPERM).retryable
    assert not NetlinkError(errno.EOPNOTSUPP, "no ipip here").retryable


def test_kernel_call_wraps_a_bare_oserror_with_what_failed() -> None:
    with pytest.raises(IPIPError) as caught, kernel_call("IPIP (bpf) on tunl0", IPIPError):
        raise PermissionError(errno.EPERM, "Operation not permitted")
    err = caught.value
    assert err.errno == errno.EPERM and not err.retryable
    assert str(err).startswith("IPIP (bpf) on tunl0: Operation not permitted (run the agent")
    assert isinstance(err.__cause__, PermissionError)
    original = VXLANError("vxlan.calico: 1 entries failed", ["fdb x"])
    with pytest.raises(VXLANError) as passed, kernel_call("anything", IPIPError):
        raise original
    assert passed.value is original and passed.value.changes == ["fdb x"]


def test_kernel_call_leaves_programming_errors_alone() -> None:
    with pytest.raises(TypeError), kernel_call("anything"):
        raise TypeError("a bug")


def test_bpf_backend_turns_bpf_syscall_failures_into_ipip_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bpf(2) or bpffs failure inside ensure_device (a bare OSError before) is an IPIPError
    naming the backend and the device."""
    from tortie.dataplane import bpffs

    def refuse(path: Path) -> bool:
        raise OSError(errno.EPERM, f"mount bpffs on {path}: Operation not permitted")

    monkeypatch.setattr(bpffs, "ensure_bpffs", refuse)
    nl = FakeNetlink()
    nl.add_link("eth0")
    backend = BpfIPIP(nl, node_ip=IPv4Address("192.168.49.2"), uplink="eth0", pin_dir=tmp_path)
    monkeypatch.setattr(
        "tortie.dataplane.ipip_bpf.ensure_sysctls", lambda *a, **k: []
    )  # no /proc/sys in a fake kernel
    with pytest.raises(IPIPError, match=r"^IPIP \(bpf\) on tunl0: mount bpffs") as caught:
        backend.ensure_device(1480)
    assert caught.value.errno == errno.EPERM and not caught.value.retryable


def test_config_problems_are_not_retryable(tmp_path: Path) -> None:
    nl = FakeNetlink()
    nl.add_link("tunl0", kind="veth")
    with pytest.raises(IPIPError, match="not an ipip tunnel") as caught:
        KernelIPIP(nl).ensure_device(1480)
    assert not caught.value.retryable
    missing = BpfIPIP(
        FakeNetlink(),
        node_ip=IPv4Address("192.168.49.2"),
        uplink="eth0",
        pin_dir=tmp_path,
        bpf_object=tmp_path / "none.o",
    )
    with pytest.raises(IPIPError, match="run `make -C bpf`") as caught:
        missing.counters()
    assert not caught.value.retryable


def test_a_missing_workload_interface_is_a_dataplane_error_and_still_file_not_found() -> None:
    """The CNI wiring catches OSError/FileNotFoundError around it; the agent's loop catches
    DataplaneError: one error is both."""
    with pytest.raises(NoInterfaceError) as caught:
        configure_workload_interface("cali-not-there-at-all")
    err = caught.value
    assert isinstance(err, FileNotFoundError) and isinstance(err, DataplaneError)
    assert err.errno == errno.ENOENT and str(err) == "no interface cali-not-there-at-all"


def test_a_missing_tc_binary_is_a_tc_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_tc(*args: object, **kwargs: object) -> object:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory: 'tc'")

    monkeypatch.setattr(tc.subprocess, "run", no_tc)
    with pytest.raises(TcError, match=r"^tc qdisc show: No such file") as caught:
        tc.tc(["qdisc", "show"])
    assert caught.value.errno == errno.ENOENT


def test_a_missing_nft_binary_is_an_nft_error_that_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_nft(*args: object, **kwargs: object) -> object:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory: 'nft'")

    monkeypatch.setattr(nft_exec.subprocess, "run", no_nft)
    with pytest.raises(NftError, match="apt-get install nftables") as caught:
        nft_exec.NftCli(binary="/nowhere/nft").run("list tables")
    assert not caught.value.retryable
