"""Fail-static (issue 17, item 1): an agent whose datastore changed identity or went back in
time makes no kernel write at all, says why, and resumes when the right store is back."""

from __future__ import annotations

from ipaddress import IPv4Network
from pathlib import Path

import pytest
from test_loop import Harness

from tortie.agent.trust import (
    DatastoreGuard,
    Record,
    RecordError,
    load_record,
    record_path,
    save_record,
)
from tortie.datastore.api import IDENTITY_KEY, DatastoreReplacedError
from tortie.datastore.memory import MemoryDatastore
from tortie.datastore.syncer import Deleted, InSync, StatusChanged, SyncStatus, Update

pytestmark = pytest.mark.unit


class Guarded(Harness):
    """The loop harness with the guard that ``tortie node run`` gives the agent."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.record = record_path(tmp_path)
        self.guard = DatastoreGuard(self.store, self.record, "node1", clock=lambda: self.now)
        self.agent.guard = self.guard

    def kernel_writes(self) -> tuple[int, int]:
        return self.kernel.route_writes, len(self.kernel.link_ops)

    def converged_with_routes(self) -> dict[str, str]:
        self.set_mode("Always")
        self.add_node("node2", "192.168.49.3/24")
        self.ipam.assign(node="node1", handle="k8s-pod-network.a")
        remote = self.ipam.assign(node="node2", handle="k8s-pod-network.b")[0]
        self.sync()
        routes = self.routes()
        assert routes[str(IPv4Network(f"{remote}/26", strict=False))].startswith("via")
        assert self.agent.board.ready() == (True, "ok")
        return routes

    def relist_without_node2(self, revision: int) -> None:
        """What the syncer delivers after re-listing a store that lost node2's block."""
        for kv in self.store.list("/tortie/").items:
            if "node2" in kv.key or "node2" in kv.value:
                self.agent.on_sync_event(Deleted(kv.key, revision))
        self.agent.on_sync_event(InSync(revision))
        self.agent.run_once()


@pytest.fixture
def g(tmp_path: Path) -> Guarded:
    return Guarded(tmp_path)


def test_the_first_in_sync_records_the_store(g: Guarded) -> None:
    g.converged_with_routes()
    rec = load_record(g.record)
    assert rec is not None and rec.id == g.store.identity()
    assert 1 < rec.revision <= g.store.revision()  # the listing's (the pass wrote after it)


def test_another_store_id_means_no_kernel_write_and_a_clear_detail(g: Guarded) -> None:
    routes = g.converged_with_routes()
    before = g.kernel_writes()
    g.store._identity = "another-store"  # what a re-created store at the same URL reports
    g.relist_without_node2(g.store.revision())
    g.now += 500  # resyncs and retries come due: still nothing may be written
    g.agent.run_once()
    assert g.kernel_writes() == before and g.routes() == routes
    ready, detail = g.agent.board.ready()
    assert not ready
    assert "another-store" in detail and "tortie datastore accept --node node1" in detail
    assert "changes nothing in the kernel" in detail
    # The right store comes back: the next recheck lifts the refusal and the agent resyncs.
    g.store._identity = load_record(g.record).id  # type: ignore[union-attr]
    g.now += 10
    g.sync()
    assert g.agent.board.ready() == (True, "ok")


def test_a_revision_lower_than_recorded_means_no_kernel_write(g: Guarded) -> None:
    routes = g.converged_with_routes()
    for i in range(5):
        g.res.store.put(f"/tortie/x/{i}", "1")  # the store moves on ...
    g.sync()
    recorded = load_record(g.record)
    assert recorded is not None and recorded.revision == g.store.revision()
    before = g.kernel_writes()
    g.relist_without_node2(recorded.revision - 4)  # ... and comes back older
    g.now += 500
    g.agent.run_once()
    assert g.kernel_writes() == before and g.routes() == routes
    ready, detail = g.agent.board.ready()
    assert not ready and "went back in time" in detail and str(recorded.revision) in detail


def test_a_restarted_agent_refuses_a_store_it_does_not_know(tmp_path: Path) -> None:
    first = Guarded(tmp_path)
    first.converged_with_routes()
    second = Guarded(tmp_path)  # the same state dir, a new (empty, different) store
    second.sync()
    assert second.kernel_writes() == (0, 0)
    ready, detail = second.agent.board.ready()
    assert not ready and "replaced or re-created" in detail


def test_the_etcd_identity_key_disappearing_is_noticed_at_once(g: Guarded) -> None:
    routes = g.converged_with_routes()
    before = g.kernel_writes()
    g.store._identity = ""  # etcd answers "" once /tortie/meta/datastore is gone
    g.agent.on_sync_event(Deleted(IDENTITY_KEY, g.store.revision() + 1))
    g.agent.run_once()
    g.now += 500
    g.agent.run_once()
    assert g.kernel_writes() == before and g.routes() == routes
    assert "(none)" in g.agent.board.ready()[1]


def test_other_meta_keys_are_not_resources_and_change_nothing(g: Guarded) -> None:
    g.converged_with_routes()
    g.agent.on_sync_event(Update("/tortie/meta/guards/ippools", "{}", g.store.revision() + 1))
    g.agent.run_once()
    assert g.agent.state.bad_keys == {} and g.agent.state.identity_events == 0
    assert g.agent.board.ready() == (True, "ok")


def test_the_syncer_saying_replaced_stops_writes(g: Guarded) -> None:
    g.converged_with_routes()
    before = g.kernel_writes()
    detail = "datastore sqlite:///x is not the one in use until now: its id is y"
    g.agent.on_sync_event(StatusChanged(SyncStatus.REPLACED, detail))
    g.now += 500
    g.agent.run_once()
    assert g.kernel_writes() == before
    assert detail in g.agent.board.ready()[1]


def test_the_cni_server_store_refuses_writes_while_refused(g: Guarded) -> None:
    g.converged_with_routes()
    cni_store = g.guard.guarded(g.store)
    cni_store.put("/tortie/ok", "1")
    g.store._identity = "another-store"
    g.relist_without_node2(g.store.revision())
    with pytest.raises(DatastoreReplacedError):
        cni_store.put("/tortie/ipam/v2/handle/x", "1")
    assert cni_store.get("/tortie/ok") is not None  # reads go on


def test_an_unreadable_record_is_a_store_not_known(tmp_path: Path) -> None:
    path = record_path(tmp_path)
    path.write_text("{not json")
    with pytest.raises(RecordError):
        load_record(path)
    guard = DatastoreGuard(MemoryDatastore(), path, "n1")
    assert guard.has_record
    assert "unreadable" in guard.verify(1)


def test_the_record_is_saved_atomically_and_privately(tmp_path: Path) -> None:
    path = record_path(tmp_path / "state")
    save_record(path, Record("sqlite:///x", "abc", 7))
    assert load_record(path) == Record("sqlite:///x", "abc", 7)
    assert path.stat().st_mode & 0o077 == 0
    assert [p.name for p in path.parent.iterdir()] == [path.name]
