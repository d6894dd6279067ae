"""The manager contract's shared parts: the result type, the per-key backoff and the summary
the loop publishes (issue 18, items 1 and 3)."""

from __future__ import annotations

import errno

import pytest

from tortie.agent.manager import Result, State
from tortie.agent.retry import RETRY_MAX, RETRY_MIN, Backoff
from tortie.dataplane.errors import DataplaneError
from tortie.dataplane.netlink import NetlinkError

pytestmark = pytest.mark.unit


def failing(key: str, error: Exception | None = None, message: str = "") -> Result:
    result = Result()
    result.fail(key, message or f"{key} failed", error)
    return result


def test_absent_keys_are_done_and_an_empty_result_is_converged() -> None:
    result = Result()
    assert result.converged
    result.done("tunl0")
    assert result.converged and result.items["tunl0"].state is State.DONE
    result.defer("route 10.0.0.0/26", "route(s) wait for their device")
    assert not result.converged


def test_a_failure_takes_retryable_from_its_dataplane_error() -> None:
    assert failing("a", NetlinkError(errno.EBUSY)).items["a"].retryable
    assert not failing("a", NetlinkError(errno.EPERM)).items["a"].retryable
    assert failing("a", ValueError("not a dataplane error")).items["a"].retryable
    result = Result()
    result.fail("route x", "route x: held by a foreign route", retryable=False)
    assert not result.items["route x"].retryable


def test_each_failing_key_backs_off_on_its_own() -> None:
    backoff = Backoff()
    delays = [backoff.after_pass({"tunnel": failing("tunl0")}).delay for _ in range(8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, RETRY_MAX, RETRY_MAX]
    # Another key failing for the first time is retried soon, whatever the first one's count.
    both = {"tunnel": failing("tunl0"), "firewall": failing("table")}
    assert backoff.after_pass(both).delay == RETRY_MIN
    assert backoff.attempts == {"tunnel/tunl0": 9, "firewall/table": 1}
    # A key that did not fail starts again from the minimum.
    backoff.after_pass({"firewall": failing("table")})
    assert backoff.after_pass({"tunnel": failing("tunl0")}).delay == RETRY_MIN


def test_what_only_a_person_can_fix_is_retried_at_the_slowest_pace() -> None:
    missing = DataplaneError("BPF object missing: run `make -C bpf`", retryable=False)
    outcome = Backoff().after_pass({"tunnel": failing("tunl0", missing)})
    assert outcome.delay == RETRY_MAX and not outcome.converged


def test_the_summary_lists_failures_first_then_counts_what_waits() -> None:
    routes = Result()
    for i in range(3):
        routes.defer(f"route 10.0.{i}.0/26", "route(s) wait for their device")
    routes.retry("route 10.0.9.0/26", "CNI route(s) in their grace period", 4.0)
    outcome = Backoff().after_pass({"routes": routes})
    assert not outcome.converged and not outcome.problems
    assert outcome.detail == (
        "3 route(s) wait for their device; 1 CNI route(s) in their grace period"
    )
    assert outcome.delay == RETRY_MIN  # polled: the earliest of the waits
    fw = failing("table", DataplaneError("nft refused"), "nftables: nft refused")
    outcome = Backoff().after_pass({"firewall": fw, "routes": routes})
    assert outcome.detail.startswith("nftables: nft refused; 3 route(s) wait")
    assert outcome.delay == RETRY_MIN and outcome.dataplane_errors == 1


def test_failures_set_the_pace_not_the_waits() -> None:
    """A failing key is not retried faster because something else is waiting (as before the
    managers: the backoff bounds how often a failing node retries)."""
    backoff = Backoff()
    routes = Result()
    routes.defer("route 10.0.0.0/26", "route(s) wait for their device")
    for _ in range(3):
        outcome = backoff.after_pass({"firewall": failing("table"), "routes": routes})
    assert outcome.delay == 2.0


def test_a_wake_up_is_honoured_even_when_all_is_done() -> None:
    gc = Result()
    gc.wake(300.0)
    bgp = Result()
    bgp.wake(4.0)
    bgp.wake(6.0)
    outcome = Backoff().after_pass({"bgp": bgp, "gc": gc})
    assert outcome.converged and outcome.detail == "ok" and outcome.delay == 4.0
    assert Backoff().after_pass({"routes": Result()}).delay is None
