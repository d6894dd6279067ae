"""Fixtures for the CNI unit tests (helpers in cni_fakes)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cni_fakes import FakeAgent


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A private directory with a short path (sun_path is 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="ttu", dir="/tmp"))
    os.chmod(path, 0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def agent(short_dir: Path) -> Iterator[FakeAgent]:
    fake = FakeAgent(str(short_dir / "cni.sock"))
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()
