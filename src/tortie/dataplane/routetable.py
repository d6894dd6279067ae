"""RouteTable: converge one kernel routing table to a desired set of routes (Felix's design).

Problem: the agent knows which routes it wants (local blocks blackholed, remote blocks through
tunl0 or the uplink, workload /32s). The kernel table also holds routes that are not ours
(connected routes, an operator's, the CNI plugin's fresh /32s), and after an agent restart we
have no memory of what we wrote before. We must converge with the fewest writes, never touch
what is not ours, and survive partial failure.

How:
- Desired state is recorded in memory (:meth:`RouteTable.set_routes`, :meth:`set_route`,
  :meth:`del_route`), which never touches the kernel; each change marks its destination dirty.
- :meth:`apply` does the kernel work. The first apply (and any after :meth:`queue_resync`)
  dumps the table and marks every desired or owned destination dirty (mark-and-sweep); later
  applies only visit dirty destinations against a cache of what the kernel holds. All writes of
  one apply go out as one batch.

Ownership (how a restarted agent recognises its routes, with no memory):
- a route carrying our protocol number (``proto``, default 80) is ours;
- a route through an interface whose name starts with an owned prefix (default ``cali``) is
  ours too: the CNI plugin adds ``<pod>/32 dev caliX scope link`` before the agent hears of the
  pod, so such a route that is not desired is only removed once its interface has been known
  to us for ``cni_grace_period`` seconds (Felix's grace period);
- everything else is foreign and never written: a desired destination held by a foreign route
  is reported as a conflict and left alone.

Invariants: every route we write carries our protocol; a resync of an unchanged table writes
nothing; a failed write is recorded (:attr:`RouteTable.failures`) and retried on the next apply
without holding back the others; a route whose device does not exist (yet), or is down, is
deferred, not failed, and retried when links change; deletes carry our protocol (or the owned
route's exact device) so a route replaced by someone else since the dump is not deleted.

Hazards: between resyncs the cache is trusted. Something else changing the table (or a device
vanishing or going down, which takes its routes with it, silently for IPv4) is only noticed on
the next resync unless told: the agent feeds the kernel monitor's facts
(:mod:`tortie.dataplane.monitor`) to :meth:`on_interface_update` and :meth:`on_kernel_route`,
and calls :meth:`queue_resync` periodically and whenever events were lost.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Network

from tortie.dataplane.netlink import DEVICE_NOT_READY, Link, Netlink, NetlinkError
from tortie.dataplane.routes import (
    DEFAULT_PROTO,
    MAIN_TABLE,
    KernelRoute,
    RouteOp,
    RouteSpec,
    RouteType,
    Scope,
)
from tortie.model.naming import WORKLOAD_PREFIX

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RouteFailure:
    """Why a destination is not converged: the kernel's errno (0 for a conflict) and text."""

    dst: IPv4Network
    code: int
    message: str
    attempts: int


@dataclass(slots=True)
class ApplyResult:
    """What one :meth:`RouteTable.apply` did and what is still pending."""

    resynced: bool = False
    writes: int = 0
    added: int = 0
    replaced: int = 0
    deleted: int = 0
    failed: dict[IPv4Network, RouteFailure] = field(default_factory=dict)
    deferred: set[IPv4Network] = field(default_factory=set)  # waiting for a device
    in_grace: set[IPv4Network] = field(default_factory=set)  # CNI routes kept for now
    retry_after: float | None = None  # seconds until the earliest grace period ends

    @property
    def converged(self) -> bool:
        return not (self.failed or self.deferred or self.in_grace)


