"""The ``kernel`` IPIP backend passes pod traffic through a real ``tunl0`` (in a qemu guest).

Problem: this host's kernel has no ipip module, so everywhere else tortie runs the ``bpf``
backend; these tests boot Debian's cloud kernel (which has ipip) and run tortie's own code in
it (``guest_kernel_ipip.py``: two nodes joined by a veth, a pod on each, node 1 with
``--ipip-backend auto`` and node 2 with ``kernel``). One guest run is shared by the scenario
tests (a boot plus the scenario takes 20-50 s under TCG); a smoke test checks the runner.

What is proven: ``auto`` picks the kernel backend in the guest and logs why; ``ensure_device``
brings a real ipip tunl0 to MTU 1480, up, with the /32 tunnel address, and a second call
changes nothing; the routes are the agent's own (``compute_routes``), which name ``tunl0``
exactly as they do with the bpf backend; pod-to-pod pings cross the node link as IP protocol 4
between the node IPs with the pod IPs inside, DF at 1480 passes and 1481 does not, and the
tunl0 counters move.

A second guest run (``bpf,kernel``) puts the tc-BPF backend on node 1 of that older kernel and
the ipip module on node 2: the loader falls back to ``ipip-compat.o`` where ``ipip.o``'s kfuncs
(6.2+) are missing, and pod traffic crosses between the two implementations both ways (wire
interop: the module decapsulates what the BPF program builds, and the reverse).
"""

from __future__ import annotations

import json
import secrets
import sys
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

import pytest
import vmguest  # scripts/vm, put on sys.path by this directory's conftest

from tortie.agent.desired import LocalNode, PoolInfo, RemotePrefix, Workload, compute_routes
from tortie.dataplane.routes import RouteSpec

RunVM = Callable[..., vmguest.RunResult]
GUEST_SCRIPT = Path(__file__).with_name("guest_kernel_ipip.py")
RESULT_MARK = "TORTIE-VM-RESULT "
NODE_IP = {1: "192.168.49.2", 2: "192.168.49.3"}
POD_IP = {1: "10.65.1.2", 2: "10.65.2.2"}
BLOCK = {1: "10.65.1.0/26", 2: "10.65.2.0/26"}


def test_runner_returns_output_and_exit_code_and_keeps_the_host_untouched(run_vm: RunVM) -> None:
    probe = f"/var/tmp/tortie-vm-probe-{secrets.token_hex(4)}"
    result = run_vm(
        f"echo to-stdout; echo to-stderr >&2; uname -r; test -d /sys/module/ipip && echo ipip; "
        f"echo x > {probe} && echo wrote; exit 3",
        timeout=120,
    )
    assert result.exit_code == 3, result.output
    lines = result.output.splitlines()
    assert lines[:2] == ["to-stdout", "to-stderr"]
    assert lines[2].endswith("-cloud-amd64") and lines[3:] == ["ipip", "wrote"]
    assert not Path(probe).exists(), "a guest write reached the host"


def run_scenario(run_vm: RunVM, modes: str) -> dict[str, Any]:
    """The guest scenario's report for node modes ``modes`` (e.g. ``auto,kernel``)."""
    result = run_vm([sys.executable, str(GUEST_SCRIPT), modes], timeout=270)
    report = [line for line in result.output.splitlines() if line.startswith(RESULT_MARK)]
    assert result.exit_code == 0 and report, (
        f"guest scenario {modes} failed (exit {result.exit_code}):\n{result.output[-6000:]}"
    )
    print(f"guest scenario {modes}: {result.seconds:.1f} s")
    data: dict[str, Any] = json.loads(report[-1][len(RESULT_MARK) :])
    data["log"] = result.output
    return data


@pytest.fixture(scope="module")
def scenario(run_vm: RunVM) -> dict[str, Any]:
    """Node 1: ``auto``, node 2: ``kernel``; run once."""
    return run_scenario(run_vm, "auto,kernel")


