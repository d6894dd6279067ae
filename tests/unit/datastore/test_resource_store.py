"""ResourceStore: the pool guard, size limits and kept secrets (issue 17, items 3, 12, 13).

The race itself runs for real in test_pool_race_sqlite.py (processes) and in
tests/interop/test_pool_race_etcd.py; here the interleaving that lost is forced
deterministically: another apply commits between this apply's listing and its commit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tortie.agent.state import ClusterState
from tortie.datastore.api import Compare, Datastore, Op, TxnResult
from tortie.datastore.memory import MemoryDatastore
from tortie.datastore.resources import POOL_GUARD_KEY, ResourceStore
from tortie.datastore.sqlite import SqliteDatastore
from tortie.datastore.syncer import Deleted, InSync, Update
from tortie.model.errors import ValidationError
from tortie.model.resources import (
    REDACTED,
    BGPConfiguration,
    BGPPeer,
    IPPool,
    Resource,
    redact_secrets,
)
from tortie.model.validation import MAX_RESOURCE_BYTES

pytestmark = pytest.mark.unit


def pool(name: str, cidr: str) -> IPPool:
    return IPPool.from_document(
        {"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": name},
         "spec": {"cidr": cidr}}
    )  # fmt: skip


def peer(name: str, password: Any = None, **meta: Any) -> BGPPeer:
    spec: dict[str, Any] = {"peerIP": "192.168.49.1", "asNumber": 64513}
    if password is not None:
        spec["password"] = password
    return BGPPeer.from_document(
        {"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer",
         "metadata": {"name": name, **meta}, "spec": spec}
    )  # fmt: skip


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Datastore]:
    ds: Datastore
    ds = (
        MemoryDatastore()
        if request.param == "memory"
        else SqliteDatastore(tmp_path / "t.db", create=True)
    )
    try:
        yield ds
    finally:
        ds.close()


class Interloper:
    """A datastore that runs ``before_first_txn`` once, just before the first transaction
    (after the caller read and validated everything): the race's losing interleaving."""

    def __init__(self, inner: Datastore, before_first_txn: Callable[[], None]) -> None:
        self.inner = inner
        self.hook: Callable[[], None] | None = before_first_txn
        self.txns = 0

    def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        self.txns += 1
        hook, self.hook = self.hook, None
        if hook is not None:
            hook()
        return self.inner.txn(compares, ops)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def names(store: Datastore) -> list[str]:
    return sorted(p.name for p in ResourceStore(store).list(IPPool))


# -- item 3: the pool guard --------------------------------------------------------------------
@pytest.mark.parametrize("others", [0, 3])
def test_a_pool_created_after_the_listing_is_seen(store: Datastore, others: int) -> None:
    rs = ResourceStore(store)
    if others:
        rs.apply([pool(f"other-{n}", f"10.{60 + n}.0.0/16") for n in range(others)])
    racing = Interloper(store, lambda: rs.apply([pool("narrow", "10.50.1.0/24")]))
    with pytest.raises(ValidationError, match=r"overlaps IPPool narrow \(10.50.1.0/24\)"):
        ResourceStore(racing).apply([pool("wide", "10.50.0.0/16")])  # type: ignore[arg-type]
    assert racing.txns == 1  # its transaction lost the compare; the re-check found the overlap
    assert "wide" not in names(store) and "narrow" in names(store)


def guard_revision(store: Datastore) -> int:
    kv = store.get(POOL_GUARD_KEY)
    return 0 if kv is None else kv.mod_revision


def test_every_pool_write_moves_the_guard(store: Datastore) -> None:
    rs = ResourceStore(store)
    seen = [guard_revision(store)]

    def moved() -> bool:
        seen.append(guard_revision(store))
        return seen[-1] != seen[-2]

    rs.apply([pool("a", "10.1.0.0/16")])
    assert moved()
    rs.create([pool("b", "10.2.0.0/16")])
    assert moved()
    rs.replace([pool("b", "10.2.0.0/16").with_spec(disabled=True)])
    assert moved()
    rs.delete(IPPool, "b")
    assert moved()
    rs.delete_many([pool("a", "10.1.0.0/16")])
    assert moved()
    rs.apply([peer("p"), BGPConfiguration.from_document(BGP)])
    assert not moved()  # no pool: no guard write, nothing to retry for pool writers
    rs.delete(BGPPeer, "p")
    assert not moved()


BGP = {
    "apiVersion": "projectcalico.org/v3",
    "kind": "BGPConfiguration",
    "metadata": {"name": "default"},
}


