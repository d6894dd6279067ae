"""VXLANManager against the in-memory kernel: device settings, entries, ownership, restarts."""

from __future__ import annotations

import errno
from ipaddress import IPv4Address, IPv4Interface

import pytest

from tortie.dataplane.fake_netlink import FakeNetlink
from tortie.dataplane.netlink import FdbEntry, Neighbour, VXLANAttrs
from tortie.dataplane.vxlan import (
    VXLAN_DEVICE,
    RemoteVTEP,
    VXLANError,
    VXLANManager,
    normalise_mac,
    vtep_mac_for,
)

NODE = IPv4Address("192.168.49.2")
MAC = "66:00:00:00:00:01"
V2 = RemoteVTEP(IPv4Address("192.168.49.3"), IPv4Address("10.65.2.0"), "66:00:00:00:00:02")
V3 = RemoteVTEP(IPv4Address("192.168.49.4"), IPv4Address("10.65.3.0"), "66:00:00:00:00:03")


@pytest.fixture
def kernel() -> FakeNetlink:
    nl = FakeNetlink()
    nl.add_link("eth0", kind=None, mtu=1500)
    return nl


def manager(nl: FakeNetlink) -> VXLANManager:
    return VXLANManager(nl, node_ip=NODE, uplink="eth0")


def fdb(nl: FakeNetlink) -> set[tuple[str, str]]:
    return {(e.mac, str(e.dst)) for e in nl.list_fdb(VXLAN_DEVICE)}


def neigh(nl: FakeNetlink) -> dict[str, str | None]:
    return {str(n.ip): n.mac for n in nl.list_neighbours(VXLAN_DEVICE)}


def test_vtep_mac_is_stable_unicast_and_locally_administered() -> None:
    mac = vtep_mac_for("node-1")
    assert mac == vtep_mac_for("node-1") != vtep_mac_for("node-2")
    first = int(mac[:2], 16)
    assert first & 0x02 and not first & 0x01
    assert normalise_mac(mac) == mac
    assert len({vtep_mac_for(f"n{i}") for i in range(1000)}) == 1000


def test_normalise_mac_rejects_junk_and_multicast() -> None:
    assert normalise_mac("66-AA-bb-00-00-01") == "66:aa:bb:00:00:01"
    for bad in ("66:aa", "zz:00:00:00:00:00", "01:00:5e:00:00:01"):
        with pytest.raises(ValueError):
            normalise_mac(bad)


def test_ensure_device_creates_calico_device_then_is_idempotent(kernel: FakeNetlink) -> None:
    vx = manager(kernel)
    changes = vx.ensure_device(1450, "10.65.1.0", mac=MAC)
    assert changes[0].startswith("created vxlan vxlan.calico (vni 4096 port 4789")
    assert f"{VXLAN_DEVICE} up" in changes
    assert "added address 10.65.1.0/32 to vxlan.calico" in changes
    link = kernel.get_link(VXLAN_DEVICE)
    assert link is not None and link.up and link.mtu == 1450 and link.mac == MAC
    assert kernel.get_vxlan(VXLAN_DEVICE) == VXLANAttrs(
        vni=4096, port=4789, local=NODE, link=kernel.links["eth0"].index, learning=False
    )
    assert kernel.list_addrs(VXLAN_DEVICE) == [IPv4Interface("10.65.1.0/32")]
    assert vx.ensure_device(1450, "10.65.1.0", mac=MAC) == []
    # A fresh manager (agent restart) over the configured node changes nothing either.
    assert manager(kernel).ensure_device(1450, "10.65.1.0", mac=MAC) == []
    assert vx.mac() == MAC


def test_ensure_device_repairs_mtu_mac_address_and_state(kernel: FakeNetlink) -> None:
    vx = manager(kernel)
    vx.ensure_device(1450, "10.65.1.0", mac=MAC)
    kernel.set_link(VXLAN_DEVICE, up=False, mtu=1400)
    kernel.set_link_mac(VXLAN_DEVICE, "66:00:00:00:00:99")
    changes = vx.ensure_device(1450, "10.65.1.64", mac=MAC)
    assert set(changes) == {
        f"{VXLAN_DEVICE} mac 66:00:00:00:00:99 -> {MAC}",
        f"{VXLAN_DEVICE} mtu 1400 -> 1450",
        f"{VXLAN_DEVICE} up",
        "added address 10.65.1.64/32 to vxlan.calico",
        "removed address 10.65.1.0/32 from vxlan.calico",
    }
    # mac=None keeps whatever the device has.
    assert vx.ensure_device(1450, "10.65.1.64") == []