@pytest.fixture(scope="module", params=["stable", "backports"])
def interop(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Node 1: the tc-BPF backend, node 2: the ipip module; once per guest kernel.

    ``stable`` (Debian 12's 6.1) takes only ``ipip-compat.o``; ``backports`` (6.12) must take
    ``ipip.o``, so both builds meet the real module on the wire.
    """
    run_vm: RunVM = request.getfixturevalue(
        "run_vm_backports" if request.param == "backports" else "run_vm"
    )
    report = run_scenario(run_vm, "bpf,kernel")
    report["source"] = request.param
    return report


def kernel_has_kfuncs(uname: str) -> bool:
    """Whether ``ipip.o``'s kfuncs (bpf_cast_to_kern_ctx, bpf_rdonly_cast) exist: 6.2+."""
    major, minor = (int(x) for x in uname.split(".")[:2])
    return (major, minor) >= (6, 2)


def test_auto_chooses_the_kernel_backend_and_says_why(scenario: dict[str, Any]) -> None:
    n1, n2 = scenario["n1"], scenario["n2"]
    assert (n1["mode"], n1["backend"]) == ("auto", "kernel")
    assert n1["why"] == "auto: kernel (tunl0 is an ipip device)"
    said = "tortie.dataplane.ipip_choice: ipip backend auto -> kernel: tunl0 is an ipip device"
    assert said in n1["log"]
    assert (n2["mode"], n2["backend"], n2["why"]) == ("kernel", "kernel", "configured: kernel")


def test_ensure_device_sets_up_a_real_tunl0_once(scenario: dict[str, Any]) -> None:
    for i in (1, 2):
        node = scenario[f"n{i}"]
        # The module made tunl0 in the namespace already (the fallback device), down.
        assert node["tunl0_before"] == {"kind": "ipip", "mtu": 1480, "up": False}
        assert node["ensure_1"] == ["tunl0 up", f"added address 10.65.{i}.1/32 to tunl0"]
        assert node["ensure_2"] == [], "a second ensure_device must change nothing"
        assert node["tunl0"] == {"kind": "ipip", "mtu": 1480, "up": True}
        assert node["tunl0_addrs"] == [f"10.65.{i}.1/32"]


def _expected_specs(i: int, cali: str) -> list[RouteSpec]:
    """Node i's routes as the bpf-backed agent on this host computes and programs them."""
    other = 3 - i
    return [
        RouteSpec.blackhole(BLOCK[i]),
        RouteSpec.via(BLOCK[other], NODE_IP[other], "tunl0", onlink=True),
        RouteSpec.link(f"{POD_IP[i]}/32", cali),
    ]


def test_routes_are_the_same_as_with_the_bpf_backend(scenario: dict[str, Any]) -> None:
    for i in (1, 2):
        node, other = scenario[f"n{i}"], 3 - i
        # Computed here (the host, where the agent runs the bpf backend) from the same inputs.
        here = compute_routes(
            LocalNode(f"node{i}", IPv4Interface(f"{NODE_IP[i]}/24"), "eth0"),
            [PoolInfo(IPv4Network("10.65.0.0/16"), ipip_mode="Always")],
            [IPv4Network(BLOCK[i])],
            [RemotePrefix(IPv4Network(BLOCK[other]), IPv4Address(NODE_IP[other]))],
            [Workload(IPv4Network(f"{POD_IP[i]}/32"), node["cali"])],
        )
        assert sorted(map(str, here.specs)) == node["specs"]
        assert sorted(map(str, _expected_specs(i, node["cali"]))) == node["specs"]
        # Both backends own the same device name, so the same specs route into either.
        assert node["tunnel_device"] == node["bpf_device"] == "tunl0"
        # The kernel holds exactly those (proto 80), and a resync writes nothing.
        kernel = sorted(line.strip() for line in node["kernel_routes"].splitlines())
        assert kernel == sorted(
            [
                f"blackhole {BLOCK[i]}",
                f"{BLOCK[other]} via {NODE_IP[other]} dev tunl0 onlink",
                f"{POD_IP[i]} dev {node['cali']} scope link",
            ]
        )
        assert node["apply_1"] == {"converged": True, "added": 3}
        assert node["apply_2"] == {"converged": True, "writes": 0}


def assert_pods_talk_over_ipip(report: dict[str, Any]) -> None:
    """The pings passed, DF at the 1480 MTU as expected, and n1's uplink saw only IPIP."""
    pings = report["pings"]
    assert [p["rc"] for p in pings[:3]] == [0, 0, 0], pings
    # DF: 1452 bytes of payload make a 1480-byte packet (passes); 1453 does not fit tunl0.
    assert pings[3]["rc"] != 0 and "message too long, mtu=1480" in pings[3]["out"], pings[3]
    frames = report["frames"]
    ipip = [f for f in frames if f["proto"] == 4]
    seen = {(f["src"], f["dst"], *f["inner"]) for f in ipip}
    assert (NODE_IP[1], NODE_IP[2], POD_IP[1], POD_IP[2], 1) in seen, frames
    assert (NODE_IP[2], NODE_IP[1], POD_IP[2], POD_IP[1], 1) in seen, frames
    # Pod addresses never appear bare on the node link; the full-size packet fills it exactly.
    assert not [f for f in frames if {f["src"], f["dst"]} & set(POD_IP.values())], frames
    assert max(f["len"] for f in ipip) == 1500


def test_pod_traffic_crosses_the_node_link_as_ipip(scenario: dict[str, Any]) -> None:
    assert_pods_talk_over_ipip(scenario)

    before, after = scenario["counters_before"], scenario["counters_after"]
    # n1's tunl0 sent 3 + 1 + 1 requests/replies and received as many (the 1453 never left).
    assert after["tx_packets"] - before["tx_packets"] >= 5, scenario["tunl0_stats"]
    assert after["rx_packets"] - before["rx_packets"] >= 5, scenario["tunl0_stats"]


def test_bpf_backend_loads_the_build_the_guest_kernel_takes(interop: dict[str, Any]) -> None:
    n1, n2 = interop["n1"], interop["n2"]
    assert (n1["mode"], n1["backend"], n2["backend"]) == ("bpf", "bpf", "kernel")
    kfuncs = kernel_has_kfuncs(interop["uname"])
    if interop["source"] == "backports":  # else this run would only repeat the compat build's
        assert kfuncs, f"the backports guest runs {interop['uname']}, which lacks ipip.o's kfuncs"
    loaded = [c for c in n1["ensure_1"] if c.startswith("loaded ")]
    build = "ipip.o" if kfuncs else "ipip-compat.o"
    assert len(loaded) == 1 and loaded[0].startswith(f"loaded {build} into"), n1["ensure_1"]
    refused = [c for c in n1["ensure_1"] if c.startswith("not loaded: ")]
    if kfuncs:
        assert refused == [], n1["ensure_1"]
    else:  # Debian 12's 6.1: the verifier does not know the kfuncs
        assert len(refused) == 1 and "ipip.o" in refused[0], n1["ensure_1"]
    assert n1["ensure_2"] == [], "a second ensure_device must change nothing"
    assert n1["tunl0"] == {"kind": "veth", "mtu": 1480, "up": True}  # the placeholder
    assert n2["tunl0"] == {"kind": "ipip", "mtu": 1480, "up": True}


def test_tc_bpf_ipip_and_the_ipip_module_carry_each_others_packets(
    interop: dict[str, Any],
) -> None:
    assert_pods_talk_over_ipip(interop)  # n1 -> n2 built by BPF, n2 -> n1 by the module
    before, after = interop["counters_before"], interop["counters_after"]
    sent = after["encap_ok"] - before["encap_ok"]
    assert sent >= 5 and after["decap_ok"] - before["decap_ok"] >= 5, after
    looked_up = after["encap_gw_by_lookup"] - before["encap_gw_by_lookup"]
    assert looked_up == (0 if kernel_has_kfuncs(interop["uname"]) else sent), after
