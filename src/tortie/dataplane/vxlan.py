"""VXLAN mode: Calico's ``vxlan.calico`` device, its VTEP address and the per-node L2 entries.

Problem: in VXLAN mode a remote block is routed ``<block> via <remote VTEP IP> dev vxlan.calico
onlink`` (those routes live in the :class:`~tortie.dataplane.routetable.RouteTable`, built by
the agent). For the kernel to send such a packet it needs two more things per remote node, and
no multicast or learning may fill them in (Calico turns learning off): a permanent neighbour
entry ``<remote VTEP IP> -> <remote VTEP MAC>`` (so no ARP is ever sent into the tunnel) and a
permanent FDB entry ``<remote VTEP MAC> -> dst <remote node IP>`` (which outer IPv4 address
carries frames for that MAC). This module owns the device and those entries.

Invariants:
- The device is created exactly as Calico's: VNI 4096, UDP 4789, ``local`` = the node IP,
  ``dev`` = the uplink, learning off; MTU (host MTU - 50), up, and the node's VTEP address (a
  /32 from IPAM, the device's only IPv4 address) are asserted on every :meth:`ensure_device`.
- Every method is idempotent and returns what it changed: a restarted agent over a configured
  node gets ``[]`` and traffic is not disturbed.
- :meth:`VXLANManager.set_remote_vteps` takes the complete set (desired state) each time.
- Ownership: we own the device named ``device`` if it is a vxlan device, every FDB entry on
  it that has a remote destination, and every *permanent* IPv4 neighbour entry on it. Dynamic
  neighbour entries (the kernel's own, e.g. a FAILED lookup for an address we have no entry
  for) and everything on other devices are never touched. A device of that name that is not
  vxlan is never touched either: :class:`VXLANError`.

Hazards:
- VNI, port, local address, lower device and learning cannot be changed on a live vxlan
  device, so a mismatch is repaired by deleting and recreating it. That drops its routes and
  entries for a moment: the entries are re-added at once from the last desired set, and the
  caller must re-apply its routes (``RouteTable.on_interface_update`` / ``queue_resync``).
- ``mac=None`` keeps whatever MAC the device has (random when the kernel creates it). The MAC
  is what other nodes put in their FDB, so the agent should pass a stable one
  (:func:`vtep_mac_for`) and publish it with the node's VTEP address.
- FDB ``replace`` rewrites the first remote of a MAC; any further remotes of it (which only
  ``bridge fdb append`` by someone else can make) are deleted, or a frame would be flooded to
  several nodes.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address

from tortie.dataplane.errors import DataplaneError
from tortie.dataplane.netlink import Link, Netlink, NetlinkError, VXLANAttrs
from tortie.dataplane.tunnel import TunnelAddr, ensure_tunnel_address
from tortie.model.naming import VXLAN_DEVICE

log = logging.getLogger(__name__)

VXLAN_VNI = 4096
VXLAN_PORT = 4789
VXLAN_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class VXLANError(DataplaneError):
    """The node cannot be set up (device name taken, uplink missing) or some entries failed.

    ``changes`` lists what was done before the failure (the kernel keeps it).
    """

    def __init__(
        self,
        message: str,
        changes: list[str] | None = None,
        *,
        errno: int | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message, errno=errno, retryable=retryable)
        self.changes = changes or []


def normalise_mac(mac: str) -> str:
    """``mac`` in lower-case colon form; ValueError if it is not a unicast MAC address."""
    text = mac.strip().lower().replace("-", ":")
    if not _MAC.match(text):
        raise ValueError(f"not a MAC address: {mac!r}")
    if int(text[:2], 16) & 0x01:
        raise ValueError(f"multicast MAC address cannot be a VTEP: {mac!r}")
    return text


def vtep_mac_for(node_name: str) -> str:
    """A stable, locally administered, unicast MAC for ``node_name``'s VTEP.

    Derived from a hash of the name, so every restart (and every node computing it for
    another) gets the same answer without storing it; bit 1 of the first octet set (locally
    administered: never a vendor's address), bit 0 clear (unicast).
    """
    digest = hashlib.sha256(f"tortie-vtep:{node_name}".encode()).digest()
    first = (digest[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in (first, *digest[1:6]))


@dataclass(frozen=True, slots=True)
class RemoteVTEP:
    """Another node's VXLAN endpoint: where its VTEP MAC lives and which IP answers to it."""

    node_ip: IPv4Address
    vtep_ip: IPv4Address
    vtep_mac: str

    def __post_init__(self) -> None:
        # Accept strings for convenience; compare normalised values only.
        object.__setattr__(self, "node_ip", IPv4Address(self.node_ip))
        object.__setattr__(self, "vtep_ip", IPv4Address(self.vtep_ip))
        object.__setattr__(self, "vtep_mac", normalise_mac(self.vtep_mac))


class VXLANManager:
    """The ``vxlan.calico`` device of one node and its FDB/neighbour entries for the others."""

    def __init__(
        self,
        netlink: Netlink,
        *,
        node_ip: IPv4Address | str,
        uplink: str,
        device: str = VXLAN_DEVICE,
        vni: int = VXLAN_VNI,
        port: int = VXLAN_PORT,
    ) -> None:
        self.netlink = netlink
        self.node_ip = IPv4Address(node_ip)
        self.uplink = uplink
        self.device = device
        self.vni = vni
        self.port = port
        # The last complete set given (None: never), re-applied when the device is recreated.
        self._desired: tuple[RemoteVTEP, ...] | None = None
        # VTEPs left out of the last set because another one already claimed their MAC or IP.
        self.conflicts: list[RemoteVTEP] = []

    # -- the device ---------------------------------------------------------------------------

    def _want(self, uplink: Link) -> VXLANAttrs:
        return VXLANAttrs(
            vni=self.vni, port=self.port, local=self.node_ip, link=uplink.index, learning=False
        )

    def ensure_device(
        self, mtu: int, vtep_addr: TunnelAddr = None, mac: str | None = None
    ) -> list[str]:
        """Create/repair the device (settings, MAC, MTU, up, the VTEP /32); return changes."""
        want_mac = normalise_mac(mac) if mac is not None else None
        uplink = self.netlink.get_link(self.uplink)
        if uplink is None:
            raise VXLANError(f"uplink {self.uplink} not found: cannot create {self.device}")
        want = self._want(uplink)
        changes: list[str] = []
        link = self.netlink.get_link(self.device)
        if link is not None and link.kind != "vxlan":
            raise VXLANError(
                f"{self.device} exists as {link.kind or 'a non-vxlan device'}: delete it",
                retryable=False,
            )
        if link is not None:
            have = self.netlink.get_vxlan(self.device)
            if have is None:
                # Unreadable settings must not turn into a delete/recreate on every resync.
                raise VXLANError(f"cannot read the vxlan settings of {self.device}")
            if have != want:
                # These settings are fixed at creation: the only repair is a new device.
                self.netlink.delete_link(self.device)
                changes.append(f"deleted {self.device}: {_describe(have)} != {_describe(want)}")
                link = None
        created = link is None
        if link is None:
            self.netlink.create_vxlan(
                self.device,
                vni=self.vni,
                port=self.port,
                local=self.node_ip,
                uplink=self.uplink,
                learning=False,
                mtu=mtu,
                mac=want_mac,
            )
            changes.append(f"created vxlan {self.device} ({_describe(want)}, dev {self.uplink})")
            link = self.netlink.get_link(self.device)
            if link is None:
                raise VXLANError(f"{self.device} vanished right after creation")
        if want_mac is not None and link.mac != want_mac:
            self.netlink.set_link_mac(self.device, want_mac)
            changes.append(f"{self.device} mac {link.mac} -> {want_mac}")
        if link.mtu != mtu:
            self.netlink.set_link(self.device, mtu=mtu)
            changes.append(f"{self.device} mtu {link.mtu} -> {mtu}")
        if not link.up:
            self.netlink.set_link(self.device, up=True)
            changes.append(f"{self.device} up")
        changes += ensure_tunnel_address(self.netlink, self.device, vtep_addr)
        if created and self._desired:
            # A new device has no entries: put back the last desired set straight away
            # instead of leaving the tunnel dark until the agent's next set_remote_vteps.
            try:
                changes += self._apply(self._desired)
            except VXLANError as exc:
                raise VXLANError(
                    str(exc), changes + exc.changes, errno=exc.errno, retryable=exc.retryable
                ) from exc
        return changes

    def mac(self) -> str | None:
        """The device's MAC as the kernel has it (what other nodes need), None if absent."""
        link = self.netlink.get_link(self.device)
        return link.mac if link is not None else None

    def remove(self) -> list[str]:
        """Delete the device (VXLAN turned off); its routes and entries go with it."""
        self._desired = None
        link = self.netlink.get_link(self.device)
        if link is None or link.kind != "vxlan":
            return []  # not there, or not ours
        self.netlink.delete_link(self.device)
        return [f"deleted {self.device}"]

    def counters(self) -> dict[str, int]:
        """Device packet counters for metrics ({} when there is no device)."""
        link = self.netlink.get_link(self.device)
        if link is None:
            return {}
        return {
            "tx_packets": link.tx_packets,
            "rx_packets": link.rx_packets,
            "tx_dropped": link.tx_dropped,
            "rx_dropped": link.rx_dropped,
        }

    # -- remote VTEPs -------------------------------------------------------------------------

    def set_remote_vteps(self, vteps: Iterable[RemoteVTEP]) -> list[str]:
        """The complete set of other nodes' VTEPs; add what is missing, remove stale entries.

        Our own node (``node_ip``) is skipped if present. If two VTEPs claim the same MAC or
        VTEP IP (stale data mid-update), the one with the lower node IP wins and the other is
        listed in :attr:`conflicts`. Raises :class:`VXLANError` if the device does not exist
        (the set is kept and applied when :meth:`ensure_device` creates it) or if some entries
        failed (the others are applied; ``changes`` on the error).
        """
        chosen: dict[str, RemoteVTEP] = {}
        by_ip: dict[IPv4Address, RemoteVTEP] = {}
        conflicts = []
        for vtep in sorted(set(vteps), key=lambda v: (v.node_ip, v.vtep_ip, v.vtep_mac)):
            if vtep.node_ip == self.node_ip:
                continue
            if vtep.vtep_mac in chosen or vtep.vtep_ip in by_ip:
                conflicts.append(vtep)
                continue
            chosen[vtep.vtep_mac] = by_ip[vtep.vtep_ip] = vtep
        if conflicts:
            log.warning("%s: conflicting remote VTEPs left out: %s", self.device, conflicts)
        self.conflicts = conflicts
        self._desired = tuple(chosen.values())
        if self.netlink.get_link(self.device) is None:
            raise VXLANError(f"{self.device} does not exist: call ensure_device first")
        return self._apply(self._desired)

    def _apply(self, vteps: tuple[RemoteVTEP, ...]) -> list[str]:
        dev = self.device
        changes: list[str] = []
        errors: list[str] = []

        def attempt(what: str, fn: Callable[..., None], *args: object) -> None:
            try:
                fn(dev, *args)
            except NetlinkError as exc:
                if what.startswith("removed") and exc.code == errno.ENOENT:
                    return  # already gone: the goal is reached
                errors.append(f"{what}: {exc.strerror}")
            else:
                changes.append(what)

        fdb: dict[str, set[IPv4Address]] = {}
        for entry in self.netlink.list_fdb(dev):
            fdb.setdefault(entry.mac, set()).add(entry.dst)
        neigh = {n.ip: n for n in self.netlink.list_neighbours(dev)}
        want_fdb = {v.vtep_mac: v.node_ip for v in vteps}
        want_neigh = {v.vtep_ip: v.vtep_mac for v in vteps}

        # Adds first, FDB before neighbour: by the time a neighbour entry makes the kernel
        # send to a MAC, the FDB knows where that MAC lives.
        for mac, dst in sorted(want_fdb.items()):
            have = fdb.get(mac, set())
            if have != {dst}:
                if dst not in have:
                    attempt(f"fdb {mac} dst {dst}", self.netlink.replace_fdb, mac, dst)
                for extra in sorted(have - {dst}):
                    # replace rewrote one of them; the rest would flood frames elsewhere.
                    attempt(f"removed fdb {mac} dst {extra}", self.netlink.del_fdb, mac, extra)
        for ip, mac in sorted(want_neigh.items()):
            have_n = neigh.get(ip)
            if have_n is None or not have_n.permanent or have_n.mac != mac:
                attempt(f"neighbour {ip} lladdr {mac}", self.netlink.replace_neighbour, ip, mac)
        # Then removals, neighbour before FDB (the reverse order).
        for ip, old in sorted(neigh.items()):
            if old.permanent and ip not in want_neigh:
                attempt(f"removed neighbour {ip}", self.netlink.del_neighbour, ip)
        for mac, dsts in sorted(fdb.items()):
            if mac not in want_fdb:
                for dst in sorted(dsts):
                    attempt(f"removed fdb {mac} dst {dst}", self.netlink.del_fdb, mac, dst)
        if errors:
            raise VXLANError(f"{dev}: {len(errors)} entries failed: {errors}", changes)
        return changes


def _describe(attrs: VXLANAttrs) -> str:
    learning = "learning" if attrs.learning else "nolearning"
    return f"vni {attrs.vni} port {attrs.port} local {attrs.local} link {attrs.link} {learning}"
