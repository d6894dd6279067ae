"""``tortie node run``: assemble the agent from its parts and run it until told to stop.

Problem: the agent (:mod:`tortie.agent.node`: the loop and its managers) is built from
injected parts so it can be unit-tested; a real node needs the real ones: the datastore
(waited for, not crashed on), the kernel of the network namespace the process runs in, the
IPIP backend chosen for this kernel, the health endpoints, and signal handling.

Invariants: SIGTERM/SIGINT stop the loop and leave the dataplane in place (routes, tunl0, BPF
programs stay: pods keep talking while the agent restarts); the status file in the node's
state directory says whether the agent is running and what it chose, for
``tortie node status`` and the lab, from the start: while it waits (for the datastore to
open, to be the store this node knows, or for its registration to succeed) its ``detail``
says what it waits for, and every wait retries with backoff instead of exiting. A programming
error out of the loop (:mod:`tortie.agent.loop`, "Errors") is logged with its traceback and
the process exits with ``EXIT_SOFTWARE`` (70); the dataplane stays as it is (fail static) and
the next start's resync repairs.

Creating the datastore (docs/datastore.md): the agent's first start creates the store if it is
missing, and only then: a node whose state directory records a datastore
(:mod:`tortie.agent.trust`) has used one, so a missing store was moved away: it waits, and
says so. Before registering, the store is checked against that record (the same id, no
revision lower than seen); a mismatch is waited out, not written into.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

from tortie.agent.bgp_driver import BgpDriver
from tortie.agent.cniserver import CniServer
from tortie.agent.config import AgentConfig, AgentConfigError, detect_address
from tortie.agent.health import HealthBoard, serve
from tortie.agent.node import NodeAgent
from tortie.agent.trust import DatastoreGuard, record_path
from tortie.dataplane.ipip import IPIPBackend
from tortie.dataplane.ipip_choice import make_ipip_backend
from tortie.dataplane.monitor import NetlinkMonitor
from tortie.dataplane.nftables import NftablesManager
from tortie.dataplane.vxlan import VXLANManager
from tortie.datastore.api import Datastore, DatastoreError, InvalidURLError
from tortie.datastore.factory import open_datastore
from tortie.ipam.client import IPAM

if TYPE_CHECKING:
    from tortie.dataplane.kernel_netlink import Pyroute2Netlink

log = logging.getLogger(__name__)


MAX_BACKOFF = 10.0
EXIT_SOFTWARE = 70  # sysexits.h EX_SOFTWARE: an internal software error


def open_store_waiting(
    url: str,
    stop: threading.Event,
    *,
    create: bool = False,
    waiting: Callable[[str], None] = lambda _why: None,
) -> Datastore | None:
    """Open the datastore (creating it only if ``create``), retrying with backoff while it
    cannot be opened; ``waiting(why)`` is told each time. A bad URL raises: it will not heal."""
    delay = 0.5
    while not stop.is_set():
        try:
            return open_datastore(url, create=create)
        except InvalidURLError:
            raise
        except DatastoreError as err:
            log.warning("%s; retrying in %.1fs", err, delay)
            waiting(f"waiting for the datastore: {err}")
            stop.wait(delay)
            delay = min(delay * 2, MAX_BACKOFF)
    return None


def register_waiting(
    agent: NodeAgent,
    guard: DatastoreGuard,
    stop: threading.Event,
    waiting: Callable[[str], None] = lambda _why: None,
) -> bool:
    """Check the store against this node's record, then register the Node; retry both with
    backoff (a store that broke after the open, a replaced one) until they succeed or
    ``stop``. Returns False if stopped first."""
    delay = 0.5
    while not stop.is_set():
        try:
            problem = guard.verify(agent.store.revision())
            if not problem:
                agent.register()
                return True
            why = f"waiting for the datastore: {problem}"
        except DatastoreError as err:
            why = f"waiting for the datastore: registering node {agent.cfg.node_name}: {err}"
        log.warning("%s; retrying in %.1fs", why, delay)
        waiting(why)
        stop.wait(delay)
        delay = min(delay * 2, MAX_BACKOFF)
    return False


class StartingStatus:
    """The status file while the agent starts (before its loop writes the full one), so
    ``tortie node status`` says what it waits for instead of "not running"."""

    def __init__(self, cfg: AgentConfig) -> None:
        self._cfg = cfg
        self.detail = "starting"

    def __call__(self, detail: str) -> None:
        if detail == self.detail:
            return
        self.detail = detail
        doc = {
            "node": self._cfg.node_name,
            "pid": os.getpid(),
            "phase": "starting",
            "in_sync": False,
            "converged": False,
            "detail": detail,
        }
        path = self._cfg.status_file
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(doc, indent=2) + "\n")
            os.replace(tmp, path)
        except OSError as err:
            log.debug("status file: %s", err)


def run_agent(cfg: AgentConfig, stop: threading.Event | None = None) -> int:
    from tortie.dataplane.kernel_netlink import Pyroute2Netlink

    stop = stop or threading.Event()
    _install_signal_handlers(stop)
    cfg.node_state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    starting = StartingStatus(cfg)
    starting("waiting for the datastore")
    guard_file = record_path(cfg.node_state_dir)
    # Only a node that has never used a datastore may create one (module docstring).
    first_start = not guard_file.exists()
    if first_start:
        log.info("no datastore recorded in %s: creating it if missing", cfg.node_state_dir)
    store = open_store_waiting(cfg.datastore_url, stop, create=first_start, waiting=starting)
    if store is None:
        _remove_status(cfg)
        return 0
    guard = DatastoreGuard(store, guard_file, cfg.node_name)
    netlink = Pyroute2Netlink()
    address = detect_address(netlink, cfg.ip_autodetect, cfg.ip)
    log.info(
        "node %s: address %s on %s (%s)",
        cfg.node_name,
        address.address,
        address.uplink,
        address.how,
    )

    def backend_factory() -> tuple[IPIPBackend, str]:
        return make_ipip_backend(
            cfg.ipip_backend,
            netlink,
            node_ip=address.address.ip,
            uplink=address.uplink,
            pin_dir=cfg.pin_dir,
            bpf_object=cfg.bpf_object,
            bpf_attach=cfg.bpf_attach,
        )

    def vxlan_factory() -> VXLANManager:
        return VXLANManager(netlink, node_ip=address.address.ip, uplink=address.uplink)

    board = HealthBoard()
    firewall = NftablesManager()
    # The lambda binds late: the agent is built just below, with the driver inside it.
    bgp = (
        BgpDriver(
            cfg.node_name,
            cfg.bgp_dir,
            lambda: agent.nudge(),  # noqa: PLW0108
            hold_time=cfg.bgp_hold_time,
        )
        if cfg.bgp
        else None
    )
    agent = NodeAgent(
        cfg,
        store,
        netlink,
        address,
        backend_factory,
        firewall=firewall,
        vxlan_factory=vxlan_factory,
        bgp=bgp,
        board=board,
        guard=guard,
    )
    if not register_waiting(agent, guard, stop, starting):
        _remove_status(cfg)
        store.close()
        netlink.close()
        return 0
    monitor = _kernel_monitor(cfg, netlink, firewall)
    # The CNI plugin is a thin stdlib client; this server does the pod wiring, warm. Its
    # writes are refused while the guard refuses the store (no address from a rolled-back one).
    cni_store = guard.guarded(store)
    cni = CniServer(
        str(cfg.cni_socket),
        cfg.node_name,
        cni_store,
        IPAM(cni_store),
        lambda: agent.current_pod_mtu,
    )
    try:
        cni.start()
    except OSError as err:
        raise AgentConfigError(
            f"cannot serve the CNI socket {cfg.cni_socket}: {err.strerror or err}; "
            "choose another --state-dir"
        ) from err
    log.info("CNI server listening on %s", cfg.cni_socket)
    server = serve(board, cfg.health_host, cfg.health_port) if cfg.health_port else None
    pid_file = cfg.node_state_dir / "agent.pid"
    pid_file.write_text(f"{os.getpid()}\n")
    status_thread = threading.Thread(
        target=_status_writer, args=(agent, stop), name="status-writer", daemon=True
    )
    status_thread.start()
    if monitor is not None:
        monitor.start(agent.on_kernel_changes)
    status = 0
    try:
        agent.run(stop)
    except Exception:
        # Not a kernel or datastore failure (those are retried in the loop): a bug, which no
        # retry cures. Fail static: exit with the dataplane as it is; a restart resyncs.
        log.exception(
            "the agent loop failed (a bug: please report it); exiting with the dataplane "
            "left as it is, the next start re-reads the kernel and repairs"
        )
        status = EXIT_SOFTWARE
    finally:
        if monitor is not None:
            monitor.stop()
        cni.stop()
        if bgp is not None:
            # Leave the speaker running: the next agent adopts it, and peers keep our
            # routes meanwhile (an agent restart must not withdraw a healthy node).
            bgp.detach()
        if server is not None:
            server.shutdown()
        with contextlib.suppress(OSError):
            pid_file.unlink()
        _remove_status(cfg)
        guard.flush(agent.state.revision)
        store.close()
        netlink.close()
    log.info("agent stopped; the dataplane stays as it is")
    return status


def _kernel_monitor(
    cfg: AgentConfig, netlink: Pyroute2Netlink, firewall: NftablesManager
) -> NetlinkMonitor | None:
    """The kernel monitor of this namespace (None when switched off): routes of the agent's
    table, echoes of its own route writes dropped, and its nft table."""
    if not cfg.kernel_monitor:
        log.info("kernel monitor off: foreign changes are repaired at the periodic resync")
        return None
    rs = firewall.ruleset
    return NetlinkMonitor(echo_portids=[netlink.route_portid], nft_table=(rs.family, rs.table))


def _remove_status(cfg: AgentConfig) -> None:
    with contextlib.suppress(OSError):
        cfg.status_file.unlink()


def _status_writer(agent: NodeAgent, stop: threading.Event) -> None:
    """Keep the status file current (the lab waits on it; ``node status`` reads it)."""
    last = None
    while not stop.is_set():
        status = agent.status()
        if status != last:
            try:
                agent.write_status(status)
                last = status
            except OSError as err:
                log.debug("status file: %s", err)
        stop.wait(0.2)


def _install_signal_handlers(stop: threading.Event) -> None:
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def wait_ready(board: HealthBoard, timeout: float) -> bool:
    """For tests and the lab: wait until the board says ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if board.ready()[0]:
            return True
        time.sleep(0.05)
    return False
