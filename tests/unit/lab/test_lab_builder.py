"""``lab up``/``lab down`` against a fake kernel: write-ahead recording, exact teardown,
failures, idempotence; and the printed plan (``--dry-run``) and reference wiring."""

from __future__ import annotations

from pathlib import Path

import pytest
from lab_fake_kernel import FakeKernel

from tortie.lab import reference
from tortie.lab.builder import UpSettings, lab_up, plan
from tortie.lab.errors import LabBuildError, LabError, LabExistsError, LabNotFoundError
from tortie.lab.registry import LabPaths
from tortie.lab.state import load_state
from tortie.lab.steps import shell_lines
from tortie.lab.teardown import lab_down
from tortie.lab.topology import LabOptions, build_topology


@pytest.fixture
def paths(tmp_path: Path) -> LabPaths:
    (tmp_path / "netns").mkdir()
    return LabPaths(root=tmp_path / "labs", ids_dir=tmp_path / "ids", netns_dir=tmp_path / "netns")


OPTIONS = LabOptions(name="unit", nodes=3, subnets=2, pods_per_node=2, wire_pods="manual")


def test_up_records_everything_before_creating_it(paths: LabPaths) -> None:
    kernel = FakeKernel(paths.lab_dir("unit"))
    lines: list[str] = []
    state = lab_up(OPTIONS, paths, lines.append, kernel=kernel)
    topology = build_topology(OPTIONS, state.lab_id or 0)
    assert state.phase == "up"
    assert state.lab_id == 1
    assert set(state.namespaces) == set(topology.namespaces()) == kernel.namespaces
    recorded_links = {(x.netns, x.name) for x in state.links}
    created = {(ns, cmd.split()[2]) for ns, cmd in kernel.calls if cmd.startswith("link add")}
    assert created == recorded_links
    assert {str(p) for p in kernel.mounted} == set(state.mounts)
    assert set(state.nodes) == {"node1", "node2", "node3"}
    assert [p.ip for p in state.pods.values()] == [str(p.manual_ip) for p in topology.pods]
    assert any("is up" in line for line in lines)
    assert load_state(paths.state_file("unit")) == state
    assert (paths.ids_dir / "1").is_symlink()


def test_down_removes_exactly_what_was_recorded(paths: LabPaths) -> None:
    kernel = FakeKernel(paths.lab_dir("unit"))
    state = lab_up(OPTIONS, paths, kernel=kernel)
    kernel.calls.clear()
    lab_down(paths, "unit", kernel=kernel)
    deleted = [name for op, name in kernel.calls if op == "netns_delete"]
    assert deleted == list(reversed(state.namespaces))
    assert not kernel.namespaces and not kernel.mounted
    assert not paths.lab_dir("unit").exists()
    assert not (paths.ids_dir / "1").exists()
    with pytest.raises(LabNotFoundError):
        lab_down(paths, "unit", kernel=kernel)


def test_failed_step_leaves_a_recorded_lab_that_down_removes(paths: LabPaths) -> None:
    kernel = FakeKernel(paths.lab_dir("unit"), fail_on="route add default")
    with pytest.raises(LabBuildError, match="tortie lab down --name unit") as err:
        lab_up(OPTIONS, paths, kernel=kernel)
    assert "injected failure" in str(err.value)
    state = load_state(paths.state_file("unit"))
    assert state.phase == "failed" and state.error and "injected" in state.error
    assert kernel.namespaces  # half-built
    with pytest.raises(LabExistsError, match="tortie lab down --name unit"):
        lab_up(OPTIONS, paths, kernel=kernel)
    lab_down(paths, "unit", kernel=kernel)
    assert not kernel.namespaces and not kernel.mounted
    assert not paths.lab_dir("unit").exists()


def test_down_of_a_lab_killed_before_its_first_state_save(paths: LabPaths) -> None:
    paths.lab_dir("early").mkdir(parents=True)
    lab_down(paths, "early", kernel=FakeKernel(paths.lab_dir("early")))
    assert not paths.lab_dir("early").exists()


