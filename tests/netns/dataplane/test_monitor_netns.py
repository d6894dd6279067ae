"""The kernel monitor against a real kernel in a throwaway namespace: what the kernel says (and
does not say) about a flap, a route deleted by someone else, our own writes, nft changes."""

from __future__ import annotations

import queue
import subprocess
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network

import pytest
from dp_lab import Lab, lab

from tortie.dataplane.monitor import KernelChanges, NetlinkMonitor
from tortie.dataplane.routes import KernelRoute, RouteOp
from tortie.dataplane.rtnl import RtnlSocket

BLOCK = IPv4Network("10.65.2.0/26")


@pytest.fixture
def node() -> Iterator[tuple[Lab, str]]:
    with lab() as the_lab:
        ns = the_lab.netns("m")
        the_lab.ip(ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
        for dev in ("eth0", "eth0p"):
            the_lab.ip(ns, "link", "set", dev, "up")
        the_lab.ip(ns, "addr", "add", "192.168.49.2/24", "dev", "eth0")
        yield the_lab, ns


class Watch:
    def __init__(self, ns: str, **kw: object) -> None:
        self.q: queue.Queue[KernelChanges] = queue.Queue()
        self.rtnl = RtnlSocket(ns)
        self.mon = NetlinkMonitor(ns, echo_portids=[self.rtnl.portid], **kw)  # type: ignore[arg-type]
        self.mon.start(self.q.put)
        time.sleep(0.2)  # subscribed

    def batches(self, settle: float = 0.3) -> list[KernelChanges]:
        time.sleep(settle)
        out = []
        while not self.q.empty():
            out.append(self.q.get())
        return out

    def close(self) -> None:
        self.mon.stop()
        self.rtnl.close()


@pytest.fixture
def watch(node: tuple[Lab, str]) -> Iterator[Watch]:
    w = Watch(node[1], nft_table=("inet", "tortie"))
    try:
        yield w
    finally:
        w.close()


def test_a_flap_is_reported_as_links_but_the_flushed_routes_are_not(
    node: tuple[Lab, str], watch: Watch
) -> None:
    the_lab, ns = node
    the_lab.ip(ns, "route", "add", str(BLOCK), "via", "192.168.49.3", "proto", "80")
    watch.batches()
    the_lab.ip(ns, "link", "set", "eth0", "down")
    down = watch.batches()
    assert [(c.name, c.up) for b in down for c in b.links if c.name == "eth0"] == [("eth0", False)]
    # The kernel flushed our route and said nothing about it: the reason to watch links.
    assert not any(r.route.dst == BLOCK for b in down for r in b.routes)
    assert BLOCK not in {r.dst for r in watch.rtnl.dump_routes(254)}
    the_lab.ip(ns, "link", "set", "eth0", "up")
    up = watch.batches()
    assert [(c.name, c.up) for b in up for c in b.links if c.name == "eth0"] == [("eth0", True)]


def test_someone_elses_delete_is_reported_our_own_writes_are_not(
    node: tuple[Lab, str], watch: Watch
) -> None:
    the_lab, ns = node
    eth0 = watch.rtnl.get_link("eth0")
    assert eth0 is not None
    route = KernelRoute(BLOCK, proto=80, gateway=IPv4Address("192.168.49.3"), oif=eth0.index)
    assert watch.rtnl.route_batch([RouteOp("add", route)]) == [None]
    assert watch.batches() == []  # our own write: its echo is dropped
    the_lab.ip(ns, "route", "del", str(BLOCK))
    (batch,) = watch.batches()
    ((change),) = batch.routes
    assert change.deleted and change.route.dst == BLOCK and change.route.proto == 80


def test_a_burst_is_one_batch(node: tuple[Lab, str], watch: Watch) -> None:
    _lab, ns = node
    script = "".join(f"route add 10.66.{i}.0/24 via 192.168.49.3 proto 80\n" for i in range(50))
    subprocess.run(["ip", "-n", ns, "-batch", "-"], input=script, text=True, check=True)
    batches = watch.batches()
    assert sum(len(b.routes) for b in batches) == 50
    assert len(batches) <= 2  # coalesced (a batch closes after 100 ms at most)


def test_nft_changes_to_our_table_by_others_are_reported(
    node: tuple[Lab, str], watch: Watch
) -> None:
    _lab, ns = node

    def nft(*args: str) -> None:
        subprocess.run(["ip", "netns", "exec", ns, "nft", *args], check=True)

    nft("add", "table", "inet", "other")
    assert not any(b.firewall for b in watch.batches())
    nft("add", "table", "inet", "tortie")
    assert any(b.firewall for b in watch.batches())
    nft("delete", "table", "inet", "tortie")
    assert any(b.firewall for b in watch.batches())


def test_stop_is_prompt_and_leaves_no_thread(node: tuple[Lab, str]) -> None:
    w = Watch(node[1])
    t0 = time.monotonic()
    w.close()
    assert time.monotonic() - t0 < 1
    assert w.mon._thread is not None and not w.mon._thread.is_alive()
