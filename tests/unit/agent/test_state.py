"""ClusterState: which events make the view dirty, and the per-table versions."""

from __future__ import annotations

from tortie.agent.state import ClusterState
from tortie.datastore.api import KeyValue
from tortie.datastore.memory import MemoryDatastore
from tortie.datastore.resources import ResourceStore
from tortie.datastore.syncer import Deleted, InSync, Update
from tortie.ipam.client import IPAM
from tortie.model import ipam as ipam_model
from tortie.model.keys import resource_key
from tortie.model.loader import load_documents

POOL = """
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pool}
spec: {cidr: 10.244.0.0/16, ipipMode: Always}
"""


def keys_under(store: MemoryDatastore, prefix: str) -> list[KeyValue]:
    return [kv for kv in store.list("/tortie/").items if kv.key.startswith(prefix)]


def synced_state() -> tuple[ClusterState, MemoryDatastore, IPAM]:
    store = MemoryDatastore()
    ResourceStore(store).apply(load_documents(POOL, "pool.yaml"))
    ipam = IPAM(store)
    ipam.assign(node="node1", handle="pod.a", ip="10.244.0.5")
    state = ClusterState("node1")
    listing = store.list("/tortie/")
    for kv in listing.items:
        state.apply(Update(kv.key, kv.value, kv.mod_revision))
    state.apply(InSync(listing.revision))
    state.dirty = False
    return state, store, ipam


def test_a_handle_alone_does_not_make_the_view_dirty() -> None:
    state, store, _ = synced_state()
    handles = keys_under(store, ipam_model.handles_prefix())
    assert handles, "IPAM wrote no handle"
    before = dict(state.versions)
    state.apply(Update(handles[0].key, handles[0].value, 99))
    state.apply(Deleted(handles[0].key, 100))
    assert not state.dirty and state.versions == before
    assert state.revision == 100


def test_each_table_counts_its_own_changes() -> None:
    state, store, _ = synced_state()
    blocks = keys_under(store, ipam_model.blocks_prefix())
    before = state.version_of("blocks", "nodes", "affinities")
    state.apply(Update(blocks[0].key, blocks[0].value, 99))
    assert state.dirty
    assert state.version_of("blocks", "nodes", "affinities") == (
        before[0] + 1,
        before[1],
        before[2],
    )


def test_deleting_what_the_view_does_not_hold_changes_nothing() -> None:
    state, store, _ = synced_state()
    before = dict(state.versions)
    state.apply(Deleted(ipam_model.blocks_prefix() + "10.9.9.0-26", 99))
    state.apply(Deleted(resource_key("Node", "nobody"), 100))
    assert not state.dirty and state.versions == before
    block = keys_under(store, ipam_model.blocks_prefix())[0]
    state.apply(Deleted(block.key, 101))
    assert state.dirty and state.versions["blocks"] == before["blocks"] + 1


def test_a_value_nested_thousands_deep_is_a_bad_key_not_a_crash() -> None:
    # Datastore content is input: JSON nested 5,000 deep (json recurses per level) written by
    # another tool must not kill the agent's loop with a RecursionError.
    state, _store, _ipam = synced_state()
    deep = "[" * 5000 + "]" * 5000
    pool_key = resource_key("IPPool", "pool")
    block_key = next(k for k in state.blocks)
    state.apply(Update(pool_key, deep, 100))
    state.apply(Update(block_key, deep, 101))
    assert set(state.bad_keys) == {pool_key, block_key}
    assert "deep" in state.bad_keys[block_key]
    assert not state.pools and block_key not in state.blocks