def test_wrong_fixed_settings_recreate_device_and_restore_entries(kernel: FakeNetlink) -> None:
    vx = manager(kernel)
    with pytest.raises(VXLANError, match="ensure_device first"):
        vx.set_remote_vteps([V2])  # remembered even though the device is missing
    # Someone (Flannel, an old version) made a vxlan device of that name with other settings.
    kernel.create_vxlan(
        VXLAN_DEVICE, vni=1, port=8472, local=NODE, uplink="eth0", learning=True, mac=MAC
    )
    changes = vx.ensure_device(1450, "10.65.1.0", mac=MAC)
    assert changes[0].startswith("deleted vxlan.calico: vni 1 port 8472")
    assert changes[1].startswith("created vxlan vxlan.calico (vni 4096")
    assert f"fdb {V2.vtep_mac} dst {V2.node_ip}" in changes  # the remembered set came back
    attrs = kernel.get_vxlan(VXLAN_DEVICE)
    assert attrs is not None and attrs.vni == 4096 and not attrs.learning
    assert fdb(kernel) == {(V2.vtep_mac, "192.168.49.3")}
    assert neigh(kernel) == {"10.65.2.0": V2.vtep_mac}


def test_foreign_device_with_our_name_is_left_alone(kernel: FakeNetlink) -> None:
    kernel.add_link(VXLAN_DEVICE, kind="veth")
    with pytest.raises(VXLANError, match="exists as veth"):
        manager(kernel).ensure_device(1450, "10.65.1.0")
    assert manager(kernel).remove() == []
    assert kernel.get_link(VXLAN_DEVICE) is not None


def test_unreadable_settings_are_an_error_not_a_recreate_loop(kernel: FakeNetlink) -> None:
    kernel.add_link(VXLAN_DEVICE, kind="vxlan")  # a vxlan whose settings we cannot read
    with pytest.raises(VXLANError, match="cannot read"):
        manager(kernel).ensure_device(1450)
    assert ("delete_link", VXLAN_DEVICE) not in kernel.link_ops


def test_missing_uplink_is_an_error(kernel: FakeNetlink) -> None:
    vx = VXLANManager(kernel, node_ip=NODE, uplink="nope0")
    with pytest.raises(VXLANError, match="uplink nope0 not found"):
        vx.ensure_device(1450)


def test_remote_vteps_added_once_and_stale_removed(kernel: FakeNetlink) -> None:
    vx = manager(kernel)
    vx.ensure_device(1450, "10.65.1.0", mac=MAC)
    changes = vx.set_remote_vteps([V2, V3])
    assert changes == [
        f"fdb {V2.vtep_mac} dst 192.168.49.3",
        f"fdb {V3.vtep_mac} dst 192.168.49.4",
        f"neighbour 10.65.2.0 lladdr {V2.vtep_mac}",
        f"neighbour 10.65.3.0 lladdr {V3.vtep_mac}",
    ]
    assert vx.set_remote_vteps([V3, V2]) == []
    assert manager(kernel).set_remote_vteps([V2, V3]) == []  # restart-safe
    assert vx.set_remote_vteps([V2]) == [
        "removed neighbour 10.65.3.0",
        f"removed fdb {V3.vtep_mac} dst 192.168.49.4",
    ]
    assert fdb(kernel) == {(V2.vtep_mac, "192.168.49.3")}
    assert neigh(kernel) == {"10.65.2.0": V2.vtep_mac}
    assert vx.set_remote_vteps([]) == [
        "removed neighbour 10.65.2.0",
        f"removed fdb {V2.vtep_mac} dst 192.168.49.3",
    ]
    assert fdb(kernel) == set() and neigh(kernel) == {}


