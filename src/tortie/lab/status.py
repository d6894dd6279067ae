"""``lab status``: a lab's recorded state next to what exists now, as data or as text.

Problem: after a crash, a failed step or someone's ``ip netns del``, the state file and the
host can disagree. Status shows both: each namespace and process is checked live (exists,
still the same process), so "phase: up" next to a missing namespace is visible at a glance.

An agent restarted since ``up`` (``tortie lab restart NODE``, recorded; or by hand through
``tortie lab exec``, not recorded) is shown as the node's agent, running: the node's agent is
the one :func:`tortie.lab.agents.running_agent` finds (the newest recorded one still alive,
else the one the agent's own PID file names, verified); the records it replaced are marked
``superseded`` and left out of the text.

Invariant: read-only; works without the lab's lock (it may run while ``up`` builds).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tortie.lab import procs
from tortie.lab.agents import running_agent
from tortie.lab.ops import Lab
from tortie.lab.registry import is_locked
from tortie.lab.runtime import node_runtime
from tortie.lab.state import LabState
from tortie.lab.topology import NodeSpec, Topology


def _exists(netns: str) -> bool:
    return os.path.lexists(f"/run/netns/{netns}")


def _node_processes(state: LabState, topology: Topology, node: NodeSpec) -> list[dict[str, Any]]:
    records = state.node_processes(node.name)
    out: list[dict[str, Any]] = []
    agent = None
    if any(p.role == "agent" for p in records) and node.name in state.nodes:
        agent = running_agent(state, node_runtime(topology, state, node.name))
    for i, p in enumerate(records):
        alive = procs.matches(p, state.token)
        later = any(q.role == p.role for q in records[i + 1 :])
        out.append(
            {
                "role": p.role,
                "pid": p.pid,
                "alive": alive,
                "log": p.log,
                "recorded": True,
                # A dead agent whose node has a newer one (recorded or found) was replaced.
                "superseded": not alive and p.role == "agent" and (later or agent is not None),
            }
        )
    if agent is not None and agent.record is None:
        out.append(
            {
                "role": "agent",
                "pid": agent.pid,
                "alive": True,
                "log": None,
                "recorded": False,
                "superseded": False,
            }
        )
    return out


def lab_status(lab: Lab) -> dict[str, Any]:
    """The lab as a JSON-ready dict (``tortie lab status -o json``)."""
    state, topo = lab.state, lab.topology
    builder_alive = state.builder is not None and procs.matches(state.builder)
    return {
        "name": state.name,
        "id": state.lab_id,
        "prefix": topo.prefix,
        "phase": state.phase,
        "building": builder_alive and is_locked(Path(state.lab_dir)),
        "error": state.error,
        "mode": topo.mode,
        "wirePods": topo.options.wire_pods,
        "datastore": state.datastore,
        "labDir": state.lab_dir,
        "created": state.created,
        "timings": state.timings,
        "pool": {
            "name": topo.pool.name,
            "cidr": str(topo.pool.cidr),
            "blockSize": topo.pool.block_size,
            "ipipMode": topo.pool.ipip_mode,
            "vxlanMode": topo.pool.vxlan_mode,
        },
        "wire": {"netns": topo.wire_netns, "exists": _exists(topo.wire_netns)},
        "router": {
            "netns": topo.router.netns,
            "exists": _exists(topo.router.netns),
            "legs": [
                {"ifname": s.router_ifname, "address": f"{s.gateway}/{s.network.prefixlen}"}
                for s in topo.subnets
            ],
        },
        "subnets": [
            {
                "index": s.index,
                "network": str(s.network),
                "gateway": str(s.gateway),
                "bridge": s.bridge,
            }
            for s in topo.subnets
        ],
        "nodes": [
            {
                "name": n.name,
                "netns": n.netns,
                "exists": _exists(n.netns),
                "address": str(n.address),
                "gateway": str(n.gateway),
                "subnet": n.subnet,
                "uplink": n.uplink,
                "routeReflector": n.route_reflector,
                "dirs": vars(state.nodes[n.name]) if n.name in state.nodes else None,
                "processes": _node_processes(state, topo, n),
            }
            for n in topo.nodes
        ],
        "processes": [
            {"role": p.role, "pid": p.pid, "alive": procs.matches(p, state.token), "log": p.log}
            for p in state.processes
            if p.node is None
        ],
        "pods": [
            {
                "name": p.name,
                "node": p.node,
                "netns": p.netns,
                "exists": _exists(p.netns),
                "ip": (rec.ip if (rec := state.pods.get(p.name)) else None),
                "hostIfname": rec.host_ifname if rec else None,
                "wiring": rec.wiring if rec else None,
            }
            for p in topo.pods
        ],
    }


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _process_note(p: dict[str, Any]) -> str:
    if not p["alive"]:
        return " (dead)"
    return "" if p.get("recorded", True) else " (restarted outside the lab)"


def _mark(exists: bool) -> str:
    return "" if exists else " (missing)"


def format_status(data: dict[str, Any]) -> str:
    """The human form: a header, then nodes and pods as aligned tables."""
    pool = data["pool"]
    encap = f"ipipMode {pool['ipipMode']}, vxlanMode {pool['vxlanMode']}"
    lines = [
        f"lab {data['name']} (id {data['id']}, prefix {data['prefix']}): {data['phase']}"
        + (" - lab up still running" if data["building"] else ""),
        f"mode {data['mode']} ({encap}), pool {pool['cidr']} /{pool['blockSize']} blocks, "
        f"pods wired by {data['wirePods']}",
        f"datastore {data['datastore']}",
    ]
    if data["error"]:
        lines.append(f"error: {data['error']}")
    legs = ", ".join(f"{leg['ifname']} {leg['address']}" for leg in data["router"]["legs"])
    lines.append(f"router {data['router']['netns']}{_mark(data['router']['exists'])}: {legs}")
    others = ", ".join(
        f"{p['role']} {p['pid']}{'' if p['alive'] else ' (dead)'}" for p in data["processes"]
    )
    if others:
        lines.append(f"lab processes: {others}")
    lines.append("")
    rows = [["NODE", "NETNS", "ADDRESS", "GATEWAY", "SUBNET", "PROCESSES"]]
    for n in data["nodes"]:
        processes = ", ".join(
            f"{p['role']} {p['pid']}{_process_note(p)}"
            for p in n["processes"]
            if not p.get("superseded")
        )
        rows.append(
            [
                n["name"] + (" (RR)" if n["routeReflector"] else ""),
                n["netns"] + _mark(n["exists"]),
                n["address"],
                n["gateway"],
                str(n["subnet"]),
                processes or "-",
            ]
        )
    lines += _table(rows)
    if data["pods"]:
        lines.append("")
        rows = [["POD", "NODE", "NETNS", "IP", "HOST IFACE", "WIRING"]]
        for p in data["pods"]:
            rows.append(
                [
                    p["name"],
                    p["node"],
                    p["netns"] + _mark(p["exists"]),
                    p["ip"] or "-",
                    p["hostIfname"] or "-",
                    p["wiring"] or "-",
                ]
            )
        lines += _table(rows)
    return "\n".join(lines)
