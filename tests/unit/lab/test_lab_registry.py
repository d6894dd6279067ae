"""Lab directories, host-wide ids and the per-lab lock."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tortie.lab.errors import LabAmbiguousError, LabBusyError, LabNotFoundError
from tortie.lab.registry import LabPaths, allocate_id, is_locked, lab_lock, owner_of, release_ids


@pytest.fixture
def paths(tmp_path: Path) -> LabPaths:
    (tmp_path / "netns").mkdir()
    return LabPaths(root=tmp_path / "labs", ids_dir=tmp_path / "ids", netns_dir=tmp_path / "netns")


def test_ids_are_smallest_free_and_skip_foreign_namespaces(paths: LabPaths) -> None:
    a, b, c = (paths.root / n for n in "abc")
    assert allocate_id(paths, a)[0] == 1
    (paths.netns_dir / "tl2-n1").touch()  # something else uses prefix tl2-
    (paths.netns_dir / "tl30-n1").touch()
    assert allocate_id(paths, b)[0] == 3
    assert owner_of(paths, 3) == os.fspath(b)
    assert release_ids(paths, a) == [paths.ids_dir / "1"]
    assert release_ids(paths, a) == []
    assert allocate_id(paths, c)[0] == 1
    assert owner_of(paths, 3) == os.fspath(b)  # untouched


def test_resolve(paths: LabPaths) -> None:
    with pytest.raises(LabNotFoundError, match="tortie lab up"):
        paths.resolve(None)
    (paths.root / "one").mkdir(parents=True)
    assert paths.resolve(None) == "one"
    assert paths.resolve("one") == "one"
    (paths.root / "two").mkdir()
    with pytest.raises(LabAmbiguousError, match="one, two"):
        paths.resolve(None)
    with pytest.raises(LabNotFoundError, match="labs: one, two"):
        paths.resolve("three")


def test_lock_is_exclusive(tmp_path: Path) -> None:
    assert not is_locked(tmp_path)
    with lab_lock(tmp_path):
        assert is_locked(tmp_path)
        with pytest.raises(LabBusyError, match="locked"), lab_lock(tmp_path, wait=0.1):
            pass
    assert not is_locked(tmp_path)
