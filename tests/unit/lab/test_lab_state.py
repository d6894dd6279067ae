"""The state file: round trip, atomic saves, idempotent records, unreadable files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tortie.lab.errors import LabStateError
from tortie.lab.state import (
    Journal,
    LabState,
    LinkRecord,
    NodeDirs,
    PodRecord,
    ProcessRecord,
    load_state,
    state_path,
)


def full_state(tmp_path: Path) -> LabState:
    return LabState(
        name="seed",
        lab_dir=str(tmp_path),
        token="ab" * 16,
        options={"name": "seed", "nodes": 2},
        phase="up",
        lab_id=7,
        id_link="/run/tortie/lab-ids/7",
        builder=ProcessRecord("builder", 10, 1234, ("python", "-m", "tortie")),
        datastore="sqlite:///x.db",
        datastore_is_ours=True,
        datastore_created=[("IPPool", "default-ipv4-ippool")],
        dirs=["/a", "/b"],
        mounts=["/b/bpf"],
        namespaces=["tl7-w", "tl7-r"],
        links=[LinkRecord("tl7-w", "tl7-br1"), LinkRecord("tl7-w", "tl7-n1", "tl7-n1", "eth0")],
        processes=[ProcessRecord("agent", 11, 99, ("tortie", "node", "run"), "node1", "/l")],
        nodes={"node1": NodeDirs("/s", "/s/bpf", "/s/net.d", "/s/bin", "/s/log")},
        pods={"pod1": PodRecord("pod1", "node1", "tl7-p1", "manual", "10.244.0.1", "cali1")},
        timings={"total": 0.2},
        error=None,
    )


def test_round_trip(tmp_path: Path) -> None:
    state = full_state(tmp_path)
    journal = Journal(state)
    journal.save()
    loaded = load_state(state_path(tmp_path))
    assert loaded == state
    assert loaded.node_processes("node1") == state.processes


def test_records_are_idempotent_and_saved_each_time(tmp_path: Path) -> None:
    seen: list[int] = []
    journal = Journal(
        LabState(name="x", lab_dir=str(tmp_path), token="t", options={}), after_save=seen.append
    )
    journal.record_namespace("tl1-w")
    journal.record_namespace("tl1-w")
    journal.record_dir(tmp_path / "d")
    journal.record_mount(tmp_path / "d")
    journal.record_links([LinkRecord("tl1-w", "br")])
    journal.record_links([LinkRecord("tl1-w", "br")])
    journal.record_datastore_resource("IPPool", "p")
    journal.record_datastore_resource("IPPool", "p")
    assert seen == [1, 2, 3, 4, 5]
    on_disk = json.loads(state_path(tmp_path).read_text())
    assert on_disk["namespaces"] == ["tl1-w"]
    assert on_disk["datastore_created"] == [["IPPool", "p"]]
    assert load_state(state_path(tmp_path)).datastore_created == [("IPPool", "p")]
    assert not (tmp_path / "state.json.tmp").exists()


def test_set_rejects_unknown_fields(tmp_path: Path) -> None:
    journal = Journal(LabState(name="x", lab_dir=str(tmp_path), token="t", options={}))
    journal.set(phase="up")
    assert load_state(state_path(tmp_path)).phase == "up"
    with pytest.raises(AttributeError):
        journal.set(colour="blue")


@pytest.mark.parametrize("text", ["{", "[]", '{"version": 99}', '{"version": 1}'])
def test_unreadable_state(tmp_path: Path, text: str) -> None:
    path = state_path(tmp_path)
    path.write_text(text)
    with pytest.raises(LabStateError):
        load_state(path)


def test_missing_state_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_state(state_path(tmp_path))
