"""Workload interface settings and the IPIP backend choice on this real kernel."""

from __future__ import annotations

import errno
from ipaddress import IPv4Address

import pytest
from dp_lab import lab

from tortie.dataplane.ipip_choice import make_ipip_backend, probe_kernel_ipip
from tortie.dataplane.ipip_kernel import KernelIPIP
from tortie.dataplane.kernel_netlink import Pyroute2Netlink
from tortie.dataplane.netlink import NetlinkError
from tortie.dataplane.netns import read_sysctls
from tortie.dataplane.workload import configure_workload_interface, workload_sysctls

CALI = "calia1b2c3d4e5f"


def test_workload_interface_settings_are_asserted_once() -> None:
    with lab() as the_lab:
        ns = the_lab.netns("w")
        the_lab.ip(ns, "link", "add", CALI, "type", "veth", "peer", "name", "eth0x")
        with Pyroute2Netlink(ns) as nl:
            changes = configure_workload_interface(CALI, netns=ns, netlink=nl, mtu=1480)
            assert f"proxy_arp=1 on {CALI}" in changes and f"{CALI} up" in changes
            assert f"{CALI} mtu 1500 -> 1480" in changes
            wanted = workload_sysctls(CALI)
            assert read_sysctls(list(wanted), ns) == wanted
            assert configure_workload_interface(CALI, netns=ns, netlink=nl, mtu=1480) == []
            with pytest.raises(FileNotFoundError):
                configure_workload_interface("calinothere", netns=ns)


def test_this_kernel_has_no_ipip_so_auto_picks_bpf() -> None:
    with lab() as the_lab:
        ns = the_lab.netns("k")
        with Pyroute2Netlink(ns) as nl:
            ok, why = probe_kernel_ipip(nl)
            if ok:
                pytest.skip(f"not applicable: this kernel has ipip ({why})")
            assert nl.get_link("tunl0") is None  # the probe left nothing behind
            with pytest.raises(NetlinkError) as exc:
                KernelIPIP(nl).ensure_device(1480)
            assert exc.value.code == errno.EOPNOTSUPP
            backend, why = make_ipip_backend(
                "auto",
                nl,
                node_ip=IPv4Address("192.168.49.2"),
                uplink="eth0",
                pin_dir=the_lab.tmp / "pins",
                netns=ns,
            )
            assert backend.name == "bpf" and "cannot create ipip" in why
