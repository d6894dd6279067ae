"""Node address autodetection (Calico's methods) over a fake kernel."""

from ipaddress import IPv4Interface

import pytest

from tortie.agent.config import AgentConfigError, detect_address
from tortie.dataplane.fake_netlink import FakeNetlink


@pytest.fixture
def kernel() -> FakeNetlink:
    k = FakeNetlink()
    for name, addr in [
        ("cali0123456789a", "169.254.1.1/32"),
        ("tunl0", "10.244.3.0/32"),
        ("eth0", "192.168.49.2/24"),
        ("eth1", "10.0.5.7/16"),
    ]:
        k.add_link(name)
        k.add_addr(name, IPv4Interface(addr))
    k.add_link("down0", up=False)
    k.add_addr("down0", IPv4Interface("172.16.0.1/24"))
    return k


def test_first_found_skips_our_devices(kernel: FakeNetlink) -> None:
    got = detect_address(kernel, "first-found")
    assert (got.uplink, str(got.address)) == ("eth0", "192.168.49.2/24")


@pytest.mark.parametrize(
    ("method", "iface"),
    [("interface=eth1", "eth1"), ("interface=eth.*", "eth0"), ("cidr=10.0.0.0/8", "eth1")],
)
def test_methods(kernel: FakeNetlink, method: str, iface: str) -> None:
    assert detect_address(kernel, method).uplink == iface


def test_given_address_must_exist(kernel: FakeNetlink) -> None:
    assert detect_address(kernel, "first-found", IPv4Interface("10.0.5.7/16")).uplink == "eth1"
    with pytest.raises(AgentConfigError, match=r"--ip 10.9.9.9/24: no interface .*eth0"):
        detect_address(kernel, "first-found", IPv4Interface("10.9.9.9/24"))


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ("interface=wlan.*", "no IPv4 address matched"),
        ("interface=(", "bad regex"),
        ("cidr=300.0.0.0/8", "cidr=300.0.0.0/8"),
        ("bogus", "unknown method"),
        ("can-reach=not-an-ip", "not an IPv4 address"),
    ],
)
def test_errors_are_actionable(kernel: FakeNetlink, method: str, message: str) -> None:
    with pytest.raises(AgentConfigError, match=message):
        detect_address(kernel, method)


def test_can_reach_uses_the_kernels_source_choice() -> None:
    k = FakeNetlink()
    k.add_link("lo0")
    k.add_addr("lo0", IPv4Interface("127.0.0.1/8"))
    # Loopback is never a node address, so can-reach 127.0.0.1 finds nothing usable.
    with pytest.raises(AgentConfigError, match="no IPv4 address matched"):
        detect_address(k, "can-reach=127.0.0.1")
