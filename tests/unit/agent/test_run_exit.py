"""``tortie node run`` and a programming error (issue 18, item 3): not retried for ever, but
logged with its traceback, the exit status non-zero, and the kernel left as it is (fail
static: the next start's resync repairs)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from test_run_waits import WAIT, FakeFirewall, config, fake_node  # noqa: F401

from tortie.agent import run
from tortie.agent.registration import register_node
from tortie.dataplane.fake_netlink import FakeNetlink
from tortie.datastore.factory import open_datastore
from tortie.datastore.resources import ResourceStore
from tortie.ipam.client import IPAM
from tortie.model.loader import load_documents

pytestmark = pytest.mark.unit

POOL = """
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pool}
spec: {cidr: 10.244.0.0/16, ipipMode: Never}
"""


@pytest.mark.parametrize(
    "error",
    [
        TypeError("set_pools() got an unexpected keyword argument 'nat'"),
        # A RuntimeError: the loop before the managers caught those and retried for ever.
        NotImplementedError("set_pools of a firewall nobody finished"),
    ],
    ids=["TypeError", "NotImplementedError"],
)
def test_a_programming_error_in_a_manager_exits_non_zero_and_touches_the_kernel_no_further(
    error: Exception,
    tmp_path: Path,
    fake_node: None,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import tortie.dataplane.kernel_netlink as kernel_netlink

    url = f"sqlite://{tmp_path}/ds.db"
    store = open_datastore(url, create=True)
    try:
        res = ResourceStore(store)
        res.apply(load_documents(POOL, "pool.yaml"))
        from ipaddress import IPv4Interface

        register_node(res, "node2", IPv4Interface("192.168.49.3/24"))
        IPAM(store).assign(node="node2", handle="x.b")  # a route node1 would program
    finally:
        store.close()
    kernels: list[FakeNetlink] = []

    def kernel() -> FakeNetlink:
        nl = FakeNetlink()
        nl.add_link("eth0", kind=None)
        kernels.append(nl)
        return nl

    monkeypatch.setattr(kernel_netlink, "Pyroute2Netlink", kernel)
    at_the_error: list[tuple[int, int]] = []

    class Broken(FakeFirewall):
        def set_pools(self, all_cidrs: object, nat_cidrs: object) -> list[str]:
            k = kernels[0]
            at_the_error.append((k.route_writes, len(k.link_ops)))
            raise error

    monkeypatch.setattr(run, "NftablesManager", Broken)
    outcome: list[object] = []

    def body() -> None:
        try:
            outcome.append(run.run_agent(config(tmp_path, url), threading.Event()))
        except BaseException as err:  # what main had: the TypeError out of run_agent
            outcome.append(err)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(WAIT)  # no stop is ever set: only the error ends the agent
    assert not thread.is_alive(), "the agent kept retrying a programming error"
    assert outcome == [run.EXIT_SOFTWARE]
    assert at_the_error == [(0, 0)]  # the first pass, before the routes manager
    kernel_now = kernels[0]
    assert (kernel_now.route_writes, len(kernel_now.link_ops)) == at_the_error[0]
    failed = [r for r in caplog.records if "the agent loop failed" in r.getMessage()]
    assert len(failed) == 1 and failed[0].exc_info is not None  # with its traceback
    assert str(error) in caplog.text
