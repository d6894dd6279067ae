"""The tier plugin itself: a skip fails the run under TORTIE_REQUIRE_ALL=1."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"


def _run(tmp_path: Path, body: str, require_all: bool) -> subprocess.CompletedProcess[str]:
    (tmp_path / "tests" / "unit").mkdir(parents=True)
    (tmp_path / "tests" / "plugins").symlink_to(PLUGINS)
    (tmp_path / "tests" / "unit" / "test_x.py").write_text(textwrap.dedent(body))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(PLUGINS)}
    if require_all:
        env["TORTIE_REQUIRE_ALL"] = "1"
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tortie_tiers",
            "-q",
            "-p",
            "no:cacheprovider",
            str(tmp_path / "tests"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )


SKIPPING = """
    import pytest
    def test_a():
        pytest.skip("etcd missing")
    def test_b():
        pytest.skip("not applicable: single process backend")
"""


def test_skip_is_failure_when_all_tiers_required(tmp_path: Path) -> None:
    r = _run(tmp_path, SKIPPING, require_all=True)
    assert r.returncode == 1, r.stdout
    assert "1 failed" in r.stdout and "1 skipped" in r.stdout, r.stdout
    assert "etcd missing" in r.stdout


def test_skip_is_skip_otherwise(tmp_path: Path) -> None:
    r = _run(tmp_path, SKIPPING, require_all=False)
    assert r.returncode == 0, r.stdout
    assert "2 skipped" in r.stdout


def test_tier_marker_from_directory(tmp_path: Path) -> None:
    body = """
        import pytest
        def test_marked(request):
            assert request.node.get_closest_marker("unit") is not None
    """
    r = _run(tmp_path, body, require_all=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("tier", ["unit"])
def test_this_module_is_unit(request: pytest.FixtureRequest, tier: str) -> None:
    assert request.node.get_closest_marker(tier) is not None
