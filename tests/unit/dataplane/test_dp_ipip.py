"""IPIP backends' netlink behaviour against the in-memory kernel, and the auto choice."""

from __future__ import annotations

import errno
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import pytest

from tortie.dataplane.fake_netlink import FakeNetlink
from tortie.dataplane.ipip import IPIPError
from tortie.dataplane.ipip_bpf import COUNTERS, BpfIPIP, Pins, default_bpf_objects
from tortie.dataplane.ipip_choice import make_ipip_backend, probe_kernel_ipip
from tortie.dataplane.ipip_kernel import KernelIPIP
from tortie.dataplane.netlink import NetlinkError
from tortie.dataplane.tunnel import ensure_tunnel_address, tunnel_interface

NODE = IPv4Address("192.168.49.2")


def test_kernel_backend_creates_and_configures_tunl0() -> None:
    nl = FakeNetlink(supports_ipip=True)
    ipip = KernelIPIP(nl)
    changes = ipip.ensure_device(1480, "10.65.1.1")
    assert changes == [
        "created ipip tunl0",
        "tunl0 up",
        "added address 10.65.1.1/32 to tunl0",
    ]
    link = nl.links["tunl0"]
    assert (link.kind, link.mtu, link.up) == ("ipip", 1480, True)
    assert nl.addrs["tunl0"] == [IPv4Interface("10.65.1.1/32")]
    assert ipip.ensure_device(1480, "10.65.1.1") == []  # idempotent: no writes
    n_ops = len(nl.link_ops)
    assert ipip.ensure_device(1480, IPv4Address("10.65.1.1")) == []
    assert len(nl.link_ops) == n_ops


def test_kernel_backend_follows_mtu_and_address_changes() -> None:
    nl = FakeNetlink(supports_ipip=True)
    ipip = KernelIPIP(nl)
    ipip.ensure_device(1480, "10.65.1.1")
    assert ipip.ensure_device(1430, "10.65.1.5") == [
        "tunl0 mtu 1480 -> 1430",
        "added address 10.65.1.5/32 to tunl0",
        "removed address 10.65.1.1/32 from tunl0",
    ]
    assert ipip.remove() == ["removed address 10.65.1.5/32 from tunl0", "tunl0 down"]
    assert ipip.remove() == []


def test_kernel_backend_tolerates_module_made_tunl0() -> None:
    # Loading the ipip module creates tunl0 by itself (the fallback device).
    nl = FakeNetlink(supports_ipip=True)
    nl.add_link("tunl0", kind="ipip", up=False, mtu=1480)
    assert KernelIPIP(nl).ensure_device(1480) == ["tunl0 up"]


def test_kernel_backend_refuses_a_placeholder_or_missing_module() -> None:
    nl = FakeNetlink()
    nl.add_link("tunl0", kind="veth")
    with pytest.raises(IPIPError, match="veth"):
        KernelIPIP(nl).ensure_device(1480)
    with pytest.raises(NetlinkError) as exc:
        KernelIPIP(FakeNetlink()).ensure_device(1480)
    assert exc.value.code == errno.EOPNOTSUPP


def test_kernel_backend_counters_and_known_nodes() -> None:
    nl = FakeNetlink(supports_ipip=True)
    ipip = KernelIPIP(nl)
    assert ipip.counters() == {}
    ipip.ensure_device(1480)
    assert set(ipip.counters()) == {"tx_packets", "rx_packets", "tx_dropped", "rx_dropped"}
    nodes = {IPv4Address("192.168.49.3")}
    assert ipip.set_known_nodes(nodes) == ["known nodes: 1"]
    assert ipip.set_known_nodes(nodes) == []


def test_probe_and_auto_choice(tmp_path: Path) -> None:
    args = {"node_ip": NODE, "uplink": "eth0", "pin_dir": tmp_path}
    backend, why = make_ipip_backend("auto", FakeNetlink(supports_ipip=True), **args)  # type: ignore[arg-type]
    assert backend.name == "kernel" and "kernel has ipip" in why
    backend, why = make_ipip_backend("auto", FakeNetlink(), **args)  # type: ignore[arg-type]
    assert backend.name == "bpf" and "cannot create ipip" in why
    assert isinstance(backend, BpfIPIP) and backend.peer == "tunl0p"
    # An existing placeholder is kept even if the module appeared (no traffic disruption).
    nl = FakeNetlink(supports_ipip=True)
    nl.add_link("tunl0", kind="veth")
    backend, why = make_ipip_backend("auto", nl, **args)  # type: ignore[arg-type]
    assert backend.name == "bpf" and "keeping" in why
    # Module loaded: tunl0 exists already, creating it says EEXIST.
    nl = FakeNetlink(supports_ipip=True)
    nl.add_link("tunl0", kind="ipip")
    assert probe_kernel_ipip(nl) == (True, "tunl0 is an ipip device")
    assert make_ipip_backend("kernel", FakeNetlink(), **args)[0].name == "kernel"  # type: ignore[arg-type]
    assert make_ipip_backend("bpf", FakeNetlink(supports_ipip=True), **args)[0].name == "bpf"  # type: ignore[arg-type]


