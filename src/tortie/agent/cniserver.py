"""The node agent's CNI server: does what the per-pod CNI plugin process asks.

Problem: the CNI plugin must answer ADD in well under 100 ms, but IPAM, the datastore and
netlink need modules that take ~0.35 s just to import. So the plugin (stdlib only) sends one
request over a unix socket (:mod:`tortie.model.cniwire`) and this server, warm inside the
agent, does the work: IPAM by handle ``<network>.<containerID>``, the kernel plumbing
(:mod:`tortie.agent.wiring`), and the pod's WorkloadEndpoint.

Verbs:
- ADD: assign (or reuse the handle's) address, wire the pod, write the endpoint. Any failure
  undoes all of it (host veth deleted, which takes the pod side and routes with it; address
  released) before the error is returned. Refused before any change (IPAM included): a
  namespace that is the node's own or not a network namespace (code 4, CNI_NETNS is invalid);
  an interface of the requested name in the pod that is not provably this container's (code
  103; the spec: "if an interface of the requested name already exists in the container, the
  plugin MUST return with an error"); a host interface of our name that another pod's endpoint
  names (103).
- DEL: idempotent; "not found" is success. Deletes the host veth only if it is this
  container's (its endpoint names this container, or the host routes this handle's address
  through it), which takes the pod end with it; otherwise a veth left in the pod's namespace,
  only if provably this pod's (see :meth:`CniServer._not_ours`). Releases the handle, and
  deletes the endpoint only if it names this container: a late DEL for an old sandbox of a pod
  never touches the live sandbox's endpoint or interface (same pod name, same ``cali`` name).
  A DEL into the node's own namespace is refused like ADD; one whose namespace is gone, or
  no longer a namespace (an unmounted pin is an empty file), does the host side only.
- CHECK: compares the kernel, IPAM and the endpoint with the prevResult (namespace refused
  as for ADD).
- GC: DEL for every attachment of this network on this node missing from the runtime's list.
- STATUS: datastore reachable and a pool with free addresses for this node.

Invariants:
- Whose is it: an interface is replaced or deleted only when the endpoint records, the kernel's
  veth peering and IPAM together prove it this pod's; the judgement is made on what
  :meth:`Wiring.inspect` saw, and only the inspected ifindex is removed.
- The pod's namespace is opened once per request; all work goes through that open file.
- One pod at a time: requests for one pod (same host interface name) are serialised; other
  pods proceed in parallel. IPAM writes on this node are serialised by one lock: they would
  only collide on the same block's compare-and-swap and retry, which is slower than waiting.
- GC never removes an attachment whose ADD started after the GC request arrived, nor one in
  flight, even if the runtime's list (a snapshot) does not have it yet.
- The socket is mode 0600 in a directory no one else can enter (0700), and peers must have
  our uid: only root (the runtime) can ask for pods.

Hazards: a datastore outage makes ADD/DEL fail with code 11 (try again later); the runtime
retries DEL, and the IPAM handle stays until one succeeds (``tortie ipam check`` finds what
a runtime gave up on). The socket file is replaced at start only if no one answers on it.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import ipaddress
import logging
import os
import secrets
import signal
import socket
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from tortie.agent.wiring import (
    Existing,
    InterfaceTakenError,
    NetnsRefusedError,
    PodInterface,
    PodLink,
    Wiring,
    WiringError,
)
from tortie.dataplane.netns import NetnsRef
from tortie.datastore.api import (
    ConflictError,
    Datastore,
    DatastoreError,
    KeyValue,
    NotFoundError,
    UnavailableError,
)
from tortie.datastore.factory import parse_url
from tortie.datastore.resources import CorruptResourceError, ResourceConflictError, ResourceStore
from tortie.errors import TortieError
from tortie.ipam.client import IPAM
from tortie.ipam.errors import (
    AddressInUseError,
    AddressNotInPoolError,
    ExhaustedError,
    InvalidRequestError,
    NoPoolsError,
    PoolNotFoundError,
    TooManyConflictsError,
)
from tortie.ipam.pools import select_pools
from tortie.model.cniwire import (
    MAX_MESSAGE,
    CniRequest,
    CniResponse,
    Code,
    WireError,
    failure,
    unix_connect_or_bind,
)
from tortie.model.errors import ModelError
from tortie.model.ipam import ATTR_NAMESPACE, ATTR_NODE, ATTR_POD
from tortie.model.keys import resource_key
from tortie.model.naming import GATEWAY, HOST_MAC, host_ifname, pod_handle, pod_handle_prefix
from tortie.model.resources import API_VERSION, WorkloadEndpoint, workload_endpoint_name

log = logging.getLogger(__name__)

NETWORK_ANNOTATION = "cni.tortie.dev/network"
IO_TIMEOUT = 30.0  # seconds to read a request / write a response
RECENT_ADD_SECONDS = 600.0  # how long GC remembers that an ADD happened
ADDS_REMEMBERED = 1024  # beyond this many, ADD prunes entries older than that


class CniCodeError(Exception):
    """A handler's failure with its CNI code (turned into the error response)."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details


