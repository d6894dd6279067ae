"""The firewall manager against a fake nftables table: the sets follow the view, the table
is re-read only when it must be, a refusal is retried."""

from __future__ import annotations

import pytest
from agent_views import Cluster
from test_loop import FakeFirewall

from tortie.agent.manager import State
from tortie.agent.managers.firewall import FirewallManager
from tortie.dataplane.monitor import KernelChanges
from tortie.dataplane.nft_exec import NftError

pytestmark = pytest.mark.unit


class Flaky(FakeFirewall):
    def __init__(self) -> None:
        super().__init__()
        self.errors: list[Exception] = []

    def set_pools(self, all_cidrs: object, nat_cidrs: object) -> list[str]:
        if self.errors:
            raise self.errors.pop(0)
        return super().set_pools(all_cidrs, nat_cidrs)  # type: ignore[arg-type]


@pytest.fixture
def cluster() -> Cluster:
    c = Cluster()
    c.pool(ipip="Always", nat=True)
    c.node("node2", "192.168.49.3/24")
    c.workload("pod1", "cali1234567890a", "10.244.3.7")
    c.workload("pod2", "eth0", "10.244.3.8")  # not ours: no anti-spoofing entry
    return c


def test_the_sets_follow_the_view(cluster: Cluster) -> None:
    table = Flaky()
    manager = FirewallManager(table)
    manager.update(cluster.view())
    assert manager.apply().converged
    assert table.node_ips == {"192.168.49.2", "192.168.49.3"}
    assert table.pools == ({"10.244.0.0/16"}, {"10.244.0.0/16"})
    assert table.workloads == {("cali1234567890a", "10.244.3.7")}
    assert manager.metrics().counters == {"nft_spoofed_total": 2, "nft_ipip_dropped_total": 1}
    assert manager.status() == {"firewall_counters": {"spoofed": 2, "ipip_dropped": 1}}


def test_the_table_is_reread_first_at_resync_and_when_someone_changed_it(cluster: Cluster) -> None:
    table = Flaky()
    manager = FirewallManager(table)
    view = cluster.view()
    for _ in range(3):
        manager.update(view)
        manager.apply()
    assert table.resyncs == 1
    manager.resync()
    manager.apply()
    assert table.resyncs == 2
    assert manager.on_kernel(KernelChanges()) == []
    assert manager.on_kernel(KernelChanges(firewall=True)) == ["nftables table changed"]
    manager.apply()
    assert table.resyncs == 3


def test_a_refusal_is_a_failed_item_retried_on_the_next_apply(cluster: Cluster) -> None:
    table = Flaky()
    table.errors = [NftError("Error: Could not process rule: No such file or directory")]
    manager = FirewallManager(table)
    manager.update(cluster.view())
    item = manager.apply().items["table"]
    assert item.state is State.FAILED and item.message.startswith("nftables: Error: Could not")
    assert isinstance(item.error, NftError) and item.retryable
    assert manager.apply().converged and table.pools[0] == {"10.244.0.0/16"}
