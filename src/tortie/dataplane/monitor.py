"""Watching the kernel: link, IPv4 address and IPv4 route changes (and tortie's nft table) as
compact facts, so the agent repairs what someone else broke at once, not at the next resync.

Problem: the agent trusts its cache of the kernel between resyncs (90 s, jittered). Yet the
kernel changes under it: an operator deletes a route, a device is deleted, and above all an
interface going down takes every IPv4 route through it away *without* an RTM_DELROUTE (the
kernel does not announce routes flushed with their device; docs/agent.md, "Why watch the
kernel at all"). So: one netlink socket subscribed to the link, IPv4 address and IPv4 route groups
of the namespace, read by one thread that reports :class:`KernelChanges`; the agent's loop
hands them to its managers, which turn them into targeted repairs
(:meth:`tortie.agent.loop.AgentLoop.on_kernel_changes`, each manager's ``on_kernel``).
The facts say what changed, never what to do: deciding is the agent's job, which owns the
state.

How, and why:
- The thread blocks in ``poll(2)`` on the socket and a wake-up pipe: no timeout, no polling,
  so an idle node pays nothing (``bench/repair.py`` measures the agent's idle CPU with the
  monitor on and off).
- Bursts are coalesced: after the first message the thread keeps reading while more arrive
  within :data:`SETTLE` seconds (at most :data:`MAX_BATCH_WAIT`), then reports one batch with
  the last state per link, per route and per address. A pod's creation (a veth pair, a move
  to the pod's namespace, addresses, a route) becomes one or two batches, not ten passes.
- Links are reported only when something the agent cares about changed (present, name,
  administratively up, carrier, MTU): the kernel also sends RTM_NEWLINK for statistics-free
  trivia (a peer's flags, a qdisc), which would otherwise wake the agent.
- The agent's own route writes echo back as notifications. The kernel stamps a notification
  with the port id of the socket whose request caused it (``nlmsg_pid``), so route changes
  from the port ids in ``echo_portids`` (the agent's route socket) are dropped here; an echo
  that gets through anyway is harmless, the route table ignores a route that already matches
  what it wants (no write, so no new event: no feedback loop).
- Losing events must never be silent: an overrun of the receive buffer (ENOBUFS) or a socket
  that had to be reopened is reported as ``lost``, and the agent then resyncs everything.
  A socket that cannot be opened is retried with backoff (0.5 s to 30 s); meanwhile the
  agent's periodic resync still runs, as it does with no monitor at all.
- Optionally (``nft_table``) a second socket follows nftables' notifications and reports
  ``firewall`` when a transaction touched that table and was not made by this process
  (``NFTA_GEN_PROC_PID``, the thread that committed it, is one of ours): a flushed or deleted
  table comes back within a pass, not 90 s later.

Invariants: the thread never calls back into the agent except through ``sink`` (which only
enqueues); it decodes only the messages' headers and the attributes named here; it lives in
the namespace given at construction (the sockets are opened there, :mod:`.netns`).

Hazards: a notification may be lost between a dump and the subscription when the socket is
(re)opened; that is why a reopen is reported as ``lost`` (a full resync). Our own nft writes
are recognised only when libnftables runs on a live thread of this process (the agent's loop);
through the ``nft`` binary every write of ours costs one extra firewall resync (no write).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Interface
from typing import Protocol

from tortie.dataplane import rtnl
from tortie.dataplane.netlink import Link
from tortie.dataplane.netns import NetnsRef, run_in_netns
from tortie.dataplane.routes import MAIN_TABLE, KernelRoute

log = logging.getLogger(__name__)

SETTLE = 0.01  # seconds of quiet that end a batch
MAX_BATCH_WAIT = 0.1  # a batch is reported at most this long after its first message
BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0
RCVBUF = 8 << 20  # a cold start echoes one notification per route written

NETLINK_NETFILTER = 12
NETLINK_ADD_MEMBERSHIP = 1
NFNLGRP_NFTABLES = 7
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWGEN = 15
NFTA_GEN_PROC_PID = 2
NFTA_TABLE = 1  # NFTA_{TABLE_NAME,CHAIN_TABLE,RULE_TABLE,SET_TABLE,...}: always attribute 1
NFPROTO = {"inet": 1, "ip": 2, "arp": 3, "netdev": 5, "bridge": 7, "ip6": 10}
_NFGENMSG = struct.Struct("=BBH")


@dataclass(frozen=True, slots=True)
class LinkChange:
    """A link appeared, changed (name, up, carrier, MTU) or went away (``present`` False:
    deleted or moved to another namespace). ``old_name``: what it was called before a rename."""

    index: int
    name: str
    present: bool
    up: bool = False  # IFF_UP: administratively up; down flushes the IPv4 routes through it
    carrier: bool = False  # IFF_LOWER_UP
    mtu: int = 0
    old_name: str | None = None


@dataclass(frozen=True, slots=True)
class RouteChange:
    """An IPv4 route of the watched table was added/replaced, or deleted (``deleted``)."""

    route: KernelRoute
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class AddrChange:
    """An IPv4 address was added to, or removed from, link ``name`` (index ``index``)."""

    index: int
    name: str
    addr: IPv4Interface
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class KernelChanges:
    """One batch of what changed, the last state of each link/route/address in it.

    ``lost``: events were lost (why: an overrun, a reopened socket); nothing in the batch can
    be trusted to be complete, so the receiver resyncs everything. ``firewall``: someone else
    changed the watched nftables table.
    """

    links: tuple[LinkChange, ...] = ()
    routes: tuple[RouteChange, ...] = ()
    addrs: tuple[AddrChange, ...] = ()
    firewall: bool = False
    lost: str | None = None

    def __bool__(self) -> bool:
        return bool(self.links or self.routes or self.addrs or self.firewall or self.lost)


Sink = Callable[[KernelChanges], None]


class KernelMonitor(Protocol):
    """Reports kernel changes to ``sink`` (from its own thread) between start and stop."""

    def start(self, sink: Sink) -> None: ...

    def stop(self) -> None: ...


class _Batch:
    """Changes gathered for one report: the last one per link, route key and address."""

    def __init__(self) -> None:
        self.links: dict[int, LinkChange] = {}
        self.routes: dict[tuple[int, object, int, int], RouteChange] = {}
        self.addrs: dict[tuple[int, IPv4Interface], AddrChange] = {}
        self.firewall = False
        self.lost: str | None = None

    def link(self, change: LinkChange) -> None:
        before = self.links.get(change.index)
        if before is not None and before.old_name and not change.old_name:
            # Renamed and then changed again in one batch: keep the name it had before.
            change = LinkChange(
                change.index,
                change.name,
                change.present,
                change.up,
                change.carrier,
                change.mtu,
                before.old_name,
            )
        self.links[change.index] = change

    def route(self, change: RouteChange) -> None:
        r = change.route
        self.routes[(r.table, r.dst, r.tos, r.metric)] = change

    def freeze(self) -> KernelChanges:
        return KernelChanges(
            links=tuple(self.links.values()),
            routes=tuple(self.routes.values()),
            addrs=tuple(self.addrs.values()),
            firewall=self.firewall,
            lost=self.lost,
        )


_LinkState = tuple[str, bool, bool, int]  # name, up, carrier, mtu


class NetlinkMonitor:
    """The kernel of namespace ``netns`` (None: ours), watched from one thread.

    ``table``: the routing table whose IPv4 routes are reported (None: all). ``routes`` and
    ``addrs`` False leave those groups out (a watcher that needs links only). ``echo_portids``:
    netlink port ids whose route changes are the caller's own writes (dropped).
    ``nft_table``: (family, name) of an nftables table to watch, or None.
    """

    def __init__(
        self,
        netns: NetnsRef = None,
        *,
        table: int | None = MAIN_TABLE,
        routes: bool = True,
        addrs: bool = True,
        echo_portids: Iterable[int] = (),
        nft_table: tuple[str, str] | None = None,
        name: str = "kernel-monitor",
    ) -> None:
        self.netns = netns
        self.table = table
        self.groups = (
            rtnl.RTMGRP_LINK
            | (rtnl.RTMGRP_IPV4_ROUTE if routes else 0)
            | (rtnl.RTMGRP_IPV4_IFADDR if addrs else 0)
        )
        self.echo_portids = frozenset(echo_portids)
        self.nft_table = nft_table
        if nft_table is not None and nft_table[0] not in NFPROTO:
            raise ValueError(f"nftables family {nft_table[0]!r}: one of {', '.join(NFPROTO)}")
        self.name = name
        self._links: dict[int, _LinkState] = {}
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._buf = bytearray(1 << 20)
        self._nft_touched = False
        # Counters (read by tests and benchmarks; written by the thread only).
        self.batches = 0
        self.reopens = 0
        self.overruns = 0

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, sink: Sink) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self.name} already started")
        self._thread = threading.Thread(target=self._run, args=(sink,), name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> NetlinkMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the thread -----------------------------------------------------------------------

    def _run(self, sink: Sink) -> None:
        delay = BACKOFF_MIN
        opened_before = False
        while not self._stopping.is_set():
            try:
                socks = self._open()
            except OSError as err:
                log.warning(
                    "%s: cannot open netlink sockets (%s); retrying in %.1f s, the periodic "
                    "resync still runs",
                    self.name,
                    err,
                    delay,
                )
                if self._sleep(delay):
                    return
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            try:
                if opened_before:
                    self.reopens += 1
                    sink(KernelChanges(lost="the kernel monitor's socket was reopened"))
                opened_before = True
                self._watch(socks, sink)
                return  # stopped
            except OSError as err:
                log.warning("%s: %s; reopening in %.1f s", self.name, err, delay)
                if self._sleep(delay):
                    return
                delay = min(delay * 2, BACKOFF_MAX)
            finally:
                for sock in socks:
                    sock.close()

    def _sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` or until stopped; True if stopped."""
        return self._stopping.wait(seconds)

    def _open(self) -> list[socket.socket]:
        def work() -> list[socket.socket]:
            socks = [_subscribed(rtnl.NETLINK_ROUTE, self.groups, None)]
            if self.nft_table is not None:
                try:
                    socks.append(_subscribed(NETLINK_NETFILTER, 0, NFNLGRP_NFTABLES))
                except OSError:
                    socks[0].close()
                    raise
            return socks

        socks = run_in_netns(self.netns, work)
        try:
            self._seed()
        except OSError:
            for sock in socks:
                sock.close()
            raise
        return socks

    def _seed(self) -> None:
        """The links as they are now (after subscribing: nothing between is missed)."""
        dumper = rtnl.RtnlSocket(self.netns)
        try:
            links = dumper.dump_links()
        finally:
            dumper.close()
        self._links = {link.index: _state(link) for link in links}

    def _watch(self, socks: list[socket.socket], sink: Sink) -> None:
        poller = select.poll()
        for sock in socks:
            poller.register(sock, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        route_sock = socks[0]
        while True:
            ready = {fd for fd, _ in poller.poll()}  # blocks: no timeout, no idle cost
            if self._wake_r in ready or self._stopping.is_set():
                return
            batch = _Batch()
            first = time.monotonic()
            while True:
                for sock in socks:
                    self._drain(sock, sock is route_sock, batch)
                left = min(SETTLE, first + MAX_BATCH_WAIT - time.monotonic())
                if left <= 0:
                    break
                ready = {fd for fd, _ in poller.poll(left * 1000)}
                if not ready or self._wake_r in ready:
                    break
            if batch.lost is not None:
                self._seed()  # our link table may have missed changes too
            changes = batch.freeze()
            if changes:
                self.batches += 1
                sink(changes)

    def _drain(self, sock: socket.socket, is_route: bool, batch: _Batch) -> None:
        while True:
            try:
                n = sock.recv_into(self._buf, 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            except OSError as err:
                if err.errno != errno.ENOBUFS:
                    raise
                self.overruns += 1
                batch.lost = "the kernel monitor's receive buffer overran (events lost)"
                continue
            view = memoryview(self._buf)[:n]
            if is_route:
                self._route_messages(view, n, batch)
            else:
                self._nft_messages(view, n, batch)

    # -- decoding ---------------------------------------------------------------------------

    def _route_messages(self, view: memoryview, n: int, batch: _Batch) -> None:
        for mtype, pid, off, length in _messages(view, n):
            if mtype in (rtnl.RTM_NEWLINK, rtnl.RTM_DELLINK):
                self._link_message(mtype, view, off, length, batch)
            elif mtype in (rtnl.RTM_NEWROUTE, rtnl.RTM_DELROUTE):
                if pid in self.echo_portids:
                    continue  # our own write, echoed
                route = rtnl.decode_route(view, off, length)
                if route is None or (self.table is not None and route.table != self.table):
                    continue
                batch.route(RouteChange(route, deleted=mtype == rtnl.RTM_DELROUTE))
            elif mtype in (rtnl.RTM_NEWADDR, rtnl.RTM_DELADDR):
                found = rtnl.decode_addr(view, off, length)
                if found is None:
                    continue
                index, addr = found
                known = self._links.get(index)
                name = known[0] if known is not None else ""
                deleted = mtype == rtnl.RTM_DELADDR
                batch.addrs[(index, addr)] = AddrChange(index, name, addr, deleted)

    def _link_message(
        self, mtype: int, view: memoryview, off: int, length: int, batch: _Batch
    ) -> None:
        link, _flags = rtnl.decode_link(view, off, length)
        before = self._links.get(link.index)
        if mtype == rtnl.RTM_DELLINK:
            self._links.pop(link.index, None)
            name = link.name or (before[0] if before else "")
            batch.link(LinkChange(link.index, name, present=False))
            return
        now = _state(link)
        if before == now:
            return  # nothing the agent acts on changed
        self._links[link.index] = now
        renamed = before[0] if before is not None and before[0] != link.name else None
        batch.link(
            LinkChange(
                link.index,
                link.name,
                present=True,
                up=link.up,
                carrier=link.carrier,
                mtu=link.mtu,
                old_name=renamed,
            )
        )

    def _nft_messages(self, view: memoryview, n: int, batch: _Batch) -> None:
        assert self.nft_table is not None
        family = NFPROTO[self.nft_table[0]]
        table = self.nft_table[1].encode()
        for mtype, _pid, off, length in _messages(view, n):
            if mtype >> 8 != NFNL_SUBSYS_NFTABLES or length < _NFGENMSG.size:
                continue
            msg = mtype & 0xFF
            attrs = {
                kind: bytes(view[voff : voff + vlen])
                for kind, voff, vlen in rtnl._attrs(view, off + _NFGENMSG.size, off + length)
                if kind in (NFTA_TABLE, NFTA_GEN_PROC_PID)
            }
            if msg == NFT_MSG_NEWGEN:
                # The end of a transaction: whose was it?
                raw = attrs.get(NFTA_GEN_PROC_PID, b"")
                tid = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else 0
                if self._nft_touched and not _ours(tid):
                    batch.firewall = True
                self._nft_touched = False
            elif view[off] == family and attrs.get(NFTA_TABLE, b"").rstrip(b"\0") == table:
                self._nft_touched = True


def _state(link: Link) -> _LinkState:
    return (link.name, link.up, link.carrier, link.mtu)


def _ours(tid: int) -> bool:
    """Whether ``tid`` (a thread id, as nftables reports the committer) is a live thread of
    this process."""
    if tid <= 0:
        return False
    return tid == os.getpid() or os.path.exists(f"/proc/self/task/{tid}")


def _subscribed(protocol: int, groups: int, group: int | None) -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, rtnl.SO_RCVBUFFORCE, RCVBUF)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.bind((0, groups))
        if group is not None:
            sock.setsockopt(rtnl.SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
    except OSError:
        sock.close()
        raise
    return sock


_HDR = struct.Struct("=IHHII")


def _messages(view: memoryview, n: int) -> Iterable[tuple[int, int, int, int]]:
    """(type, sender port id, body offset, body length) of each message in ``view[:n]``."""
    off = 0
    while off + _HDR.size <= n:
        length, kind, _flags, _seq, pid = _HDR.unpack_from(view, off)
        if length < _HDR.size or off + length > n:
            return
        yield kind, pid, off + _HDR.size, length - _HDR.size
        off += (length + 3) & ~3
