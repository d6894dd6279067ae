"""Creating a lab's pods: a network namespace each, then wiring by the CNI plugin or by hand.

Problem: a pod is a sandbox (its own network namespace, loopback up) plus whatever its node's
CNI plugin does to it. The sandbox part is the runtime's job and the lab's; the wiring is the
plugin's (``--wire-pods cni``) or, before the plugin exists and as the benchmark's reference,
Calico's wiring done by hand (``--wire-pods manual``, :mod:`.reference`).

Invariants: each pod namespace is recorded before it is created; a pod's record (with its
address and host interface) is written before its wiring starts (manual: the address is
known; cni: the container ID is, and the address is added from the result), so ``down`` can
call CNI DEL for it and ``exec``/``ping`` can find it.
"""

from __future__ import annotations

from collections.abc import Callable

from tortie.lab import cni, reference
from tortie.lab.kernel import Kernel
from tortie.lab.network import namespace_steps
from tortie.lab.runtime import node_runtime
from tortie.lab.state import Journal, PodRecord
from tortie.lab.steps import run_steps
from tortie.lab.topology import PodSpec, Topology

Progress = Callable[[str], None]


def create_sandbox(kernel: Kernel, journal: Journal, pod: PodSpec) -> None:
    journal.record_namespace(pod.netns)
    kernel.netns_add(pod.netns)
    run_steps(kernel, namespace_steps(pod.netns))


def wire_manual(kernel: Kernel, journal: Journal, topology: Topology, pod: PodSpec) -> PodRecord:
    record = PodRecord(
        name=pod.name,
        node=pod.node,
        netns=pod.netns,
        wiring="manual",
        ip=str(pod.manual_ip),
        host_ifname=pod.host_ifname,
    )
    journal.record_pod(record)
    journal.record_links(reference.pod_links(topology, pod))
    run_steps(kernel, reference.topology_pod_steps(topology, pod))
    return record


def wire_cni(journal: Journal, topology: Topology, pod: PodSpec) -> PodRecord:
    runtime = node_runtime(topology, journal.state, pod.node)
    journal.record_pod(
        PodRecord(
            name=pod.name,
            node=pod.node,
            netns=pod.netns,
            wiring="cni",
            container_id=cni.container_id(topology, pod),
        )
    )
    record = cni.add_pod(topology, runtime, pod)
    journal.record_pod(record)
    return record


def create_pods(
    kernel: Kernel,
    journal: Journal,
    topology: Topology,
    progress: Progress,
) -> list[PodRecord]:
    """Every pod of the topology, in order (pod1 on node1 first)."""
    wiring = topology.options.wire_pods
    if wiring == "cni":
        for node in topology.nodes:
            cni.install_cni(node_runtime(topology, journal.state, node.name))
    records = []
    for pod in topology.pods:
        create_sandbox(kernel, journal, pod)
        if wiring == "manual":
            record = wire_manual(kernel, journal, topology, pod)
        else:
            record = wire_cni(journal, topology, pod)
        progress(
            f"{pod.name}: {pod.netns} on {pod.node}, {pod.ifname} {record.ip}/32 "
            f"({record.wiring}, host side {record.host_ifname})"
        )
        records.append(record)
    return records