class CniServerError(TortieError):
    """The server cannot start (socket in use, unsafe directory)."""


@dataclass(frozen=True, slots=True)
class _Pod:
    """Who an attachment belongs to, and the names derived from that."""

    container_id: str
    ifname: str
    namespace: str
    pod: str | None
    host_ifname: str
    handle: str
    wep_name: str

    @property
    def orchestrator(self) -> str:
        return "k8s" if self.pod else "cni"


class _KeyedLocks:
    """One lock per key, created on demand and dropped when no one holds or waits for it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


def _same_datastore(a: str, b: str) -> bool:
    try:
        pa, pb = parse_url(a), parse_url(b)
    except DatastoreError:
        return a == b
    return (pa.backend, pa.path, pa.endpoints) == (pb.backend, pb.path, pb.endpoints)


def _failure_of(exc: BaseException) -> CniCodeError:
    """The CNI code and message for an exception raised while serving a request."""
    if isinstance(exc, CniCodeError):
        return exc
    if isinstance(exc, NetnsRefusedError):
        return CniCodeError(Code.INVALID_ENVIRONMENT, f"invalid CNI_NETNS: {exc}")
    if isinstance(exc, WiringError):
        if isinstance(exc, InterfaceTakenError):
            return CniCodeError(Code.INTERFACE_EXISTS, str(exc))
        if exc.step.startswith("open the pod's network namespace"):
            return CniCodeError(Code.UNKNOWN_CONTAINER, str(exc))
        return CniCodeError(Code.KERNEL_FAILURE, f"the kernel refused: {exc}")
    if isinstance(exc, ExhaustedError | NoPoolsError | AddressInUseError | AddressNotInPoolError):
        return CniCodeError(Code.NO_ADDRESS, f"no address for the pod: {exc}")
    if isinstance(exc, PoolNotFoundError | InvalidRequestError):
        return CniCodeError(Code.INVALID_NETWORK_CONFIG, str(exc))
    if isinstance(exc, TooManyConflictsError | ConflictError | ResourceConflictError):
        return CniCodeError(Code.TRY_AGAIN_LATER, f"the datastore is busy: {exc}")
    if isinstance(exc, UnavailableError):
        return CniCodeError(Code.TRY_AGAIN_LATER, str(exc))
    if isinstance(exc, DatastoreError):
        return CniCodeError(Code.TRY_AGAIN_LATER, f"datastore error: {exc}")
    if isinstance(exc, ModelError):
        return CniCodeError(Code.INVALID_ENVIRONMENT, str(exc))
    if isinstance(exc, OSError):
        return CniCodeError(Code.IO_FAILURE, f"I/O failure: {exc}")
    return CniCodeError(Code.INTERNAL, f"internal error in the tortie agent: {exc!r}")


class CniServer:
    """Serves CNI requests for node ``node_name`` on ``socket_path``.

    ``store`` is the datastore endpoints are written to and ``ipam`` allocates from it;
    ``mtu()`` gives the pods' MTU (the agent's value: host MTU minus encapsulation), unless
    the CNI config sets one. The host side of pods lives in ``host_netns`` (None: this
    process's namespace; a lab node's namespace otherwise). ``wiring`` replaces the kernel
    plumbing (tests).
    """

    def __init__(
        self,
        socket_path: str,
        node_name: str,
        store: Datastore,
        ipam: IPAM,
        mtu: Callable[[], int],
        *,
        host_netns: NetnsRef = None,
        wiring: Wiring | None = None,
        max_connections: int = 64,
    ) -> None:
        self.socket_path = os.path.abspath(socket_path)
        self.node = node_name
        self.store = store
        self.ipam = ipam
        self.mtu = mtu
        self.wiring = wiring or Wiring(host_netns)
        self.resources = ResourceStore(store)
        self._pod_locks = _KeyedLocks()
        self._ipam_lock = threading.Lock()
        self._adds_lock = threading.Lock()
        self._adds: dict[str, float] = {}  # container ID -> monotonic start of its last ADD
        self._adding: dict[str, int] = {}  # container ID -> ADDs in progress
        self._slots = threading.BoundedSemaphore(max_connections)
        self._listener: socket.socket | None = None
        self._inode: int | None = None
        self._accept_thread: threading.Thread | None = None
        self._workers: set[threading.Thread] = set()
        self._workers_lock = threading.Lock()
        self._stopping = threading.Event()

    # == socket ==================================================================================
    def start(self) -> None:
        """Listen on the socket (replacing a stale one) and serve in background threads."""
        if self._listener is not None:
            raise CniServerError("the CNI server is already running")
        self._stopping.clear()
        self._listener = self._bind()
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="tortie-cni-accept", daemon=True
        )
        self._accept_thread.start()
        threading.Thread(target=self._warm_up, name="tortie-cni-warm-up", daemon=True).start()
        log.info("CNI server for node %s listening on %s", self.node, self.socket_path)

    def _warm_up(self) -> None:
        """Pay the first request's one-off costs now: importing pyroute2 (~0.25 s) and
        building the endpoint model's validators, so the first pod is as fast as the rest."""
        try:
            self.wiring.host_link_exists("lo")
            pod = self._pod("warm-up", "warm-up", "eth0", None, None)
            self._endpoint(pod, "warm-up", HOST_MAC, ipaddress.IPv4Address("192.0.2.1"))
        except Exception:
            log.debug("CNI server warm-up failed", exc_info=True)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, remove our socket file, wait up to ``timeout`` s for requests."""
        listener = self._listener
        if listener is None:
            return
        self._stopping.set()
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        listener.close()
        self._listener = None
        with contextlib.suppress(OSError):
            if os.stat(self.socket_path).st_ino == self._inode:
                os.unlink(self.socket_path)  # only ours: a newer server may have replaced it
        if self._accept_thread is not None:
            self._accept_thread.join(timeout)
        deadline = time.monotonic() + timeout
        with self._workers_lock:
            workers = list(self._workers)
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> CniServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _bind(self) -> socket.socket:
        directory = os.path.dirname(self.socket_path)
        if not os.path.isdir(directory):
            os.makedirs(os.path.dirname(directory), mode=0o755, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(directory, 0o700)
        mode = stat.S_IMODE(os.stat(directory).st_mode)
        if mode & 0o077:
            raise CniServerError(
                f"{directory} has mode {mode:04o}: the CNI socket needs a directory only its "
                "owner can enter (0700); use another --socket path or chmod it"
            )
        self._remove_stale_socket()
        # Bind under a temporary name, restrict it, then rename into place: the socket is
        # never reachable with a wider mode, and a half-made one never has the real name.
        temp = os.path.join(directory, f".cni.sock.{os.getpid()}.{secrets.token_hex(4)}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            unix_connect_or_bind(sock, temp, bind=True)
            os.chmod(temp, 0o600)
            sock.listen(128)
            os.rename(temp, self.socket_path)
        except BaseException:
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        self._inode = os.stat(self.socket_path).st_ino
        return sock

    def _remove_stale_socket(self) -> None:
        try:
            st = os.lstat(self.socket_path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise CniServerError(f"{self.socket_path} exists and is not a socket; remove it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            unix_connect_or_bind(probe, self.socket_path)
        except OSError:
            os.unlink(self.socket_path)  # nobody listens: left by a server that died
            return
        finally:
            probe.close()
        raise CniServerError(
            f"another tortie agent is serving {self.socket_path}; stop it first "
            "(or give this one another socket path)"
        )

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                log.exception("accept() failed on %s", self.socket_path)
                time.sleep(0.1)
                continue
            self._slots.acquire()
            worker = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            with self._workers_lock:
                self._workers.add(worker)
            worker.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(IO_TIMEOUT)
                if not self._peer_allowed(conn):
                    conn.sendall(
                        failure(
                            Code.IO_FAILURE, "permission denied: only root may use tortie's CNI"
                        ).to_bytes()
                    )
                    return
                conn.sendall(self._respond(_read_all(conn)).to_bytes())
        except OSError as exc:
            log.warning("CNI connection failed: %s", exc)
        finally:
            with self._workers_lock:
                self._workers.discard(threading.current_thread())
            self._slots.release()

    @staticmethod
    def _peer_allowed(conn: socket.socket) -> bool:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        return uid in (0, os.geteuid())

    def _respond(self, data: bytes) -> CniResponse:
        try:
            request = CniRequest.from_bytes(data)
        except WireError as exc:
            return failure(Code.DECODE_FAILURE, f"bad request from the CNI plugin: {exc}")
        return self.handle(request)

    # == verbs ===================================================================================
    def handle(self, req: CniRequest) -> CniResponse:
        """Serve one request (the socket's threads call this; so can an embedding agent)."""
        started = time.monotonic()
        try:
            self._check_target(req)
            if req.command == "ADD":
                response = self._add(req)
            elif req.command == "DEL":
                self._del(self._pod_of(req), req.netns)
                response = CniResponse()
            elif req.command == "CHECK":
                self._check(req)
                response = CniResponse()
            elif req.command == "GC":
                response = self._gc(req)
            elif req.command == "STATUS":
                self._status()
                response = CniResponse()
            else:
                raise CniCodeError(Code.INVALID_ENVIRONMENT, f"unknown command {req.command!r}")
        except Exception as exc:
            fail = _failure_of(exc)
            if fail.code == Code.INTERNAL:
                log.exception("CNI %s %s failed", req.command, req.container_id)
            else:
                log.warning("CNI %s %s failed: %s", req.command, req.container_id, fail.msg)
            return failure(fail.code, fail.msg, fail.details)
        log.info(
            "CNI %s %s %s: ok in %.1f ms",
            req.command,
            req.container_id,
            req.ifname,
            (time.monotonic() - started) * 1000,
        )
        return response

    def _check_target(self, req: CniRequest) -> None:
        if req.node and req.node != self.node:
            raise CniCodeError(
                Code.INVALID_NETWORK_CONFIG,
                f"the CNI config is for node {req.node!r}, but the agent on "
                f"{self.socket_path} serves node {self.node!r}",
                "fix 'nodename' in the conflist (tortie install-cni --nodename)",
            )
        if req.datastore and not _same_datastore(req.datastore, self.store.url):
            raise CniCodeError(
                Code.INVALID_NETWORK_CONFIG,
                f"the CNI config names datastore {req.datastore}, but the agent uses "
                f"{self.store.url}",
                "reinstall the CNI config (tortie install-cni --datastore) or restart the agent",
            )

    def _pod_of(self, req: CniRequest) -> _Pod:
        return self._pod(req.network, req.container_id, req.ifname, req.pod_namespace, req.pod)

    def _pod(
        self, network: str, container_id: str, ifname: str, namespace: str | None, pod: str | None
    ) -> _Pod:
        if not container_id or not ifname:
            raise CniCodeError(Code.INVALID_ENVIRONMENT, "a container ID and an ifname are needed")
        ns = namespace or "default"
        if pod:
            name = workload_endpoint_name(self.node, "k8s", pod, ifname)
        else:
            name = workload_endpoint_name(self.node, "cni", container_id, ifname)
        return _Pod(
            container_id=container_id,
            ifname=ifname,
            namespace=ns,
            pod=pod or None,
            host_ifname=host_ifname(container_id, ifname, ns, pod),
            handle=pod_handle(container_id, network),
            wep_name=name,
        )

    # -- ADD -------------------------------------------------------------------------------------
    def _add(self, req: CniRequest) -> CniResponse:
        if not req.netns:
            raise CniCodeError(Code.INVALID_ENVIRONMENT, "ADD needs CNI_NETNS")
        pod = self._pod_of(req)
        requested = _requested_ips(req.ips)
        mtu = req.mtu or self.mtu()
        with (
            self._adding_container(pod.container_id),
            self._pod_locks.hold(pod.host_ifname),
            self.wiring.open_pod_netns(req.netns) as netns,
        ):
            assert netns is not None
            # Judge what is in the way before taking an address: a refusal changes nothing.
            existing = self.wiring.inspect(netns, pod.ifname, pod.host_ifname)
            self._may_replace(pod, existing, req.netns)
            ip = self._address_for(pod, req, requested)
            try:
                link = PodLink(pod.host_ifname, pod.ifname, netns, ip, mtu)
                mac = self.wiring.attach(link, existing)
                self.resources.apply([self._endpoint(pod, req.network, mac, ip)])
            except BaseException as exc:
                self._undo_add(pod, netns, exc)
                raise
        result = {
            "interfaces": [
                {"name": pod.host_ifname, "mac": HOST_MAC, "mtu": mtu},
                {"name": pod.ifname, "mac": mac, "sandbox": req.netns, "mtu": mtu},
            ],
            "ips": [{"address": f"{ip}/32", "gateway": GATEWAY, "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": GATEWAY}],
            "dns": {},
        }
        return CniResponse(result=result)

    def _may_replace(self, pod: _Pod, existing: Existing, netns: str) -> None:
        """Raise INTERFACE_EXISTS unless what ``existing`` found is this pod's to replace.
        (The common ADD finds nothing and reads no endpoint.)"""
        if existing.pod_side is not None:
            stored = self._stored_endpoint(pod)
            wep = None if stored is None else stored[1]
            why = self._not_ours(pod, existing.pod_side, wep)
            if why is not None:
                raise CniCodeError(
                    Code.INTERFACE_EXISTS,
                    f"the pod's namespace {netns} already has an interface {pod.ifname}: {why}",
                    "CNI forbids replacing it. Give another CNI_IFNAME, or the right CNI_NETNS "
                    "(each sandbox has its own namespace)",
                )
            return  # the pod side's peer is our host interface: it goes with it
        if existing.host_index is not None:
            why = self._host_side_taken(pod)
            if why is not None:
                raise CniCodeError(
                    Code.INTERFACE_EXISTS,
                    f"the host interface {pod.host_ifname} already exists: {why}",
                    "not replaced; delete that endpoint (or that pod) first",
                )

    def _not_ours(self, pod: _Pod, iface: PodInterface, wep: WorkloadEndpoint | None) -> str | None:
        """Why the interface ``pod.ifname`` found in the pod is not this pod's to replace or
        delete (None: it is).

        It is this pod's when it is a veth whose peer is our host interface (the name is the
        pod's: only an attempt for this pod makes it) and no endpoint gives it to another
        container: the endpoint of this pod naming another container, with this interface's
        MAC or address, is that container's live interface (the same pod name claimed for a
        new container in the old one's namespace). An endpoint of another container whose
        interface is not this one is stale (its veth was replaced), so this is an unfinished
        attempt: ours to replace.
        """
        if iface.kind != "veth":
            return f"a {iface.kind or 'link of unknown kind'} that tortie did not make"
        if iface.peer != pod.host_ifname:
            where = (
                f"host interface {iface.peer}" if iface.peer else "an interface not on this node"
            )
            return f"a veth whose other end is {where}, not {pod.host_ifname} (another pod's)"
        if wep is not None and wep.spec.container_id != pod.container_id:
            theirs = {ipaddress.ip_interface(n).ip for n in wep.spec.ip_networks}
            mine = {ipaddress.ip_address(a) for a in iface.addresses}
            if (wep.spec.mac or "").lower() == iface.mac or theirs & mine:
                return (
                    f"it belongs to container {wep.spec.container_id} "
                    f"(endpoint {wep.metadata.namespace}/{wep.metadata.name})"
                )
        return None

    def _host_side_taken(self, pod: _Pod) -> str | None:
        """Why the existing host interface ``pod.host_ifname`` is not this pod's to replace.

        Calico replaces it (same pod name, an earlier sandbox), and so do we when the pod's
        own endpoint names it or no endpoint does (an unfinished attempt); never when another
        pod's endpoint names it. Only reached when the interface exists, so the list is rare.
        """
        mine = (pod.namespace, pod.wep_name)
        for other in self.resources.list(WorkloadEndpoint):
            key = (other.metadata.namespace, other.metadata.name)
            if (
                key != mine
                and other.spec.node == self.node
                and other.spec.interface_name == pod.host_ifname
            ):
                return (
                    f"it is the interface of endpoint {key[0]}/{key[1]} "
                    f"(container {other.spec.container_id}), another pod"
                )
        return None

    @contextlib.contextmanager
    def _adding_container(self, container_id: str) -> Iterator[None]:
        with self._adds_lock:
            self._adds[container_id] = time.monotonic()
            self._adding[container_id] = self._adding.get(container_id, 0) + 1
        if len(self._adds) > ADDS_REMEMBERED:
            self._forget_old_adds()  # runtimes without GC (containerd 1.6) never prune it
        try:
            yield
        finally:
            with self._adds_lock:
                left = self._adding.pop(container_id) - 1
                if left:
                    self._adding[container_id] = left

    def _address_for(
        self, pod: _Pod, req: CniRequest, requested: list[ipaddress.IPv4Address]
    ) -> ipaddress.IPv4Address:
        """The handle's address if it has one (a repeated ADD), else a new one."""
        with self._ipam_lock:
            held = [a for a in self.ipam.addresses_for_handle(pod.handle) if a.version == 4]
            if held and (not requested or held[0] == requested[0]):
                return held[0]
            if held:
                self.ipam.release_by_handle(pod.handle)
            attrs = {ATTR_NAMESPACE: pod.namespace, ATTR_POD: pod.pod} if pod.pod else {}
            got = self.ipam.assign(
                node=self.node,
                handle=pod.handle,
                pools=list(req.pools) or None,
                attrs=attrs,
                ip=requested[0] if requested else None,
            )
        address = got[0]
        assert isinstance(address, ipaddress.IPv4Address)
        return address

    def _endpoint(
        self, pod: _Pod, network: str, mac: str, ip: ipaddress.IPv4Address
    ) -> WorkloadEndpoint:
        spec: dict[str, object] = {
            "orchestrator": pod.orchestrator,
            "node": self.node,
            "containerID": pod.container_id,
            "endpoint": pod.ifname,
            "interfaceName": pod.host_ifname,
            "mac": mac,
            "ipNetworks": [f"{ip}/32"],
            "profiles": [f"kns.{pod.namespace}"],
        }
        if pod.pod:
            spec["pod"] = pod.pod
        return WorkloadEndpoint.from_document(
            {
                "apiVersion": API_VERSION,
                "kind": "WorkloadEndpoint",
                "metadata": {
                    "name": pod.wep_name,
                    "namespace": pod.namespace,
                    "labels": {
                        "projectcalico.org/namespace": pod.namespace,
                        "projectcalico.org/orchestrator": pod.orchestrator,
                    },
                    "annotations": {NETWORK_ANNOTATION: network},
                },
                "spec": spec,
            }
        )

    def _undo_add(self, pod: _Pod, netns: str, cause: BaseException) -> None:
        """Best effort: each step runs even if an earlier one fails (the runtime's DEL, or
        GC, finishes what this cannot)."""
        log.warning("ADD %s failed (%s); undoing it", pod.container_id, cause)
        steps: list[tuple[str, Callable[[], object]]] = [
            ("delete the host interface", lambda: self.wiring.detach_host_side(pod.host_ifname)),
            ("delete the pod interface", lambda: self._detach_peer_of_ours(pod, netns)),
            ("release the address", self._release(pod)),
        ]
        for what, step in steps:
            try:
                step()
            except Exception:
                log.exception("undo ADD %s: cannot %s", pod.container_id, what)

    def _detach_peer_of_ours(self, pod: _Pod, netns: str) -> bool:
        """Delete the pod's interface only if its peer is our host interface (deleting the
        host end usually took it already)."""
        found = self.wiring.inspect(netns, pod.ifname, pod.host_ifname).pod_side
        if found is None or found.kind != "veth" or found.peer != pod.host_ifname:
            return False
        return self.wiring.detach_pod_side(netns, pod.ifname, found.index)

    def _release(self, pod: _Pod) -> Callable[[], object]:
        def release() -> object:
            with self._ipam_lock:
                return self.ipam.release_by_handle(pod.handle)

        return release

    # -- DEL -------------------------------------------------------------------------------------
    def _del(self, pod: _Pod, netns: str, keep: Callable[[], bool] | None = None) -> bool:
        """Remove the attachment; False if ``keep()`` (asked under the pod's lock) says no.

        Kernel first, then IPAM, then the endpoint: a DEL interrupted anywhere is finished by
        the runtime's retry, and the endpoint (which says whose the interface is) goes last.
        """
        with (
            self._pod_locks.hold(pod.host_ifname),
            contextlib.ExitStack() as stack,
        ):
            if keep is not None and keep():
                return False
            # Refuses the node's own namespace before anything changes; None: no namespace
            # given, or it is gone.
            ns = (
                stack.enter_context(self.wiring.open_pod_netns(netns, gone_ok=True))
                if netns
                else None
            )
            stored = self._stored_endpoint(pod)
            seen = stored if stored is not None and self._names_us(pod, stored[1]) else None
            # Deleting the host end deletes the pod end too: one kernel deletion (~10 ms of
            # RCU synchronisation each), and no thread entering the pod's namespace.
            removed = self._owns_host_side(pod, seen is not None) and (
                self.wiring.detach_host_side(pod.host_ifname)
            )
            if ns is not None and not removed:
                # A veth left in the pod whose host end we did not delete: an ADD that died
                # half-way. Deleted only if provably this pod's, never by name alone.
                found = self.wiring.inspect(ns, pod.ifname, pod.host_ifname).pod_side
                wep = None if stored is None else stored[1]
                if found is not None and self._not_ours(pod, found, wep) is None:
                    self.wiring.detach_pod_side(ns, pod.ifname, found.index)
            self._release(pod)()
            if seen is not None:
                self._delete_endpoint(pod, seen)
        return True

    def _owns_host_side(self, pod: _Pod, owned: bool) -> bool:
        """Is the host interface ``pod.host_ifname`` this container's to delete?

        The name is per pod, not per sandbox, so a late DEL of an old sandbox sees the live
        sandbox's interface under the same name. It is ours if the endpoint still names this
        container (a newer sandbox's ADD would have replaced the endpoint, and ADD and DEL of
        one pod never overlap), or if the host routes one of our handle's addresses through
        it (an ADD that died before writing its endpoint).
        """
        if owned:
            return True
        addresses = self.ipam.addresses_for_handle(pod.handle)
        v4 = [a for a in addresses if isinstance(a, ipaddress.IPv4Address)]
        return (
            bool(v4)
            and self.wiring.host_link_exists(pod.host_ifname)
            and any(self.wiring.routes_to(ip) == pod.host_ifname for ip in v4)
        )

    def _stored_endpoint(self, pod: _Pod) -> tuple[KeyValue, WorkloadEndpoint] | None:
        """The pod's stored endpoint, whichever container it names (None: absent)."""
        kv = self.store.get(resource_key(WorkloadEndpoint.KIND, pod.wep_name, pod.namespace))
        if kv is None:
            return None
        try:
            return kv, self.resources.decode(WorkloadEndpoint, kv)
        except CorruptResourceError as exc:
            log.warning("ignoring an unreadable endpoint: %s", exc)
            return None

    @staticmethod
    def _names_us(pod: _Pod, wep: WorkloadEndpoint) -> bool:
        return wep.spec.container_id == pod.container_id

    def _endpoint_kv(self, pod: _Pod) -> tuple[KeyValue, WorkloadEndpoint] | None:
        """The pod's stored endpoint if it names this container (None: absent, another's)."""
        stored = self._stored_endpoint(pod)
        return stored if stored is not None and self._names_us(pod, stored[1]) else None

    def _endpoint_of(self, pod: _Pod) -> WorkloadEndpoint | None:
        seen = self._endpoint_kv(pod)
        return None if seen is None else seen[1]

    def _delete_endpoint(self, pod: _Pod, seen: tuple[KeyValue, WorkloadEndpoint]) -> None:
        """Delete the endpoint if, at the moment of deletion, it still names this container:
        compare-and-swap on the revision it was read at, re-reading if it changed."""
        kv: KeyValue | None = seen[0]
        for _ in range(5):
            if kv is None:
                return
            try:
                self.store.delete(kv.key, kv.mod_revision)
                return
            except NotFoundError:
                return
            except ConflictError:
                again = self._endpoint_kv(pod)  # None: a newer sandbox took it over meanwhile
                kv = None if again is None else again[0]
        raise CniCodeError(Code.TRY_AGAIN_LATER, f"endpoint {pod.wep_name} keeps changing")

    # -- CHECK -----------------------------------------------------------------------------------
    def _check(self, req: CniRequest) -> None:
        pod = self._pod_of(req)
        if req.prev_result is None:
            raise CniCodeError(Code.INVALID_NETWORK_CONFIG, "CHECK needs prevResult")
        if not req.netns:
            raise CniCodeError(Code.UNKNOWN_CONTAINER, "CHECK needs the pod's CNI_NETNS")
        ip = _our_address(req.prev_result, pod)
        with (
            self._pod_locks.hold(pod.host_ifname),
            self.wiring.open_pod_netns(req.netns) as netns,
        ):
            assert netns is not None
            problems = self.wiring.check(PodLink(pod.host_ifname, pod.ifname, netns, ip, 0))
            if ip not in self.ipam.addresses_for_handle(pod.handle):
                problems.append(f"IPAM does not hold {ip} for handle {pod.handle}")
            wep = self._endpoint_of(pod)
            if wep is None:
                problems.append(f"no workload endpoint {pod.wep_name} for this container")
            elif f"{ip}/32" not in wep.spec.ip_networks:
                problems.append(f"endpoint {pod.wep_name} does not list {ip}/32")
        if problems:
            raise CniCodeError(
                Code.CHECK_FAILED,
                f"pod networking is not as ADD left it ({len(problems)} problem(s))",
                "; ".join(problems),
            )

    # -- GC --------------------------------------------------------------------------------------
    def _gc(self, req: CniRequest) -> CniResponse:
        gc_started = time.monotonic()
        valid = {(a.container_id, a.ifname) for a in req.valid_attachments}
        valid_ids = {cid for cid, _ in valid}
        stale: dict[tuple[str, str], tuple[str | None, str | None]] = {}
        for wep in self.resources.list(WorkloadEndpoint):
            cid = wep.spec.container_id
            if (
                wep.spec.node == self.node
                and wep.metadata.annotations.get(NETWORK_ANNOTATION) == req.network
                and cid
                and (cid, wep.spec.endpoint) not in valid
            ):
                stale[(cid, wep.spec.endpoint)] = (wep.metadata.namespace, wep.spec.pod)
        prefix = pod_handle_prefix(req.network)
        for blk in self.ipam.store.blocks():
            for _ordinal, attr in blk.value.allocated():
                handle = attr.handle_id or ""
                cid = handle[len(prefix) :]
                if (
                    handle.startswith(prefix)
                    and attr.attrs.get(ATTR_NODE) == self.node
                    and cid not in valid_ids
                    and not any(key[0] == cid for key in stale)
                ):
                    stale[(cid, "eth0")] = (
                        attr.attrs.get(ATTR_NAMESPACE),
                        attr.attrs.get(ATTR_POD),
                    )
        errors: list[str] = []
        removed: list[str] = []
        for (cid, ifname), (namespace, pod_name) in sorted(stale.items()):
            try:
                pod = self._pod(req.network, cid, ifname, namespace, pod_name)
                if self._del(pod, "", keep=functools.partial(self._added_since, cid, gc_started)):
                    removed.append(f"{cid}/{ifname}")
            except Exception as exc:
                errors.append(f"{cid}/{ifname}: {_failure_of(exc).msg}")
        self._forget_old_adds()
        if removed:
            log.info("GC removed %d attachment(s): %s", len(removed), ", ".join(removed))
        if errors:
            raise CniCodeError(
                Code.TRY_AGAIN_LATER,
                f"GC could not remove {len(errors)} attachment(s)",
                "; ".join(errors),
            )
        return CniResponse()

    def _added_since(self, container_id: str, since: float) -> bool:
        """An ADD for the container is running, or started after ``since``: GC must keep it
        (the runtime's list is a snapshot that may predate it)."""
        with self._adds_lock:
            started = self._adds.get(container_id)
            return container_id in self._adding or (started is not None and started >= since)

    def _forget_old_adds(self) -> None:
        horizon = time.monotonic() - RECENT_ADD_SECONDS
        with self._adds_lock:
            for cid in [c for c, t in self._adds.items() if t < horizon]:
                del self._adds[cid]

    # -- STATUS ----------------------------------------------------------------------------------
    def _status(self) -> None:
        try:
            pools = self.ipam.view.pools()
            candidates = select_pools(
                pools,
                version=4,
                node=self.node,
                node_labels=lambda: self.ipam.view.node_labels(self.node),
                requested=None,
            )
            usage = {row.cidr: row.free for row in self.ipam.usage() if row.grouping == "IP Pool"}
        except NoPoolsError as exc:
            raise CniCodeError(
                Code.PLUGIN_NOT_AVAILABLE, f"no IPv4 pool for this node: {exc}"
            ) from exc
        except DatastoreError as exc:
            raise CniCodeError(
                Code.PLUGIN_NOT_AVAILABLE, f"the datastore is not reachable: {exc}"
            ) from exc
        if not any(usage.get(p.spec.cidr, 0) > 0 for p in candidates):
            cidrs = ", ".join(p.spec.cidr for p in candidates)
            raise CniCodeError(
                Code.PLUGIN_NOT_AVAILABLE,
                f"no free addresses left in the pools for this node ({cidrs})",
            )


def _read_all(conn: socket.socket) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_MESSAGE:
            raise OSError(f"request larger than {MAX_MESSAGE} bytes")
        chunks.append(chunk)


def _requested_ips(values: Sequence[str]) -> list[ipaddress.IPv4Address]:
    out: list[ipaddress.IPv4Address] = []
    for text in values:
        try:
            address = ipaddress.ip_interface(text).ip
        except ValueError:
            raise CniCodeError(
                Code.INVALID_NETWORK_CONFIG, f"requested address {text!r} is not an IP address"
            ) from None
        if not isinstance(address, ipaddress.IPv4Address):
            raise CniCodeError(
                Code.UNSUPPORTED_FIELD, f"requested address {text}: tortie pods are IPv4 only"
            )
        if address not in out:
            out.append(address)
    if len(out) > 1:
        raise CniCodeError(
            Code.UNSUPPORTED_FIELD,
            f"{len(out)} addresses requested ({', '.join(map(str, out))}): a tortie pod has one",
        )
    return out


def _our_address(prev: dict[str, object], pod: _Pod) -> ipaddress.IPv4Address:
    """Our IPv4 address in a (canonical) prevResult: the one on the pod's ``ifname``."""
    interfaces = prev.get("interfaces")
    ips = prev.get("ips")
    if not isinstance(interfaces, list) or not isinstance(ips, list):
        raise CniCodeError(Code.CHECK_FAILED, "prevResult lists no interfaces or addresses")
    ours = {
        i
        for i, iface in enumerate(interfaces)
        if isinstance(iface, dict) and iface.get("name") == pod.ifname and iface.get("sandbox")
    }
    for ip in ips:
        if isinstance(ip, dict) and ip.get("interface") in ours:
            try:
                address = ipaddress.ip_interface(str(ip.get("address"))).ip
            except ValueError:
                continue
            if isinstance(address, ipaddress.IPv4Address):
                return address
    raise CniCodeError(
        Code.CHECK_FAILED, f"prevResult has no IPv4 address on the pod's {pod.ifname}"
    )


# ==============================================================================================
# The standalone runner (until the agent embeds the server): python -m tortie.agent.cniserver


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tortie.agent.cniserver",
        description="Serve tortie's CNI plugin for one node (what 'tortie node run' embeds).",
    )
    p.add_argument("--node", required=True, help="this node's name")
    p.add_argument("--datastore", required=True, metavar="URL", help="the datastore URL")
    p.add_argument("--socket", required=True, metavar="PATH", help="the unix socket to serve")
    p.add_argument("--mtu", type=int, default=1480, help="pods' MTU (default 1480: IPIP)")
    p.add_argument(
        "--host-netns",
        metavar="NAME",
        help="network namespace of the node (host side of pods); default: this process's",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log every request")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from tortie.datastore.factory import open_datastore

    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    try:
        store = open_datastore(args.datastore)
        server = CniServer(
            args.socket,
            args.node,
            store,
            IPAM(store),
            lambda: int(args.mtu),
            host_netns=args.host_netns,
        )
        server.start()
    except TortieError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"tortie CNI server for node {args.node} listening on {args.socket}", file=sys.stderr)
    try:
        done.wait()
    finally:
        server.stop()
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
