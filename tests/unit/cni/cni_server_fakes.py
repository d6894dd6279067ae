"""Fakes for testing the agent's CNI server without root: a kernel and a failing datastore.

``FakeWiring`` keeps veth pairs in dictionaries with the real wiring's semantics: deleting
either end deletes both, a new pair replaces a host interface of the same name, routes go with
their interface. ``FlakyStore`` wraps a datastore and raises UnavailableError for the keys
(or all keys) a test marks as down.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import Any

from tortie.agent.wiring import PodLink, WiringError
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
        self.fail_attach: Exception | None = None
        self.problems: list[str] = []
        self.calls: list[str] = []

    def attach(self, link: PodLink) -> str:
        self.calls.append(f"attach {link.host_ifname}")
        self._drop_pod_side(link.netns, link.ifname)
        self.links.pop(link.host_ifname, None)
        self.links[link.host_ifname] = link
        if self.fail_attach is not None:
            raise self.fail_attach  # like a failure after the veth was made
        return POD_MAC

    def _drop_pod_side(self, netns: str, ifname: str) -> bool:
        for name, link in list(self.links.items()):
            if (link.netns, link.ifname) == (netns, ifname):
                del self.links[name]
                return True
        return False

    def detach_pod_side(self, netns: str, ifname: str) -> bool:
        self.calls.append(f"detach pod {netns} {ifname}")
        return self._drop_pod_side(netns, ifname)

    def detach_host_side(self, host_ifname: str) -> bool:
        self.calls.append(f"detach host {host_ifname}")
        return self.links.pop(host_ifname, None) is not None

    def host_link_exists(self, host_ifname: str) -> bool:
        return host_ifname in self.links

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
