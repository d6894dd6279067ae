"""Fakes for testing the agent's CNI server without root: a kernel and a failing datastore.

``FakeWiring`` keeps veth pairs in dictionaries with the real wiring's semantics: deleting
either end deletes both, a judged host interface of the same name is replaced (an unjudged one
makes ADD fail), routes go with their interface, only the inspected ifindex is deleted.
Namespaces are paths: ``own_netns`` ones are the node's (refused), ``not_netns`` ones are files
that are no namespace; ``foreign`` holds interfaces tortie did not make, per (netns, ifname).

``FlakyStore`` wraps a datastore and raises UnavailableError for the keys (or all keys) a test
marks as down.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from tortie.agent.wiring import (
    Existing,
    InterfaceTakenError,
    NetnsRefusedError,
    PodInterface,
    PodLink,
    WiringError,
)
from tortie.datastore.api import (
    Compare,
    Datastore,
    KeyValue,
    ListResult,
    Op,
    TxnResult,
    UnavailableError,
)

POD_MAC = "02:00:00:00:00:01"


class FakeWiring:
    def __init__(self) -> None:
        self.links: dict[str, PodLink] = {}  # host ifname -> the pair's description
        self.pod_index: dict[str, int] = {}  # host ifname -> ifindex of its pod side
        self.host_only: dict[str, int] = {}  # host interfaces with no pair (host ifname -> index)
        self.macs: dict[str, str] = {}  # host ifname -> its pod side's MAC, if not POD_MAC
        self.foreign: dict[tuple[str, str], PodInterface] = {}
        self.own_netns: set[str] = set()
        self.not_netns: set[str] = set()
        self.fail_attach: Exception | None = None
        self.problems: list[str] = []
        self.calls: list[str] = []
        self._indexes = itertools.count(2)

    @contextlib.contextmanager
    def open_pod_netns(self, path: str, *, gone_ok: bool = False) -> Iterator[str | None]:
        if path in self.own_netns:
            raise NetnsRefusedError("open the pod's network namespace", f"{path} is the node's own")
        if path in self.not_netns or not os.path.exists(path):
            if gone_ok:
                yield None
                return
            if path in self.not_netns:
                raise NetnsRefusedError(
                    "open the pod's network namespace", f"{path} is not a network namespace"
                )
            raise WiringError("open the pod's network namespace", f"{path} does not exist", 2)
        yield path

    def _host_index(self, host_ifname: str) -> int | None:
        if host_ifname in self.links:
            return -self.pod_index[host_ifname]  # the host end's index: any other number
        return self.host_only.get(host_ifname)

    def inspect(self, netns: str, ifname: str, host_ifname: str) -> Existing:
        pod_side = self.foreign.get((netns, ifname))
        for name, link in self.links.items():
            if (link.netns, link.ifname) == (netns, ifname):
                addresses = (str(link.ip),)
                mac = self.macs.get(name, POD_MAC)
                pod_side = PodInterface(self.pod_index[name], "veth", mac, addresses, name)
        return Existing(pod_side=pod_side, host_index=self._host_index(host_ifname))

    def attach(self, link: PodLink, existing: Existing | None = None) -> str:
        self.calls.append(f"attach {link.host_ifname}")
        existing = existing or Existing()
        if existing.pod_side is not None:
            self.foreign.pop((link.netns, link.ifname), None)
            self._drop_pod_side(link.netns, link.ifname)
        stale = self._host_index(link.host_ifname)
        if stale is not None:
            if stale != existing.host_index:
                raise InterfaceTakenError("create veth", f"{link.host_ifname} exists", errno.EEXIST)
            self.links.pop(link.host_ifname, None)
            self.host_only.pop(link.host_ifname, None)
        if (link.netns, link.ifname) in self.foreign or self._pod_side_of(link.netns, link.ifname):
            raise WiringError("create veth", f"{link.ifname} exists in the pod", errno.EEXIST)
        self.links[link.host_ifname] = link
        self.pod_index[link.host_ifname] = next(self._indexes)
        if self.fail_attach is not None:
            raise self.fail_attach  # like a failure after the veth was made
        return POD_MAC

    def _pod_side_of(self, netns: str, ifname: str) -> str | None:
        for name, link in self.links.items():
            if (link.netns, link.ifname) == (netns, ifname):
                return name
        return None

    def _drop_pod_side(self, netns: str, ifname: str) -> bool:
        name = self._pod_side_of(netns, ifname)
        if name is None:
            return False
        del self.links[name]
        return True

    def detach_pod_side(self, netns: str, ifname: str, index: int) -> bool:
        self.calls.append(f"detach pod {netns} {ifname}")
        name = self._pod_side_of(netns, ifname)
        if name is not None and self.pod_index[name] == index:
            return self._drop_pod_side(netns, ifname)
        if (netns, ifname) in self.foreign and self.foreign[(netns, ifname)].index == index:
            del self.foreign[(netns, ifname)]
            return True
        return False

    def detach_host_side(self, host_ifname: str) -> bool:
        self.calls.append(f"detach host {host_ifname}")
        found = self.links.pop(host_ifname, None) is not None
        return self.host_only.pop(host_ifname, None) is not None or found

    def host_link_exists(self, host_ifname: str) -> bool:
        return host_ifname in self.links or host_ifname in self.host_only

    def routes_to(self, ip: ipaddress.IPv4Address) -> str | None:
        return next((n for n, link in self.links.items() if link.ip == ip), None)

    def check(self, link: PodLink) -> list[str]:
        have = self.links.get(link.host_ifname)
        if have is None or have.ip != link.ip:
            return [f"host interface {link.host_ifname} does not exist", *self.problems]
        return list(self.problems)


def fail_netns(step: str = "create veth") -> WiringError:
    return WiringError(step, "File exists", 17)


class FlakyStore:
    """A Datastore whose keys matching ``down`` raise UnavailableError (all when True)."""

    def __init__(self, inner: Datastore) -> None:
        self.inner = inner
        self.down: bool | Callable[[str], bool] = False

    def _check(self, *keys: str) -> None:
        if self.down is True or (callable(self.down) and any(self.down(k) for k in keys)):
            raise UnavailableError(self.inner.url, "connection refused (test)")

    @property
    def url(self) -> str:
        return self.inner.url

    def get(self, key: str) -> KeyValue | None:
        self._check(key)
        return self.inner.get(key)

    def list(self, prefix: str) -> ListResult:
        self._check(prefix)
        return self.inner.list(prefix)

    def create(self, key: str, value: str) -> KeyValue:
        self._check(key)
        return self.inner.create(key, value)

    def update(self, key: str, value: str, mod_revision: int) -> KeyValue:
        self._check(key)
        return self.inner.update(key, value, mod_revision)

    def put(self, key: str, value: str) -> KeyValue:
        self._check(key)
        return self.inner.put(key, value)

    def delete(self, key: str, mod_revision: int | None = None) -> None:
        self._check(key)
        self.inner.delete(key, mod_revision)

    def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        self._check(*(c.key for c in compares), *(o.key for o in ops))
        return self.inner.txn(compares, ops)

    def revision(self) -> int:
        self._check("")
        return self.inner.revision()

    def watch(self, prefix: str, start_revision: int) -> Any:
        return self.inner.watch(prefix, start_revision)

    def compact(self, revision: int) -> None:
        self.inner.compact(revision)

    def close(self) -> None:
        self.inner.close()