def test_tunnel_address_helpers() -> None:
    assert tunnel_interface("10.65.1.1") == IPv4Interface("10.65.1.1/32")
    assert tunnel_interface("10.65.1.1/26") == IPv4Interface("10.65.1.1/26")
    assert tunnel_interface(None) is None
    nl = FakeNetlink()
    nl.add_link("tunl0")
    nl.add_addr("tunl0", IPv4Interface("10.0.0.9/32"))
    assert ensure_tunnel_address(nl, "tunl0", None) == ["removed address 10.0.0.9/32 from tunl0"]


def test_bpf_layout_helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pins = Pins(tmp_path / "ipip-abc")
    assert pins.encap.name == "ipip_encap" and pins.map("ipip_allow").parent.name == "maps"
    assert not pins.complete()
    monkeypatch.delenv("TORTIE_BPF_OBJECT", raising=False)
    fast, compat = default_bpf_objects()  # the preferred build first, then its fallback
    assert fast.parts[-3:] == ("bpf", "build", "ipip.o")
    assert compat.parts[-3:] == ("bpf", "build", "ipip-compat.o")
    monkeypatch.setenv("TORTIE_BPF_OBJECT", "/x/y.o")
    assert default_bpf_objects() == (Path("/x/y.o"),)  # an explicit object, no fallback
    assert COUNTERS[0] == "encap_ok" and COUNTERS[5] == "decap_drop_unknown_src"


def test_bpf_backend_refuses_foreign_tunl0(tmp_path: Path) -> None:
    nl = FakeNetlink()
    nl.add_link("tunl0", kind="ipip")
    ipip = BpfIPIP(nl, node_ip=NODE, uplink="eth0", pin_dir=tmp_path)
    with pytest.raises(IPIPError, match="not a bpf placeholder"):
        ipip.ensure_device(1480)


def test_bpf_attach_type_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """auto: tcx where the kernel has it, else tc filters; tcx asked of a kernel without it is
    an error that says what to do; the mode is passed through make_ipip_backend."""
    from tortie.dataplane import tcx

    def backend(attach: str) -> BpfIPIP:
        return BpfIPIP(FakeNetlink(), node_ip=NODE, uplink="eth0", pin_dir=tmp_path, attach=attach)  # type: ignore[arg-type]

    for has_tcx, attach, how in (
        (True, "auto", "tcx"),
        (False, "auto", "tc"),
        (True, "tc", "tc"),
        (False, "tc", "tc"),
        (True, "tcx", "tcx"),
    ):
        monkeypatch.setattr(tcx, "supported", lambda netns=None, v=has_tcx: v)
        assert backend(attach).attach_how() == how, (has_tcx, attach)
    monkeypatch.setattr(tcx, "supported", lambda netns=None: False)
    with pytest.raises(IPIPError, match=r"no tcx \(Linux 6.6\+\); use --bpf-attach-type tc"):
        backend("tcx").attach_how()
    with pytest.raises(ValueError, match="attach must be one of auto, tcx, tc"):
        backend("tcX")
    made, _ = make_ipip_backend(
        "bpf", FakeNetlink(), node_ip=NODE, uplink="eth0", pin_dir=tmp_path, bpf_attach="tc"
    )
    assert isinstance(made, BpfIPIP) and made.attach == "tc"
    assert made.link_path("ipip_encap") == tmp_path / "tcx-ipip_encap"


def test_bpf_counter_order_matches_the_c_enum() -> None:
    source = (Path(__file__).resolve().parents[3] / "bpf" / "ipip.c").read_text()
    enum = source.split("enum {", 1)[1].split("};", 1)[0]
    names = [
        line.strip().rstrip(",").split(" ")[0].removeprefix("ST_").lower()
        for line in enum.splitlines()
        if line.strip().startswith("ST_") and "ST_MAX" not in line
    ]
    assert tuple(names) == COUNTERS
