"""``tortie node run`` while its datastore is not usable (issue 17, items 1 and 9): it waits
with backoff instead of exiting, writes a status saying what it waits for (``tortie node
status`` prints it), creates a store only on its first start, and proceeds once it can."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from ipaddress import IPv4Interface
from pathlib import Path
from typing import Any

import pytest

from tortie.agent import run
from tortie.agent.config import AgentConfig, NodeAddress
from tortie.agent.trust import record_path
from tortie.ctl.main import main
from tortie.dataplane.fake_netlink import FakeNetlink
from tortie.datastore.api import Compare, Datastore, DatastoreError, Op, TxnResult, UnavailableError
from tortie.datastore.factory import open_datastore
from tortie.datastore.resources import ResourceStore
from tortie.model.resources import Node

pytestmark = pytest.mark.unit

WAIT = 60.0  # generous deadlines, never asserted on as timings


def wait_for(cond: Callable[[], object], what: str) -> Any:
    end = time.monotonic() + WAIT
    while time.monotonic() < end:
        got = cond()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class BreaksAtRegistration:
    """A store that opened fine and then broke: writes fail until ``heal`` is set."""

    def __init__(self, inner: Datastore) -> None:
        self._inner = inner
        self.heal = threading.Event()
        self.failed = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        if not self.heal.is_set():
            self.failed += 1
            raise UnavailableError(self._inner.url, "disk I/O error")
        return self._inner.txn(compares, ops)


class FakeFirewall:
    def ensure_table(self) -> list[str]:
        return []

    def resync(self) -> list[str]:
        return []

    def set_node_ips(self, ips: object) -> list[str]:
        return []

    def set_pools(self, all_cidrs: object, nat_cidrs: object) -> list[str]:
        return []

    def set_workloads(self, endpoints: object) -> list[str]:
        return []

    def counters(self) -> dict[str, int]:
        return {}


@pytest.fixture
def fake_node(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """run_agent on a fake kernel: no netlink socket, no nftables, no BGP."""
    import tortie.dataplane.kernel_netlink as kernel_netlink

    def fake_netlink() -> FakeNetlink:
        nl = FakeNetlink()
        nl.add_link("eth0", kind=None)
        return nl

    monkeypatch.setattr(kernel_netlink, "Pyroute2Netlink", fake_netlink)
    monkeypatch.setattr(
        run,
        "detect_address",
        lambda *_: NodeAddress(IPv4Interface("192.168.49.2/24"), "eth0", "test"),
    )
    monkeypatch.setattr(run, "NftablesManager", FakeFirewall)
    yield


def config(tmp_path: Path, url: str) -> AgentConfig:
    return AgentConfig(
        node_name="node1",
        datastore_url=url,
        state_dir=tmp_path / "state",
        bgp=False,
        kernel_monitor=False,  # a fake kernel: nothing to monitor
    )


def start(cfg: AgentConfig) -> tuple[threading.Thread, threading.Event, list[BaseException]]:
    stop = threading.Event()
    errors: list[BaseException] = []

    def body() -> None:
        try:
            run.run_agent(cfg, stop)
        except BaseException as err:
            errors.append(err)

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t, stop, errors


def status_of(cfg: AgentConfig) -> dict[str, Any] | None:
    try:
        doc: dict[str, Any] = json.loads(cfg.status_file.read_text())
    except (OSError, ValueError):
        return None
    return doc


def test_registration_failure_is_waited_out_and_the_status_says_so(
    tmp_path: Path,
    fake_node: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Item 9: the store opens, then registration fails (the database broke in between). The
    agent used to exit; now it waits with backoff, its status (and `tortie node status`)
    says what it waits for, and it registers once the store heals."""
    url = f"sqlite://{tmp_path}/ds.db"
    open_datastore(url, create=True).close()
    broken: list[BreaksAtRegistration] = []

    def opener(u: str, *, create: bool = False) -> Datastore:
        broken.append(BreaksAtRegistration(open_datastore(u, create=create)))
        return broken[-1]  # type: ignore[return-value]

    monkeypatch.setattr(run, "open_datastore", opener)
    cfg = config(tmp_path, url)
    thread, stop, errors = start(cfg)
    try:
        doc = wait_for(
            lambda: (s := status_of(cfg)) and "registering node node1" in s["detail"] and s,
            "a status saying the agent waits for its registration",
        )
        assert doc["phase"] == "starting" and "disk I/O error" in doc["detail"]
        assert thread.is_alive() and not errors
        wait_for(lambda: broken[0].failed >= 2, "a second registration attempt (backoff)")
        assert main(["node", "status", "--name", "node1", "--state-dir", str(cfg.state_dir)]) == 0
        out = capsys.readouterr().out
        assert "tortie agent is starting" in out and "registering node node1" in out
        assert "not running" not in out
        broken[0].heal.set()
        wait_for(lambda: (s := status_of(cfg)) and "phase" not in s, "the running status")
        store = open_datastore(url)
        try:
            assert ResourceStore(store).get(Node, "node1") is not None
        finally:
            store.close()
    finally:
        stop.set()
        thread.join(WAIT)
    assert not errors, errors


def test_a_first_start_creates_the_store_a_later_one_waits_for_it(
    tmp_path: Path, fake_node: None
) -> None:
    """Item 1: only a node that has never used a datastore creates one; once it has (its state
    dir records the store), a missing store was moved away: it waits, and says so."""
    db = tmp_path / "ds.db"
    url = f"sqlite://{db}"
    cfg = config(tmp_path, url)
    thread, stop, errors = start(cfg)
    try:
        wait_for(lambda: (s := status_of(cfg)) and "phase" not in s, "the first start to run")
        assert db.exists() and record_path(cfg.node_state_dir).exists()
    finally:
        stop.set()
        thread.join(WAIT)
    assert not errors, errors
    db.rename(tmp_path / "away.db")
    thread, stop, errors = start(cfg)
    try:
        doc = wait_for(
            lambda: (s := status_of(cfg)) and "does not exist" in s["detail"] and s,
            "a status saying the store is missing",
        )
        assert doc["phase"] == "starting" and "waiting for the datastore" in doc["detail"]
        assert not db.exists()  # not created again
        (tmp_path / "away.db").rename(db)
        wait_for(lambda: (s := status_of(cfg)) and "phase" not in s, "the agent to go on")
    finally:
        stop.set()
        thread.join(WAIT)
    assert not errors, errors


def test_open_store_waiting_raises_only_for_a_bad_url(tmp_path: Path) -> None:
    stop = threading.Event()
    seen: list[str] = []

    def waiting(why: str) -> None:
        seen.append(why)
        if len(seen) == 2:
            open_datastore(f"sqlite://{tmp_path}/late.db", create=True).close()

    store = run.open_store_waiting(f"sqlite://{tmp_path}/late.db", stop, waiting=waiting)
    assert store is not None
    store.close()
    assert all("does not exist" in w for w in seen)
    with pytest.raises(DatastoreError, match="invalid datastore URL"):
        run.open_store_waiting("sqlite://host/x.db", stop)