def test_two_labs_get_different_ids(paths: LabPaths) -> None:
    a = lab_up(
        LabOptions(name="a", wire_pods="manual"), paths, kernel=FakeKernel(paths.lab_dir("a"))
    )
    b = lab_up(
        LabOptions(name="b", wire_pods="manual"), paths, kernel=FakeKernel(paths.lab_dir("b"))
    )
    assert (a.lab_id, b.lab_id) == (1, 2)
    assert not set(a.namespaces) & set(b.namespaces)


def test_plan_shows_the_whole_build() -> None:
    lines = plan(build_topology(LabOptions(nodes=2, subnets=2), 1))
    text = "\n".join(lines)
    assert lines[0] == "ip netns add tl1-w"
    assert "ip -n tl1-w link add tl1-br1 type bridge stp_state 0 forward_delay 0" in text
    assert "ip -n tl1-w link add tl1-n2 type veth peer name eth0 netns tl1-n2" in text
    assert "ip -n tl1-n2 addr add 192.168.50.2/24 dev eth0" in text
    assert "ip -n tl1-n1 route add default via 192.168.49.1 dev eth0" in text
    assert "ip -n tl1-r route add 10.244.0.64/26 via 192.168.50.2 dev eth1" in text
    assert "ip -n tl1-n1 route add 10.244.0.64/26 via 192.168.49.1 dev eth0" in text
    assert "sysctl -qw net/ipv4/ip_forward=1" in text


def test_reference_pod_wiring_is_calicos() -> None:
    from ipaddress import IPv4Address

    steps = reference.pod_steps("n", "p", "cali123", IPv4Address("10.244.0.7"), mtu=1480)
    lines = shell_lines(steps)
    assert lines == [
        "ip -n n link add cali123 mtu 1480 type veth peer name eth0 mtu 1480 netns p",
        "ip -n n link set cali123 address ee:ee:ee:ee:ee:ee up",
        "nsenter --net=/run/netns/n sysctl -qw net/ipv4/conf/cali123/proxy_arp=1",
        "nsenter --net=/run/netns/n sysctl -qw net/ipv4/neigh/cali123/proxy_delay=0",
        "nsenter --net=/run/netns/n sysctl -qw net/ipv4/conf/cali123/forwarding=1",
        "ip -n n route add 10.244.0.7/32 dev cali123 scope link",
        "ip -n p addr add 10.244.0.7/32 dev eth0",
        "ip -n p link set eth0 up",
        "ip -n p route add 169.254.1.1 dev eth0 scope link",
        "ip -n p route add default via 169.254.1.1 dev eth0",
    ]


def test_a_root_too_deep_for_the_agents_sockets_is_refused_before_anything(tmp_path: Path) -> None:
    """Found by the fault suite: under a deep lab root the node agents could not open their
    BGP speaker's socket (a unix socket path holds 107 bytes), yet ``lab up`` succeeded and
    the lab ran without BGP. Now refused at once, naming the path; nothing is made."""
    deep = tmp_path / ("d" * max(1, 80 - len(str(tmp_path))))
    (deep / "netns").mkdir(parents=True)
    paths = LabPaths(root=deep / "labs", ids_dir=deep / "ids", netns_dir=deep / "netns")
    kernel = FakeKernel(paths.lab_dir("unit"))
    options = LabOptions(name="unit", nodes=2, pods_per_node=0, wire_pods="manual", agents=True)
    # A harmless agent command: without the check, lab up would start it in /run/netns/tl1-n1,
    # a real namespace path (another lab's, if one has id 1).
    harmless = UpSettings(agent_template="true")
    with pytest.raises(LabError, match=r"node2/\S+: too long for a unix socket") as err:
        lab_up(options, paths, kernel=kernel, settings=harmless)
    assert "shorter --root" in str(err.value)
    assert not paths.lab_dir("unit").exists() and not kernel.calls
    # Without agents nothing listens there: the same root is fine.
    lab_up(LabOptions(name="unit", nodes=2, wire_pods="manual"), paths, kernel=kernel)
    lab_down(paths, "unit", kernel=kernel)
