"""The ``bpf`` IPIP backend: tc-BPF encapsulation behind a placeholder tunl0 (no ipip module).

Problem: these kernels have no ipip module, so no tunl0. We keep Calico's routes unchanged
(``<block> via <nodeIP> dev tunl0 onlink``) and make ``tunl0`` one end of a veth pair with ARP
off; ``bpf/ipip.c`` encapsulates on tunl0's tc egress and decapsulates on the uplink's tc
ingress (only from known node IPs: the allowlist map). See that file for the packet path.

Layout (one node, one pin directory, on a bpffs of its own if need be)::

    <pin_dir>/ipip-<sha256(ipip.o)[:16]>/ipip_encap, ipip_decap       programs
    <pin_dir>/ipip-<...>/maps/ipip_config, ipip_allow, ipip_stats       maps
    <pin_dir>/tcx-ipip_encap, tcx-ipip_decap                            tcx links (6.6+)

Naming the directory by the object's hash makes "already loaded" a path check, and an upgrade
(a new object) loads next to the old one, copies the allowlist over, swaps the programs
atomically (a tcx link's program, or a tc filter replaced in place), then unpins the old
version.

How the programs are attached (``attach``): ``tcx`` links (:mod:`tortie.dataplane.tcx`, kernel
6.6+: no classifier layer per packet, the link pinned next to the programs) or ``tc`` filters
on a clsact qdisc (:mod:`tortie.dataplane.tc`, any kernel); ``auto`` takes tcx where the
kernel has it, as Calico's ``bpfAttachType`` does. Switching either way attaches the new way
first and then removes the old, so no packet meets an empty hook. ``tc filter show`` does not
list tcx links on Debian 12: ``tortie bpf show`` lists both kinds.

Two builds of ``bpf/ipip.c``, tried in order: ``ipip.o`` reads the outer destination from the
skb's route (kfuncs, kernel >= 6.2: one FIB lookup per packet instead of two) and
``ipip-compat.o`` looks it up (any kernel with bpf_redirect_neigh, 5.10+). Whichever is already
pinned wins, so a node never flips between them at a resync; a kernel that refuses ``ipip.o``
costs one failed load per (re)load, logged with the verifier's reason.

Invariants: :meth:`BpfIPIP.ensure_device` on a node that is already set up changes nothing and
reports nothing (no reload, no re-attach, no map write: restart safety); the config and
allowlist maps are written before the programs are attached, so an attached program never
runs unconfigured; the maps are reconciled to the desired state (extra keys deleted).

Hazards: the counters (ipip_stats) restart from zero on an upgrade. A switch to ``tc`` on a
device without a clsact qdisc makes the kernel graft one, and the device drops what it sends
meanwhile (on the uplink: any of the node's packets, typically none or one; see
:mod:`tortie.dataplane.tc` and docs/bpf-attach.md). That loss is the kernel's, reported as
"added the clsact qdisc"; the hooks are never empty, and switching to tcx, or back to tc once
the qdisc exists, loses nothing. The placeholder's peer (``tunl0p``) must never carry
traffic: the encap program drops what it cannot encapsulate and the peer has forwarding off.
Loading needs ``bpftool`` (Debian's bpftool package) and a built object (``make -C bpf``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import struct
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Literal

from tortie.dataplane import bpffs, tc, tcx
from tortie.dataplane.bpfsys import PinnedMap, prog_id
from tortie.dataplane.errors import kernel_call
from tortie.dataplane.ipip import IPIPError
from tortie.dataplane.netlink import Link, Netlink
from tortie.dataplane.netns import NetnsRef, ensure_sysctls
from tortie.dataplane.tunnel import TunnelAddr, ensure_tunnel_address
from tortie.model.naming import BPF_PROGRAM_DIR_PREFIX, TCX_LINK_PREFIX, TUNNEL_DEVICE

log = logging.getLogger(__name__)

PEER_SUFFIX = "p"
# Index order of the ipip_stats map: keep in sync with the enum in bpf/ipip.c.
COUNTERS = (
    "encap_ok",
    "encap_drop_not_ipv4",
    "encap_drop_no_route",
    "encap_drop_error",
    "decap_ok",
    "decap_drop_unknown_src",
    "decap_drop_malformed",
    "decap_pass_not_ours",
    "decap_drop_error",
    "encap_via_route",  # of encap_ok: next hop's neighbour unresolved, kernel routed the outer
    "encap_gw_by_lookup",  # outer destination by FIB lookup (every packet with ipip-compat.o)
)
_CONFIG = struct.Struct("=4sI6sH")  # struct ipip_config
_KEY0 = struct.pack("=I", 0)
_ALLOWED = struct.pack("=I", 1)
OBJECT_ENV = "TORTIE_BPF_OBJECT"
OBJECTS = ("ipip.o", "ipip-compat.o")  # preference order, as bpf/Makefile builds them
AttachMode = Literal["auto", "tcx", "tc"]
ATTACH_MODES: tuple[AttachMode, ...] = ("auto", "tcx", "tc")


def default_bpf_objects() -> tuple[Path, ...]:
    """``$TORTIE_BPF_OBJECT`` alone, else the checkout's ``bpf/build/ipip.o`` and its fallback
    ``ipip-compat.o`` (``make -C bpf``)."""
    env = os.environ.get(OBJECT_ENV)
    if env:
        return (Path(env),)
    build = Path(__file__).resolve().parents[3] / "bpf" / "build"
    return tuple(build / name for name in OBJECTS)


@dataclass(frozen=True, slots=True)
class Pins:
    """Where one version of the programs and maps is pinned."""

    dir: Path

    @property
    def encap(self) -> Path:
        return self.dir / "ipip_encap"

    @property
    def decap(self) -> Path:
        return self.dir / "ipip_decap"

    def map(self, name: str) -> Path:
        return self.dir / "maps" / name

    def complete(self) -> bool:
        paths = [self.encap, self.decap] + [
            self.map(n) for n in ("ipip_config", "ipip_allow", "ipip_stats")
        ]
        return all(p.exists() for p in paths)


def _unpin(path: Path) -> None:
    """Remove a pin directory tree (unlinking a pin drops the reference, not the object)."""
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            os.unlink(os.path.join(root, name))
        for name in dirs:
            os.rmdir(os.path.join(root, name))
    os.rmdir(path)


class BpfIPIP:
    name = "bpf"

    def __init__(
        self,
        netlink: Netlink,
        *,
        node_ip: IPv4Address,
        uplink: str,
        pin_dir: Path,
        netns: NetnsRef = None,
        bpf_object: Path | None = None,  # just this one; default: default_bpf_objects()
        bpf_objects: Sequence[Path] | None = None,  # these, in preference order
        device: str = TUNNEL_DEVICE,
        peer: str | None = None,
        bpftool: str = "bpftool",
        attach: AttachMode = "auto",
    ) -> None:
        self.netlink = netlink
        self.node_ip = node_ip
        self.uplink = uplink
        self.pin_dir = Path(pin_dir)
        self.netns = netns
        if bpf_object is not None and bpf_objects is not None:
            raise ValueError("give bpf_object or bpf_objects, not both")
        if bpf_objects is not None:
            self.bpf_objects = tuple(Path(p) for p in bpf_objects)
        elif bpf_object is not None:
            self.bpf_objects = (Path(bpf_object),)
        else:
            self.bpf_objects = default_bpf_objects()
        self.device = device
        self.peer = peer or device + PEER_SUFFIX
        self.bpftool = bpftool
        if attach not in ATTACH_MODES:
            raise ValueError(f"attach must be one of {', '.join(ATTACH_MODES)}, not {attach!r}")
        self.attach = attach
        self._attach_how: Literal["tcx", "tc"] | None = None  # attach, with auto resolved
        self._swept = False  # the first pass removed the other kind's attachment of ours
        self._known: frozenset[IPv4Address] | None = None
        self._digests: dict[Path, tuple[tuple[int, int, int], str]] = {}
        self._pins: Pins | None = None

    # -- the placeholder device -------------------------------------------------------------

    def _ensure_links(self, mtu: int) -> list[str]:
        changes = []
        link = self.netlink.get_link(self.device)
        if link is None:
            self.netlink.create_veth(self.device, self.peer, mtu=mtu)
            changes.append(f"created placeholder {self.device} (veth, peer {self.peer})")
        elif link.kind != "veth":
            raise IPIPError(
                f"{self.device} exists as {link.kind or 'a non-veth device'}: "
                "not a bpf placeholder (use the kernel backend)",
                retryable=False,
            )
        for name in (self.device, self.peer):
            current = self.netlink.get_link(name)
            if current is None:
                raise IPIPError(f"{self.device}'s peer {name} is missing")
            changes += self._configure(current, mtu)
        changes += ensure_sysctls(
            {
                # fib lookups from tunl0 and forwarding decapsulated packets need it on.
                f"net/ipv4/conf/{self.device}/forwarding": "1",
                # The peer must never forward anything that leaks through.
                f"net/ipv4/conf/{self.peer}/forwarding": "0",
                # No IPv6 chatter (ND, MLD) on either end: the encap program would drop it.
                f"net/ipv6/conf/{self.device}/disable_ipv6": "1",
                f"net/ipv6/conf/{self.peer}/disable_ipv6": "1",
            },
            self.netns,
            missing_ok=True,
        )
        return changes

    def _configure(self, link: Link, mtu: int) -> list[str]:
        changes = []
        if link.mtu != mtu:
            self.netlink.set_link(link.name, mtu=mtu)
            changes.append(f"{link.name} mtu {link.mtu} -> {mtu}")
        if not link.noarp:
            self.netlink.set_link(link.name, arp=False)
            changes.append(f"{link.name} arp off")
        if not link.up:
            self.netlink.set_link(link.name, up=True)
            changes.append(f"{link.name} up")
        return changes

    # -- programs and maps ------------------------------------------------------------------

    def _digest(self, obj: Path) -> str:
        """The object's content hash, re-read only when the file changed (every pass asks)."""
        st = obj.stat()
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._digests.get(obj)
        if cached is None or cached[0] != stamp:
            cached = (stamp, hashlib.sha256(obj.read_bytes()).hexdigest()[:16])
            self._digests[obj] = cached
        return cached[1]

    def _candidates(self) -> list[tuple[Path, Pins]]:
        """The objects that exist, in preference order, each with where it would be pinned."""
        found = []
        for obj in self.bpf_objects:
            try:
                digest = self._digest(obj)
            except FileNotFoundError:
                continue
            found.append((obj, Pins(self.pin_dir / f"{BPF_PROGRAM_DIR_PREFIX}{digest}")))
        if not found:
            raise IPIPError(
                f"BPF object {self.bpf_objects[0]} missing: run `make -C bpf`", retryable=False
            )
        return found

    @staticmethod
    def _loaded(candidates: list[tuple[Path, Pins]]) -> Pins | None:
        return next((pins for _, pins in candidates if pins.complete()), None)

    def _current_pins(self) -> Pins:
        """The loaded version's pins (the first candidate's if none is loaded)."""
        candidates = self._candidates()
        return self._loaded(candidates) or candidates[0][1]

    def _ensure_loaded(self) -> tuple[Pins, list[str]]:
        bpffs.ensure_bpffs(self.pin_dir)
        candidates = self._candidates()
        loaded = self._loaded(candidates)
        if loaded is not None:
            return loaded, []
        if shutil.which(self.bpftool) is None:
            raise IPIPError(f"{self.bpftool} not found (Debian package bpftool)", retryable=False)
        refused: list[str] = []
        for obj, pins in candidates:
            if pins.dir.exists():
                _unpin(pins.dir)  # a load that died half-way
            cmd = [
                self.bpftool, "prog", "loadall", str(obj), str(pins.dir),
                "type", "classifier", "pinmaps", str(pins.dir / "maps"),
            ]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode == 0 and pins.complete():
                changes = [f"loaded {obj.name} into {pins.dir}"]
                if refused:
                    changes.append(f"not loaded: {'; '.join(refused)}")
                    log.warning("bpf ipip fallback to %s: %s", obj.name, "; ".join(refused))
                return pins, changes + self._inherit_allowlist(pins)
            if pins.dir.exists():
                _unpin(pins.dir)
            reason = proc.stderr.strip()[-2000:] or "no output"
            refused.append(f"{' '.join(cmd)} failed: {reason}")
        raise IPIPError("\n".join(refused), retryable=False)  # the verifier's answer stands

    def _older_versions(self, current: Pins) -> list[Pins]:
        return [
            Pins(p)
            for p in sorted(self.pin_dir.glob(f"{BPF_PROGRAM_DIR_PREFIX}*"))
            if p.is_dir() and p != current.dir
        ]

    def _inherit_allowlist(self, pins: Pins) -> list[str]:
        """After an upgrade, start from the previous version's allowlist (until told)."""
        if self._known is not None:
            return []
        for old in self._older_versions(pins):
            path = old.map("ipip_allow")
            if path.exists():
                with PinnedMap(path) as src, PinnedMap(pins.map("ipip_allow")) as dst:
                    keys = list(src)
                    for key in keys:
                        dst.update(key, _ALLOWED)
                return [f"copied {len(keys)} allowlist entries from {old.dir.name}"]
        return []

    def _ensure_config(self, pins: Pins) -> list[str]:
        link = self.netlink.get_link(self.device)
        if link is None or link.mac is None:
            raise IPIPError(f"{self.device} vanished")
        mac = bytes.fromhex(link.mac.replace(":", ""))
        value = _CONFIG.pack(self.node_ip.packed, link.index, mac, 0)
        with PinnedMap(pins.map("ipip_config")) as config:
            if config.lookup(_KEY0) == value:
                return []
            config.update(_KEY0, value)
        return [f"config: node {self.node_ip}, {self.device} ifindex {link.index}"]

    def _sync_allowlist(self, pins: Pins) -> list[str]:
        if self._known is None:
            return []
        want = {ip.packed for ip in self._known}
        with PinnedMap(pins.map("ipip_allow")) as allow:
            have = set(allow)
            for key in have - want:
                allow.delete(key)
            for key in want - have:
                allow.update(key, _ALLOWED)
        added, removed = len(want - have), len(have - want)
        return [f"allowlist +{added} -{removed}"] if added or removed else []

    # -- IPIPBackend -------------------------------------------------------------------------

    def ensure_device(self, mtu: int, tunnel_addr: TunnelAddr = None) -> list[str]:
        """Placeholder tunl0, address, programs, maps and tc filters; returns what changed.

        On agent start call :meth:`set_known_nodes` first: if the programs have to be (re)loaded
        (pins lost, new object), they are then attached with the full allowlist already in
        place and no node's traffic is dropped meanwhile.
        """
        with kernel_call(f"IPIP (bpf) on {self.device}", IPIPError):
            changes = self._ensure_links(mtu)
            changes += ensure_tunnel_address(self.netlink, self.device, tunnel_addr)
            pins, loaded = self._ensure_loaded()
            changes += loaded
            # Maps first, programs second: an attached program never runs unconfigured.
            changes += self._ensure_config(pins)
            changes += self._sync_allowlist(pins)
            for dev, direction, prog in self._hooks(pins):
                changes += self._attach_program(dev, direction, prog)
            self._swept = True
            for old in self._older_versions(pins):
                _unpin(old.dir)
                changes.append(f"unpinned {old.dir.name}")
        self._pins = pins
        if changes:
            log.info("bpf ipip on %s: %s", self.device, "; ".join(changes))
        return changes

    # -- attaching ---------------------------------------------------------------------------

    def _hooks(self, pins: Pins) -> list[tuple[str, tc.Direction, Path]]:
        return [(self.device, "egress", pins.encap), (self.uplink, "ingress", pins.decap)]

    def attach_how(self) -> Literal["tcx", "tc"]:
        """How programs are attached here: ``attach`` with ``auto`` resolved (once)."""
        if self._attach_how is None:
            has_tcx = tcx.supported(self.netns)
            if self.attach == "tcx" and not has_tcx:
                raise IPIPError(
                    "bpf attach type tcx: this kernel has no tcx (Linux 6.6+); "
                    "use --bpf-attach-type tc or auto",
                    retryable=False,
                )
            self._attach_how = (
                "tcx" if self.attach == "tcx" or (self.attach == "auto" and has_tcx) else "tc"
            )
        return self._attach_how

    def link_path(self, prog: str) -> Path:
        """Where the tcx link running program ``prog`` is pinned."""
        return self.pin_dir / f"{TCX_LINK_PREFIX}{prog}"

    def _attach_program(self, dev: str, direction: tc.Direction, prog: Path) -> list[str]:
        """Make ``prog`` run on ``dev``'s ``direction`` hook the configured way, and remove
        ours of the other way (the new attachment first: no moment without the program)."""
        changes: list[str] = []
        link_path = self.link_path(prog.name)
        if self.attach_how() == "tcx":
            link = self.netlink.get_link(dev)
            if link is None:
                raise IPIPError(f"cannot attach {prog.name}: {dev} does not exist")
            try:
                change = tcx.ensure_link(
                    link_path, prog, link.index, direction, self.netns, dev=dev
                )
            except tcx.TcxError as exc:
                raise IPIPError(str(exc), errno=exc.errno, retryable=exc.retryable) from exc
            if change is not None:
                changes.append(change)
            # A tc filter of ours from before (an agent that attached with tc): checked on the
            # first pass and whenever the link was (re)made, not on every resync (a process).
            if (change is not None or not self._swept) and tc.remove_bpf_filter(
                dev, direction, self.netns
            ):
                changes.append(f"removed tc filter from {dev} {direction} (now a tcx link)")
            return changes
        changes += tc.ensure_bpf_filter(dev, direction, str(prog), prog_id(prog), self.netns)
        if tcx.remove_link(link_path):
            changes.append(f"detached the tcx link from {dev} {direction} (now a tc filter)")
        return changes

    def set_known_nodes(self, node_ips: Iterable[IPv4Address]) -> list[str]:
        """Reconcile the decap allowlist map to exactly ``node_ips`` (about 4 us per change)."""
        self._known = frozenset(node_ips)
        if self._pins is None:
            # Not set up yet: ensure_device writes the set before attaching anything.
            return []
        with kernel_call(f"IPIP (bpf) allowlist of {self.device}", IPIPError):
            return self._sync_allowlist(self._pins)

    def known_nodes(self) -> set[IPv4Address]:
        """What the kernel's allowlist holds now."""
        with kernel_call(f"IPIP (bpf) allowlist of {self.device}", IPIPError):
            pins = self._pins or self._current_pins()
            with PinnedMap(pins.map("ipip_allow")) as allow:
                return {IPv4Address(key) for key in allow}

    def counters(self) -> dict[str, int]:
        with kernel_call(f"IPIP (bpf) counters of {self.device}", IPIPError):
            pins = self._pins or self._current_pins()
            if not pins.complete():
                return {}
            with PinnedMap(pins.map("ipip_stats")) as stats:
                return {
                    name: stats.sum_percpu_u64(struct.pack("=I", index))
                    for index, name in enumerate(COUNTERS)
                }

    def remove(self) -> list[str]:
        with kernel_call(f"IPIP (bpf) removing {self.device}", IPIPError):
            return self._remove()

    def _remove(self) -> list[str]:
        changes = []
        if self.pin_dir.exists() and bpffs.is_bpffs(self.pin_dir):
            for link_path in sorted(self.pin_dir.glob(f"{TCX_LINK_PREFIX}*")):
                if tcx.remove_link(link_path):
                    changes.append(f"detached tcx link {link_path.name}")
        if self.netlink.get_link(self.uplink) is not None and tc.remove_bpf_filter(
            self.uplink, "ingress", self.netns
        ):
            changes.append(f"detached decap from {self.uplink}")
        if self.netlink.get_link(self.device) is not None:
            self.netlink.delete_link(self.device)  # takes the peer and the egress filter along
            changes.append(f"deleted {self.device}")
        if self.pin_dir.exists() and bpffs.is_bpffs(self.pin_dir):
            for old in self.pin_dir.glob(f"{BPF_PROGRAM_DIR_PREFIX}*"):
                _unpin(old)
                changes.append(f"unpinned {old.name}")
        self._pins = None
        return changes