def test_the_guard_is_not_part_of_the_agents_view() -> None:
    store = MemoryDatastore()
    ResourceStore(store).apply([pool("a", "10.1.0.0/16")])
    state = ClusterState("node1")
    listing = store.list("/tortie/")  # what the agent's syncer lists (agent/loop.py)
    assert POOL_GUARD_KEY in [kv.key for kv in listing.items]
    for kv in listing.items:
        state.apply(Update(kv.key, kv.value, kv.mod_revision))
    state.apply(InSync(listing.revision))
    assert list(state.pools) == ["a"] and state.bad_keys == {}
    state.dirty = False
    versions = dict(state.versions)
    guard = store.get(POOL_GUARD_KEY)
    assert guard is not None
    state.apply(Update(guard.key, guard.value, guard.mod_revision + 1))
    state.apply(Deleted(guard.key, guard.mod_revision + 2))
    assert not state.dirty and state.versions == versions and state.bad_keys == {}


# -- item 12: size limits ---------------------------------------------------------------------
def test_a_resource_over_the_stored_limit_is_refused(store: Datastore) -> None:
    rs = ResourceStore(store)
    # Annotations alone are capped at 256 KiB; labels are not: 120k short ones pass the
    # model and make the stored JSON larger than etcd takes.
    labels = {f"k{n:06d}": "v" for n in range(120_000)}
    big = peer("big", labels=labels)
    with pytest.raises(ValidationError) as info:
        rs.apply([pool("a", "10.1.0.0/16"), big])
    err = info.value
    assert (err.kind, err.name) == ("BGPPeer", "big")
    assert f"the limit is {MAX_RESOURCE_BYTES} (1.5 MiB" in str(err)
    assert names(store) == [] and store.get(POOL_GUARD_KEY) is None  # nothing written


def test_a_resource_just_under_the_limit_is_stored(store: Datastore) -> None:
    labels = {f"k{n:06d}": "v" for n in range(90_000)}
    (stored,) = ResourceStore(store).apply([peer("big", labels=labels)])
    assert len(ResourceStore(store).require(BGPPeer, "big").metadata.labels) == 90_000
    assert stored.metadata.resource_version


# -- item 13: a redacted password keeps the stored one ------------------------------------------
def stored_password(store: Datastore, name: str) -> Any:
    p = ResourceStore(store).require(BGPPeer, name).spec.password
    return None if p is None else (p.value, p.secret_key_ref)


def test_applying_what_get_prints_keeps_the_password(store: Datastore) -> None:
    rs = ResourceStore(store)
    rs.apply([peer("tor", "s3cret")])
    shown = redact_secrets(rs.require(BGPPeer, "tor"))
    assert isinstance(shown, BGPPeer) and shown.spec.password is not None
    assert shown.spec.password.value == REDACTED
    edited = shown.with_spec(hold_time="30s").with_metadata(resource_version=None)
    rs.apply([edited])
    assert stored_password(store, "tor") == ("s3cret", None)
    assert rs.require(BGPPeer, "tor").spec.hold_time == "30s"
    rs.replace([edited])
    assert stored_password(store, "tor") == ("s3cret", None)
    rs.apply([peer("tor", "n3w")])  # a real password still replaces it
    assert stored_password(store, "tor") == ("n3w", None)


@pytest.mark.parametrize(
    "before", [None, "absent", {"secretKeyRef": {"name": "bgp", "key": "tor"}}]
)
def test_a_redacted_password_with_nothing_to_keep_is_refused(store: Datastore, before: Any) -> None:
    rs = ResourceStore(store)
    if before != "absent":
        rs.apply([peer("tor", before)])
    with pytest.raises(ValidationError) as info:
        rs.apply([pool("a", "10.1.0.0/16"), peer("tor", REDACTED)])
    assert info.value.field == "spec.password.value"
    assert "no stored password to keep" in str(info.value)
    assert names(store) == []
    if before == "absent":
        with pytest.raises(ValidationError):
            rs.create([peer("tor", {"value": REDACTED})])
        assert ResourceStore(store).get(BGPPeer, "tor") is None


def test_redact_secrets_leaves_other_resources_alone() -> None:
    ref = peer("ref", {"secretKeyRef": {"name": "bgp", "key": "tor"}})
    plain: list[Resource] = [pool("a", "10.1.0.0/16"), peer("none"), ref]
    assert [redact_secrets(r) for r in plain] == plain
