"""The vm guest builder's kernel sources (scripts/vm/vmguest.py), without apt or qemu."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts" / "vm"))

import vmguest  # lives in scripts/vm, tortie-independent


def unpack(root: Path, package: str, version: str) -> None:
    base = root / package
    (base / "boot").mkdir(parents=True)
    (base / "boot" / f"vmlinuz-{version}").write_bytes(b"")
    (base / "lib" / "modules" / version).mkdir(parents=True)
    (base / ".complete").write_text(f"{package}.deb\n")


@pytest.fixture
def no_installed_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vmguest, "_installed_kernel", lambda: None)


@pytest.mark.usefixtures("no_installed_kernel")
def test_a_backports_kernel_in_the_cache_never_shadows_the_stable_one(tmp_path: Path) -> None:
    unpack(tmp_path / "kernels", "linux-image-6.1.0-56-cloud-amd64", "6.1.0-56-cloud-amd64")
    unpack(
        tmp_path / "kernels-backports",
        "linux-image-6.12.95+deb12-cloud-amd64",
        "6.12.95+deb12-cloud-amd64",
    )
    stable = vmguest.find_kernel(tmp_path, fetch=False)
    backports = vmguest.find_kernel(tmp_path, fetch=False, source="backports")
    assert stable.version == "6.1.0-56-cloud-amd64"
    assert backports.version == "6.12.95+deb12-cloud-amd64"
    assert backports.modules == (
        tmp_path
        / "kernels-backports/linux-image-6.12.95+deb12-cloud-amd64/lib/modules"
        / "6.12.95+deb12-cloud-amd64"
    )


@pytest.mark.usefixtures("no_installed_kernel")
def test_a_missing_kernel_without_fetching_names_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(vmguest.VMUnavailableError, match="kernels-backports"):
        vmguest.find_kernel(tmp_path, fetch=False, source="backports")
    with pytest.raises(vmguest.VMError, match="unknown kernel source 'sid'"):
        vmguest.find_kernel(tmp_path, fetch=False, source="sid")


def test_backports_are_read_through_a_private_apt_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vmguest, "_os_codename", lambda: "bookworm")
    monkeypatch.delenv(vmguest.BACKPORTS_MIRROR_ENV, raising=False)
    options = vmguest._backports_apt(tmp_path)
    settings = dict(o.split("=", 1) for o in options if "=" in o)
    assert (tmp_path / "sources.list").read_text() == (
        f"deb [signed-by={vmguest.DEBIAN_KEYRING}] http://deb.debian.org/debian "
        "bookworm-backports main\n"
    )
    # Nothing of the host's apt state is read or written: sources, lists and cache are ours.
    assert settings["Dir::Etc::SourceList"] == str(tmp_path / "sources.list")
    assert settings["Dir::Etc::SourceParts"] == "/nonexistent"
    assert settings["Dir::State::Lists"] == str(tmp_path / "lists")
    assert settings["Dir::Cache"] == str(tmp_path / "cache")
    assert (tmp_path / "lists" / "partial").is_dir()
