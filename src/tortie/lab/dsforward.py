"""Whether a lab's nodes can reach its datastore, and the forwarder that lets them.

Problem (issue 17, item 10): the lab's agents run in the nodes' network namespaces, which have
their own loopback and no route to the host's networks. A datastore URL means what it means
on the host, where the user typed it:

- ``sqlite:`` paths: the same file everywhere (the lab enters only network namespaces, never
  mount namespaces). Nothing to do.
- ``etcd://`` on a loopback address (127.0.0.0/8, ``localhost``, ``[::1]``): forwarded. The
  lab starts :mod:`tortie.lab.forward` (recorded in the state file the moment its PID exists,
  stopped by ``lab down`` like the agents), which listens on the same address and port inside
  every node namespace and relays to the host's loopback; then it checks, from inside each
  node, that etcd answers through it (``GET /health``, which etcd serves on its client port),
  before any agent starts.
- ``etcd://`` anywhere else: refused before anything is built. No node namespace can route
  to it (the lab's router has no way out of the lab), and forwarding an arbitrary address
  would have to claim that address inside every node. The message says to use a loopback
  endpoint.

And before anything is built: at least one etcd endpoint must answer on the host (a TCP
connect), or ``lab up`` refuses at once ("start etcd first") instead of failing minutes
later in the agents.

Invariants: traffic stays on loopback and inside the lab's namespaces; the check from inside a
node uses a socket made by a thread that entered the node's namespace
(:func:`tortie.lab.forward.in_netns`), never the builder's own namespace.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from ipaddress import ip_address
from pathlib import Path

from tortie.lab.errors import LabBuildError, LabOptionError
from tortie.lab.forward import in_netns, parse_endpoint
from tortie.lab.procs import TOKEN_ENV, record_for
from tortie.lab.state import Journal, ProcessRecord
from tortie.lab.topology import Topology

Progress = Callable[[str], None]
ROLE = "datastore-forwarder"
READY_NAME = "forward.ready"
LOG_NAME = "forward.log"
READY_TIMEOUT = 10.0
HEALTH_TIMEOUT = 5.0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def etcd_endpoints(url: str | None) -> list[tuple[str, int]]:
    """The etcd endpoints of ``url`` as (host, port); [] for other backends. Raises
    LabOptionError for an endpoint the lab's nodes cannot reach (see the module docstring)."""
    if url is None:
        return []
    from tortie.datastore.factory import parse_url

    parsed = parse_url(url)  # already validated by check_options
    if parsed.backend != "etcd":
        return []
    endpoints = [parse_endpoint(e) for e in parsed.endpoints]
    outside = [f"{h}:{p}" for h, p in endpoints if not _is_loopback(h)]
    if outside:
        raise LabOptionError(
            f"--datastore {url}: the lab's nodes are network namespaces with no route out of "
            f"the lab, so they cannot reach {', '.join(outside)}; run etcd on this host's "
            "loopback (etcd://127.0.0.1:PORT): the lab forwards that into every node"
        )
    return endpoints


def preflight(url: str | None, on_host: bool = True, timeout: float = 2.0) -> None:
    """Refuse a lab datastore its nodes cannot reach, or (``on_host``: on this machine) an
    etcd that does not answer here."""
    endpoints = etcd_endpoints(url)
    if not endpoints or not on_host:
        return
    errors = []
    for host, port in endpoints:
        try:
            with socket.create_connection((_connect_host(host), port), timeout=timeout):
                return
        except OSError as exc:
            errors.append(f"{host}:{port}: {exc.strerror or exc}")
    raise LabOptionError(
        f"--datastore {url}: etcd does not answer on this host ({'; '.join(errors)}); "
        "start it first"
    )


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host == "localhost" else host


def _listen_hosts(host: str) -> list[str]:
    # "localhost" resolves to 127.0.0.1 from /etc/hosts (shared: one mount namespace).
    return ["127.0.0.1"] if host == "localhost" else [host]


def start_forwarder(
    journal: Journal,
    topology: Topology,
    progress: Progress,
    netns_dir: Path = Path("/run/netns"),
) -> ProcessRecord | None:
    """For a loopback etcd: start the forwarder, wait for its listeners, and check from every
    node that etcd answers through it. None for other datastores."""
    state = journal.state
    endpoints = etcd_endpoints(state.datastore)
    if not endpoints:
        return None
    lab_dir = Path(state.lab_dir)
    ready, log = lab_dir / READY_NAME, lab_dir / LOG_NAME  # go with the lab directory
    argv = [sys.executable, "-m", "tortie.lab.forward", "--ready", str(ready)]
    for node in topology.nodes:
        argv += ["--netns", str(netns_dir / node.netns)]
    for host, port in endpoints:
        for listen in _listen_hosts(host):
            argv += ["--endpoint", f"[{listen}]:{port}" if ":" in listen else f"{listen}:{port}"]
    env = {**os.environ, TOKEN_ENV: state.token, "TORTIE_LAB": state.name}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    record = record_for(proc.pid, ROLE, log=str(log), argv=tuple(argv))
    if record is None:
        proc.wait()
        raise LabBuildError(f"the datastore forwarder exited at once; see {log}:\n{_tail(log)}")
    journal.record_process(record)
    deadline = time.monotonic() + READY_TIMEOUT
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise LabBuildError(
                f"the datastore forwarder did not get ready; see {log}:\n{_tail(log)}"
            )
        time.sleep(0.02)
    for node in topology.nodes:
        check_from_node(str(netns_dir / node.netns), node.name, endpoints, state.datastore or "")
    first = f"{endpoints[0][0]}:{endpoints[0][1]}"
    progress(
        f"datastore: {state.datastore} forwarded into every node (pid {record.pid}, {log}); "
        f"etcd answers at {first} from inside the nodes"
    )
    return record


def check_from_node(netns_path: str, node: str, endpoints: list[tuple[str, int]], url: str) -> None:
    """etcd's ``/health`` through the forwarder, from inside the node's namespace."""
    errors = []
    for host, port in endpoints:
        try:
            answer = in_netns(netns_path, functools.partial(_health, host, port))
        except OSError as exc:
            errors.append(f"{host}:{port}: {exc.strerror or exc}")
            continue
        if answer:
            return
        errors.append(f"{host}:{port}: no healthy answer")
    raise LabBuildError(
        f"{node} cannot reach the datastore {url} from its network namespace "
        f"({'; '.join(errors)}); the agents could never sync"
    )


def _health(host: str, port: int) -> bool:
    with socket.create_connection((_connect_host(host), port), timeout=HEALTH_TIMEOUT) as sock:
        sock.settimeout(HEALTH_TIMEOUT)
        sock.sendall(f"GET /health HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    _, _, body = data.partition(b"\r\n\r\n")
    try:
        return bool(json.loads(body).get("health") == "true")
    except (ValueError, AttributeError):
        return False


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as err:
        return f"(cannot read: {err})"
