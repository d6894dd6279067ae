"""Seeding a datastore the lab does not own: create only what is missing (recorded first),
refuse a conflicting resource, and delete exactly what was created."""

from __future__ import annotations

from pathlib import Path

import pytest

from tortie.datastore.factory import open_datastore
from tortie.datastore.resources import ResourceStore
from tortie.lab.errors import LabBuildError
from tortie.lab.manifests import ippool
from tortie.lab.seed import seed_datastore, unseed_datastore
from tortie.lab.state import Journal, LabState, load_state, state_path
from tortie.lab.topology import LabOptions, build_topology
from tortie.model.resources import BGPConfiguration, IPPool


def journal_for(tmp_path: Path, url: str) -> Journal:
    lab_dir = tmp_path / "lab"
    lab_dir.mkdir()
    state = LabState(name="x", lab_dir=str(lab_dir), token="t", options={}, datastore=url)
    return Journal(state)


def test_shared_datastore_round_trip(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'shared.db'}"
    topology = build_topology(LabOptions(mode="bgp"), 1)
    store = ResourceStore(open_datastore(url, create=True))  # the user's `datastore init`
    mine = BGPConfiguration.from_document(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "BGPConfiguration",
            "metadata": {"name": "default"},
            "spec": {"logSeverityScreen": "Info", "nodeToNodeMeshEnabled": True},
        }
    )
    store.apply([mine])
    journal = journal_for(tmp_path, url)
    assert seed_datastore(journal, topology) == ["IPPool/default-ipv4-ippool"]
    recorded = load_state(state_path(journal.state.lab_dir)).datastore_created
    assert recorded == [("IPPool", "default-ipv4-ippool")]
    pool = store.require(IPPool, "default-ipv4-ippool")
    assert pool.spec.ipip_mode == "Never"
    assert unseed_datastore(url, recorded) == []
    assert store.get(IPPool, "default-ipv4-ippool") is None
    assert store.get(BGPConfiguration, "default") is not None  # not ours: kept


def test_conflicting_resource_stops_the_build(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'shared.db'}"
    other = build_topology(LabOptions(mode="vxlan"), 1)
    ResourceStore(open_datastore(url, create=True)).apply([ippool(other)])
    with pytest.raises(LabBuildError, match="already has IPPool 'default-ipv4-ippool'"):
        seed_datastore(journal_for(tmp_path, url), build_topology(LabOptions(mode="ipip"), 1))