def test_changed_node_ip_or_mac_is_rewritten(kernel: FakeNetlink) -> None:
    vx = manager(kernel)
    vx.ensure_device(1450, "10.65.1.0")
    vx.set_remote_vteps([V2])
    moved = RemoteVTEP("192.168.49.7", V2.vtep_ip, V2.vtep_mac)  # node got a new IP
    assert vx.set_remote_vteps([moved]) == [f"fdb {V2.vtep_mac} dst 192.168.49.7"]
    assert fdb(kernel) == {(V2.vtep_mac, "192.168.49.7")}
    new_mac = RemoteVTEP(moved.node_ip, V2.vtep_ip, "66:00:00:00:00:77")
    assert vx.set_remote_vteps([new_mac]) == [
        "fdb 66:00:00:00:00:77 dst 192.168.49.7",
        "neighbour 10.65.2.0 lladdr 66:00:00:00:00:77",
        f"removed fdb {V2.vtep_mac} dst 192.168.49.7",
    ]


def test_only_owned_entries_are_removed(kernel: FakeNetlink) -> None:
    vx = manager(kernel)
    vx.ensure_device(1450, "10.65.1.0")
    index = kernel.links[VXLAN_DEVICE].index
    # The kernel's own dynamic entry (a failed lookup) and an entry on another device.
    dynamic = Neighbour(IPv4Address("10.65.9.9"), None, permanent=False)
    kernel.neighbours.setdefault(index, {})[dynamic.ip] = dynamic
    eth0 = kernel.links["eth0"].index
    kernel.neighbours[eth0] = {
        IPv4Address("192.168.49.1"): Neighbour(IPv4Address("192.168.49.1"), MAC, True)
    }
    kernel.fdb[eth0] = {"66:00:00:00:00:42": [IPv4Address("192.168.49.42")]}
    # A stale entry of ours from before a restart, and a second remote someone appended.
    kernel.fdb[index] = {
        "66:00:00:00:00:09": [IPv4Address("192.168.49.9")],
        V2.vtep_mac: [IPv4Address("192.168.49.3"), IPv4Address("192.168.49.5")],
    }
    changes = vx.set_remote_vteps([V2])
    assert f"removed fdb {V2.vtep_mac} dst 192.168.49.5" in changes
    assert "removed fdb 66:00:00:00:00:09 dst 192.168.49.9" in changes
    assert fdb(kernel) == {(V2.vtep_mac, "192.168.49.3")}
    assert neigh(kernel)["10.65.9.9"] is None  # dynamic entry untouched
    assert kernel.list_neighbours("eth0") and kernel.list_fdb("eth0") == [
        FdbEntry("66:00:00:00:00:42", IPv4Address("192.168.49.42"))
    ]


def test_own_node_skipped_and_conflicts_reported(kernel: FakeNetlink) -> None:
    vx = manager(kernel)
    vx.ensure_device(1450, "10.65.1.0")
    me = RemoteVTEP(NODE, "10.65.1.0", MAC)
    clash = RemoteVTEP("192.168.49.8", "10.65.8.0", V2.vtep_mac)  # same MAC as V2
    vx.set_remote_vteps([me, clash, V2])
    assert fdb(kernel) == {(V2.vtep_mac, "192.168.49.3")}
    assert vx.conflicts == [clash]


def test_one_failing_entry_does_not_hold_back_the_others(kernel: FakeNetlink) -> None:
    vx = manager(kernel)
    vx.ensure_device(1450, "10.65.1.0")
    kernel.fail_fdb[V2.vtep_mac] = errno.EINVAL
    with pytest.raises(VXLANError, match="1 entries failed") as exc:
        vx.set_remote_vteps([V2, V3])
    assert f"fdb {V3.vtep_mac} dst 192.168.49.4" in exc.value.changes
    assert fdb(kernel) == {(V3.vtep_mac, "192.168.49.4")}
    del kernel.fail_fdb[V2.vtep_mac]
    assert vx.set_remote_vteps([V2, V3]) == [f"fdb {V2.vtep_mac} dst 192.168.49.3"]


def test_remove_deletes_device_and_is_idempotent(kernel: FakeNetlink) -> None:
    vx = manager(kernel)
    vx.ensure_device(1450, "10.65.1.0")
    vx.set_remote_vteps([V2])
    assert vx.remove() == [f"deleted {VXLAN_DEVICE}"]
    assert kernel.get_link(VXLAN_DEVICE) is None and vx.remove() == []
    # Recreated later: no old entries come back (the set was forgotten with the device).
    vx.ensure_device(1450, "10.65.1.0")
    assert fdb(kernel) == set()
