"""Test tiers as markers, and "a skipped tier fails CI".

- Every test gets the marker of its directory: tests/unit -> ``unit``, tests/netns ->
  ``netns``, tests/interop -> ``interop``, tests/e2e -> ``e2e``, tests/vm -> ``vm``. So
  ``pytest -m unit`` runs the fast tier, and no test can forget its tier.
- Tiers that need root (netns, e2e, vm) skip without root on a developer's machine.
- With ``TORTIE_REQUIRE_ALL=1`` (set by ``make test``, which CI runs) a skip is a failure: a
  tier whose dependency failed to install must fail the run, not pass silently. A test that
  is genuinely not applicable says so with a reason starting ``not applicable:``.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path

import pytest

TIERS = ("unit", "netns", "interop", "e2e", "vm")
ROOT_TIERS = {"netns", "e2e", "vm"}
NOT_APPLICABLE = "not applicable:"


def require_all() -> bool:
    return os.environ.get("TORTIE_REQUIRE_ALL") == "1"


def _tier_of(path: Path) -> str | None:
    """The directory right under the innermost ``tests`` directory, if it names a tier."""
    parts = path.parts
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "tests":
            return parts[i + 1] if parts[i + 1] in TIERS else None
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = _tier_of(Path(item.path))
        if tier is not None:
            item.add_marker(getattr(pytest.mark, tier))
            if tier in ROOT_TIERS and os.geteuid() != 0:
                item.add_marker(pytest.mark.skip(reason=f"the {tier} tier needs root"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if not (require_all() and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = ""
    if isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2])
    if NOT_APPLICABLE in reason:
        return
    report.outcome = "failed"
    report.longrepr = (
        f"skipped under TORTIE_REQUIRE_ALL=1, which makes a skip a failure: {reason}\n"
        "Install the missing dependency (scripts/install-deps) or run as root."
    )
