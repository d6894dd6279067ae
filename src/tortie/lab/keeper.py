"""The lab node's network manager ("keeper"): the node's default route back after a flap.

Problem: taking a link down flushes every IPv4 route through it, the default route included,
and bringing it up again restores only the connected route (docs/agent.md). On a real host a
network manager (systemd-networkd, NetworkManager, ifupdown's hooks) re-adds the configured
routes when the link comes back; a lab node is a bare namespace with nobody doing that. So
after an uplink flap the node kept no default route, and with it proxy ARP for 169.254.1.1
stopped answering (the kernel answers only when it has a route to the asked address through
another interface, :mod:`.network`): pods lost their gateway for good (issue 17, item 8). The
agent must not fix it: the default route is the host's, and the agent never writes what is
not its own.

How: one small process per node, inside the node's namespace, playing that network manager
(``python -m tortie.lab.keeper --uplink eth0 --gateway 192.168.49.1``). It watches links with
the kernel monitor (:mod:`tortie.dataplane.monitor`: blocked in ``poll``, no polling) and,
whenever the uplink is up and the table has no default route, adds exactly the one the lab
added (``default via <gateway> dev <uplink>``, protocol boot, as ``ip route add`` writes it).
It checks once at start, on every change of the uplink, and after lost events.

Lab side (:func:`start_keepers`): ``lab up`` starts the keepers right after the nodes'
network, through :func:`tortie.lab.runtime.spawn_in_node`, so each is recorded in the lab's
state (role ``keeper``, with its node) the moment its PID exists, carries the lab's token,
shows among the node's processes in ``lab status`` and is stopped by ``lab down`` by its
verified PID, like the agents.

Invariants: it adds a default route only when there is none (another default route, someone
else's, is left alone) and never deletes or replaces anything; like networkd it acts on link
state: a default route deleted by hand while the link stays up stays deleted until the next
flap. Stdlib and the dataplane's raw rtnetlink only: no pyroute2, about 20 MiB per node.
"""

from __future__ import annotations

import argparse
import errno
import logging
import queue
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv4Network
from types import FrameType

from tortie.dataplane.monitor import KernelChanges, NetlinkMonitor
from tortie.dataplane.netlink import NetlinkError
from tortie.dataplane.routes import MAIN_TABLE, KernelRoute, RouteOp
from tortie.dataplane.rtnl import RtnlSocket
from tortie.lab.runtime import node_runtime, spawn_in_node
from tortie.lab.state import Journal, ProcessRecord
from tortie.lab.topology import Topology

log = logging.getLogger("tortie.lab.keeper")

DEFAULT = IPv4Network("0.0.0.0/0")
RTPROT_BOOT = 3  # what `ip route add` writes, as the lab's own default route has
ROLE = "keeper"
Progress = Callable[[str], None]


class DefaultRouteKeeper:
    """Puts ``default via gateway dev uplink`` back whenever the uplink is up without it."""

    def __init__(self, rtnl: RtnlSocket, uplink: str, gateway: IPv4Address) -> None:
        self.rtnl = rtnl
        self.uplink = uplink
        self.gateway = gateway
        self.restored = 0

    def ensure(self) -> str | None:
        """Add the default route if the uplink is up and there is none; say what was done."""
        link = self.rtnl.get_link(self.uplink)
        if link is None or not link.up:
            return None  # nothing to do until it is up: the next link event calls again
        have = [r for r in self.rtnl.dump_routes(MAIN_TABLE) if r.dst == DEFAULT and r.metric == 0]
        if have:
            return None
        route = KernelRoute(DEFAULT, proto=RTPROT_BOOT, gateway=self.gateway, oif=link.index)
        (error,) = self.rtnl.route_batch([RouteOp("add", route)])
        if error is not None and error.code != errno.EEXIST:
            raise error
        self.restored += 1
        return f"restored default via {self.gateway} dev {self.uplink}"

    def wants(self, changes: KernelChanges) -> bool:
        """Whether a batch from the monitor calls for a look."""
        return bool(changes.lost) or any(
            self.uplink in (link.name, link.old_name) for link in changes.links
        )


def run(uplink: str, gateway: IPv4Address, stop: threading.Event) -> int:
    """Keep the default route until ``stop`` is set (the caller's thread just waits)."""
    events: queue.Queue[KernelChanges | None] = queue.Queue()
    monitor = NetlinkMonitor(table=None, routes=False, addrs=False, name="keeper-monitor")
    rtnl = RtnlSocket()
    keeper = DefaultRouteKeeper(rtnl, uplink, gateway)
    monitor.start(events.put)  # subscribed before the first look: no change falls between
    worker = threading.Thread(target=_keep, args=(keeper, events), name="keeper", daemon=True)
    worker.start()
    try:
        stop.wait()  # a signal handler sets it; nothing here wakes up on a timer
    finally:
        events.put(None)
        worker.join(timeout=5)
        monitor.stop()
        rtnl.close()
    return 0


def _keep(keeper: DefaultRouteKeeper, events: queue.Queue[KernelChanges | None]) -> None:
    look = True
    while True:
        if look:
            try:
                done = keeper.ensure()
            except NetlinkError as err:
                # E.g. the address is not back yet: the next link change tries again.
                log.warning("cannot restore the default route: %s", err)
            else:
                if done:
                    log.info("%s", done)
        changes = events.get()
        if changes is None:
            return
        look = keeper.wants(changes)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tortie.lab.keeper",
        description="a lab node's network manager: its default route back after a flap",
    )
    parser.add_argument("--uplink", required=True, help="the node's uplink, e.g. eth0")
    parser.add_argument("--gateway", required=True, type=IPv4Address, help="the default gateway")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    stop = threading.Event()

    def handler(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    log.info("keeping default via %s dev %s", args.gateway, args.uplink)
    return run(args.uplink, args.gateway, stop)


# -- the lab side ---------------------------------------------------------------------------


def keeper_argv(uplink: str, gateway: IPv4Address) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tortie.lab.keeper",
        "--uplink",
        uplink,
        "--gateway",
        str(gateway),
    ]


def start_keepers(journal: Journal, topology: Topology, progress: Progress) -> list[ProcessRecord]:
    """One keeper per node, in its namespace, recorded as it starts (see the module doc)."""
    started = []
    for node in topology.nodes:
        runtime = node_runtime(topology, journal.state, node.name)
        argv = keeper_argv(node.uplink, node.gateway)
        record = spawn_in_node(journal, runtime, ROLE, argv, "keeper.log")
        progress(f"{node.name}: network keeper pid {record.pid} (default via {node.gateway})")
        started.append(record)
    return started


if __name__ == "__main__":
    sys.exit(main())