class RouteTable:
    """Desired routes of one kernel table, reconciled by :meth:`apply`.

    ``owned_iface_prefixes``: interface-name prefixes whose routes count as ours whatever their
    protocol (``()`` to own only our protocol). ``clock``: seconds, monotonic (tests inject one).
    """

    def __init__(
        self,
        netlink: Netlink,
        *,
        table: int = MAIN_TABLE,
        proto: int = DEFAULT_PROTO,
        owned_iface_prefixes: Iterable[str] = (WORKLOAD_PREFIX,),
        cni_grace_period: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < proto < 256:
            raise ValueError(f"route protocol must be 1..255, not {proto}")
        self.netlink = netlink
        self.table = table
        self.proto = proto
        self.owned_iface_prefixes = tuple(owned_iface_prefixes)
        self.cni_grace_period = cni_grace_period
        self._clock = clock
        self._desired: dict[IPv4Network, RouteSpec] = {}
        self._dirty: set[IPv4Network] = set()
        # The kernel's tos-0/metric-0 route per destination, as last dumped or written.
        self._kernel: dict[IPv4Network, KernelRoute] = {}
        self._links: dict[str, Link] = {}
        self._names: dict[int, str] = {}
        self._first_seen: dict[str, float] = {}
        self._failures: dict[IPv4Network, RouteFailure] = {}
        self._resync = True
        self._links_stale = True

    # -- desired state (no kernel access) ---------------------------------------------------

    def _normalise(self, spec: RouteSpec) -> RouteSpec:
        if spec.proto is None:
            return replace(spec, proto=self.proto)
        if spec.proto != self.proto:
            # A route written with another protocol would be invisible to our sweep after a
            # restart: a leak. Refuse it here rather than leak it there.
            raise ValueError(f"{spec}: protocol {spec.proto} is not this table's ({self.proto})")
        return spec

    def set_routes(self, routes: Iterable[RouteSpec]) -> None:
        """Replace the whole desired set; only destinations that changed become dirty."""
        new: dict[IPv4Network, RouteSpec] = {}
        for given in routes:
            spec = self._normalise(given)
            if spec.dst in new and new[spec.dst] != spec:
                raise ValueError(f"two routes for {spec.dst}: {new[spec.dst]} and {spec}")
            new[spec.dst] = spec
        old = self._desired
        for dst in old.keys() - new.keys():
            self._dirty.add(dst)
        for dst, spec in new.items():
            if old.get(dst) != spec:
                self._dirty.add(dst)
        self._desired = new

    def set_route(self, spec: RouteSpec) -> None:
        spec = self._normalise(spec)
        if self._desired.get(spec.dst) != spec:
            self._desired[spec.dst] = spec
            self._dirty.add(spec.dst)

    def del_route(self, dst: IPv4Network | str) -> None:
        dst = dst if isinstance(dst, IPv4Network) else IPv4Network(dst)
        if self._desired.pop(dst, None) is not None:
            self._dirty.add(dst)

    @property
    def desired(self) -> dict[IPv4Network, RouteSpec]:
        return dict(self._desired)

    @property
    def dirty(self) -> frozenset[IPv4Network]:
        return frozenset(self._dirty)

    @property
    def failures(self) -> dict[IPv4Network, RouteFailure]:
        return dict(self._failures)

    def queue_resync(self) -> None:
        """Make the next :meth:`apply` re-read the kernel (periodic drift check, after errors)."""
        self._resync = True

    def on_interface_update(self, name: str, *, gone: bool = True) -> bool:
        """An interface appeared, changed or vanished: re-check the routes through it.

        ``gone`` (the default, and what a caller that does not know must say): the device
        vanished or went down, which takes its kernel routes with it, and for IPv4 the kernel
        says nothing about those routes (docs/agent.md), so cached routes through its old
        index are forgotten and desired routes through it become dirty again.

        ``gone=False``: the device is there and up (again, or with a new MTU or carrier). Its
        routes may have been flushed by a flap that ended before anyone looked, or be intact;
        rather than guess (forgetting intact routes would make our "add" meet EEXIST), the
        next apply re-reads the table when routes of ours run through it. Workload (owned
        prefix) interfaces carry one route each, written with "replace": forgetting is cheap.

        Returns whether any route needs another look (False: none of ours involves ``name``).
        """
        self._links_stale = True
        if not gone and not name.startswith(self.owned_iface_prefixes or ("\0",)):
            old = self._links.get(name)
            through = any(spec.device == name for spec in self._desired.values()) or (
                old is not None and any(r.oif == old.index for r in self._kernel.values())
            )
            if through:
                self._resync = True
            return through
        touched = False
        old = self._links.get(name)
        if old is not None:
            for dst, route in list(self._kernel.items()):
                if route.oif == old.index:
                    del self._kernel[dst]
                    if dst in self._desired or self._owned(route):
                        self._dirty.add(dst)
                        touched = True
        for dst, spec in self._desired.items():
            if spec.device == name:
                self._dirty.add(dst)
                touched = True
        return touched

    def on_kernel_route(self, route: KernelRoute, *, deleted: bool = False) -> bool:
        """A route notification (someone else's change, or one of ours echoing back).

        Updates the cache of what the kernel holds and returns whether the destination needs
        a write: a desired route deleted or replaced by something else, an owned route that
        is not desired. A route that already matches what we want (an echo of our own write)
        and anything foreign that we do not want either return False, so echoes never cause
        writes, and writes never cause echoes that cause writes.
        """
        if route.table != self.table:
            return False
        if route.tos != 0 or route.metric != 0:
            # Not a key we write; one of ours there is a stray the next resync deletes.
            if route.proto == self.proto and not deleted:
                self._resync = True
                return True
            return False
        dst = route.dst
        have = self._kernel.get(dst)
        if deleted:
            if have is None:
                return False
            del self._kernel[dst]
            if dst in self._desired:
                self._dirty.add(dst)
                return True
            return False
        self._kernel[dst] = route
        want = self._desired.get(dst)
        if want is None:
            if self._owned(route):
                self._dirty.add(dst)
                return True
            return False
        link = self._links.get(want.device) if want.device is not None else None
        if want.device is None or link is not None:
            target = self._target(want, link.index if link is not None else None)
            if self._same(route, target):
                return False
        self._dirty.add(dst)
        return True

    # -- kernel work ------------------------------------------------------------------------

    def apply(self) -> ApplyResult:
        """Make the kernel table match the desired routes as far as possible now."""
        result = ApplyResult()
        now = self._clock()
        if self._resync:
            self._do_resync(now, result)
            result.resynced = True
        elif self._links_stale and self._dirty:
            self._refresh_links(now)
        if not self._dirty:
            return result

        ops: list[RouteOp] = []
        op_dsts: list[IPv4Network] = []
        for dst in sorted(self._dirty):
            op = self._plan(dst, now, result)
            if op is not None:
                ops.append(op)
                op_dsts.append(dst)
        if ops:
            outcomes = self.netlink.route_batch(ops)
            result.writes += len(ops)
            for dst, op, error in zip(op_dsts, ops, outcomes, strict=True):
                self._record(dst, op, error, result)
        result.failed = {d: f for d, f in self._failures.items() if d in self._dirty}
        if result.writes or result.failed:
            log.info(
                "table %d: %d writes (+%d ~%d -%d), %d failed, %d deferred, %d in grace",
                self.table,
                result.writes,
                result.added,
                result.replaced,
                result.deleted,
                len(result.failed),
                len(result.deferred),
                len(result.in_grace),
            )
        return result

    def _do_resync(self, now: float, result: ApplyResult) -> None:
        # Links first: routes are matched to devices by index, and the grace clock starts when
        # we first see an owned interface.
        self._refresh_links(now)
        kernel: dict[IPv4Network, KernelRoute] = {}
        stray: list[KernelRoute] = []
        for route in self.netlink.dump_routes(table=self.table):
            if route.tos == 0 and route.metric == 0:
                kernel[route.dst] = route
            elif route.proto == self.proto:
                stray.append(route)
        self._kernel = kernel
        self._dirty.update(self._desired)
        self._dirty.update(dst for dst, route in kernel.items() if self._owned(route))
        # Stray routes are deleted right away: they can never be desired (we write metric 0).
        if stray:
            outcomes = self.netlink.route_batch([RouteOp("delete", r) for r in stray])
            result.writes += len(stray)
            for route, error in zip(stray, outcomes, strict=True):
                if error is None:
                    result.deleted += 1
                elif error.code != errno.ESRCH:
                    # Not retried until the next resync: it cannot shadow our metric-0 routes.
                    log.warning("table %d: cannot delete stray %s: %s", self.table, route, error)
        self._resync = False

    def _refresh_links(self, now: float) -> None:
        links = {link.name: link for link in self.netlink.list_links()}
        for name in links:
            if name.startswith(self.owned_iface_prefixes) and name not in self._first_seen:
                self._first_seen[name] = now
        for name in list(self._first_seen):
            if name not in links:
                del self._first_seen[name]
        self._links = links
        self._names = {link.index: link.name for link in links.values()}
        self._links_stale = False

    def _owned(self, route: KernelRoute) -> bool:
        if route.proto == self.proto:
            return True
        return self._via_owned_iface(route)

    def _via_owned_iface(self, route: KernelRoute) -> bool:
        if route.oif is None or not self.owned_iface_prefixes:
            return False
        return self._names.get(route.oif, "").startswith(self.owned_iface_prefixes)

    def _target(self, spec: RouteSpec, oif: int | None) -> KernelRoute:
        return KernelRoute(
            dst=spec.dst,
            table=self.table,
            type=spec.type,
            proto=self.proto,
            scope=spec.scope if spec.scope is not None else Scope.UNIVERSE,
            gateway=spec.gateway,
            oif=oif,
            onlink=spec.onlink,
        )

    @staticmethod
    def _same(have: KernelRoute, want: KernelRoute) -> bool:
        if (have.type, have.proto, have.scope, have.multipath) != (
            want.type,
            want.proto,
            want.scope,
            False,
        ):
            return False
        if want.type != RouteType.UNICAST:
            return True  # blackhole: no device or gateway to compare
        return (have.oif, have.gateway, have.onlink) == (want.oif, want.gateway, want.onlink)

    def _plan(self, dst: IPv4Network, now: float, result: ApplyResult) -> RouteOp | None:
        """The write converging ``dst``, or None (converged, waiting, or not ours to write).

        Leaves ``dst`` dirty when it is waiting (device, grace period, conflict).
        """
        want = self._desired.get(dst)
        have = self._kernel.get(dst)
        if want is None:
            if have is None or not self._owned(have):
                self._settle(dst)
                return None
            if have.proto != self.proto:
                # A CNI-added route through an owned interface: give the agent time to learn
                # about the pod before sweeping it.
                name = self._names.get(have.oif or -1, "")
                remaining = self._first_seen.get(name, now) + self.cni_grace_period - now
                if remaining > 0:
                    result.in_grace.add(dst)
                    if result.retry_after is None or remaining < result.retry_after:
                        result.retry_after = remaining
                    return None
            return RouteOp("delete", have)

        if have is not None and not self._owned(have):
            self._fail(dst, 0, f"held by a foreign route (proto {have.proto}); not touching it")
            return None
        oif = None
        if want.device is not None:
            link = self._links.get(want.device)
            if link is None or not link.up:
                # Not there yet (a pod being created), or down (which flushed its routes, and
                # a write would only fail): look again on the next apply; the link coming up
                # is an interface update.
                self._links_stale = True
                result.deferred.add(dst)
                return None
            oif = link.index
        target = self._target(want, oif)
        if have is not None and self._same(have, target):
            self._settle(dst)
            return None
        if (
            have is None
            and want.device is not None
            and want.device.startswith(self.owned_iface_prefixes or ("\0",))
        ):
            # The CNI plugin adds a pod's /32 right after our last dump, before we hear of the
            # pod: "add" would meet EEXIST and cost a resync. Routes through an owned interface
            # are ours whoever wrote them, so replace outright.
            return RouteOp("replace", target)
        return RouteOp("add" if have is None else "replace", target)

    def _settle(self, dst: IPv4Network) -> None:
        self._dirty.discard(dst)
        self._failures.pop(dst, None)

    def _fail(self, dst: IPv4Network, code: int, message: str) -> None:
        previous = self._failures.get(dst)
        attempts = previous.attempts + 1 if previous else 1
        self._failures[dst] = RouteFailure(dst, code, message, attempts)
        if previous is None or previous.message != message:
            log.warning("table %d: %s: %s", self.table, dst, message)

    def _record(
        self, dst: IPv4Network, op: RouteOp, error: NetlinkError | None, result: ApplyResult
    ) -> None:
        if error is None or (op.action == "delete" and error.code == errno.ESRCH):
            # ESRCH on delete: already gone (or replaced by someone else, whose route we must
            # not delete): either way nothing of ours is left there.
            if op.action == "delete":
                self._kernel.pop(dst, None)
                result.deleted += error is None
            else:
                # A replace of a route we did not know of (see _plan) adds one.
                if op.action == "add" or dst not in self._kernel:
                    result.added += 1
                else:
                    result.replaced += 1
                self._kernel[dst] = op.route
            self._settle(dst)
            return
        if error.code in DEVICE_NOT_READY:
            # The device vanished or is down since we listed links: wait for it.
            self._links_stale = True
            result.deferred.add(dst)
            return
        if error.code == errno.EEXIST:
            # Someone else added a route here since our dump: look again before deciding.
            self._resync = True
        self._fail(dst, error.code, f"{op.action} {op.route.dst}: {error.strerror}")
