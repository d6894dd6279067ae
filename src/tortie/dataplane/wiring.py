"""A pod's kernel plumbing, Calico's way: a veth pair, proxy ARP, a /32 each way.

Problem: the CNI server must give a pod a working interface and take it away again, from
threads serving several pods at once, in a namespace that may not be its own (lab nodes are
network namespaces). What Calico builds, and so what we build:

- a veth pair: host side ``cali<11 hex>`` (:func:`tortie.model.naming.host_ifname`) with MAC
  ``ee:ee:ee:ee:ee:ee``, pod side ``CNI_IFNAME`` created straight into the pod's namespace (no
  name clash with the host's ``eth0``, nothing half-moved if we fail);
- host side sysctls proxy_arp=1, proxy_delay=0, forwarding=1 (and the rest of
  :func:`tortie.dataplane.workload.workload_sysctls`), so the host answers the pod's ARP for
  the gateway 169.254.1.1, which nobody owns;
- pod side: the pod's address as a /32, ``169.254.1.1 dev eth0 scope link``,
  ``default via 169.254.1.1 dev eth0`` (protocol ``static``);
- host side: ``<ip>/32 dev caliX scope link`` (protocol ``boot``, as Calico's CNI plugin
  writes it: the agent's route table, which owns protocol 80, replaces it when it programs
  the pod itself, and never mistakes it for a stale route of its own).

Every kernel access goes through the :class:`~tortie.dataplane.netlink.Namespaces` seam: a
:class:`~tortie.dataplane.netlink.Netlink` for the host's namespace and one for the pod's,
opened for one call and closed before it returns (the kernel's are raw netlink sockets opened
inside the namespace, usable from the request's thread; tests use
:class:`~tortie.dataplane.fake_netns.FakeNamespaces`).

Whose interface is it? A pod's namespace comes from the runtime (``CNI_NETNS``) and may be
wrong or hostile: the node's own namespace, a file that is no namespace, or another pod's
namespace. :meth:`Wiring.open_pod_netns` opens it once, refuses the first two by identity (not
by path), and the work goes through that open file. Before ADD replaces anything,
:meth:`Wiring.inspect` reports what is there: an interface of the requested name in the pod
(its kind, MAC, addresses, and, proven by ifindex *and* netns id both ways, the host-side name
of its veth peer) and a host interface of our name. The caller judges whose they are (it has
the endpoint records); :meth:`Wiring.attach` then removes exactly what was judged, by ifindex.
The kernel facts this relies on are in docs/cni-namespaces.md.

Invariants:
- Nothing in a pod's namespace is deleted by name alone, only the ifindex that was inspected
  and judged; a host interface is replaced only as judged (:meth:`Wiring.attach`).
- :meth:`Wiring.attach` does not undo on failure; the caller removes the host side (deleting
  one end of a veth deletes the other and the routes through it), which also cleans up after
  a crash. Every removal treats "already gone" as success.
- Failures are :class:`WiringError` subclasses by cause (the CNI code is chosen by type,
  :mod:`tortie.model.cnierrors`), carrying the errno.

Hazards: pyroute2's proxy_arp setting is a no-op on these kernels, so sysctls go through
``/proc/sys`` (dataplane.netns). ``route get`` answers with the best route, which may be a
block's blackhole or the default: ownership checks compare the device, not just success.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from tortie.dataplane.netlink import Link, Namespaces, Netlink
from tortie.dataplane.netns import NetnsId, NetnsRef, NotANetnsError, fd_path
from tortie.dataplane.routes import MAIN_TABLE, KernelRoute, Scope
from tortie.dataplane.wiring_check import check_host, check_pod_side, routes_to
from tortie.dataplane.workload import workload_sysctls
from tortie.errors import TortieError
from tortie.model.naming import GATEWAY, HOST_MAC

RTPROT_BOOT = 3  # the host's /32, as Calico's CNI plugin writes it
RTPROT_STATIC = 4  # the pod's two routes
INIT_NETNS = "/proc/1/ns/net"  # the machine's own namespace (PID 1's), when visible
OPEN_STEP = "open the pod's network namespace"
_GATEWAY = IPv4Address(GATEWAY)


class WiringError(TortieError):
    """A kernel change failed: ``step`` says which, ``code`` is the errno (0 if none)."""

    def __init__(self, step: str, detail: str, code: int = 0) -> None:
        super().__init__(f"{step}: {detail}")
        self.step = step
        self.code = code


class NetnsRefusedError(WiringError):
    """The pod's namespace is one no pod may have: the node's own, or not a network namespace."""


class NetnsGoneError(WiringError):
    """The pod's namespace cannot be opened or entered (it does not exist, or went away)."""


class InterfaceTakenError(WiringError):
    """An interface with one of our names appeared after it was inspected: not ours to delete."""


@dataclass(frozen=True, slots=True)
class PodInterface:
    """An interface already in the pod's namespace under the requested name."""

    index: int
    kind: str | None  # "veth", "bridge", ... (None: the kernel gave no kind)
    mac: str
    addresses: tuple[str, ...]  # its IPv4 addresses
    peer: str | None  # the host-side name of its veth peer, if the peer is in the node's namespace


@dataclass(frozen=True, slots=True)
class Existing:
    """What is in the way of an ADD (:meth:`Wiring.inspect`); nothing is removed until judged."""

    pod_side: PodInterface | None = None
    host_index: int | None = None  # ifindex of the host interface with our name, if any


@dataclass(frozen=True, slots=True)
class PodLink:
    """What one attachment should look like."""

    host_ifname: str
    ifname: str
    netns: str  # the pod's namespace: a path (/proc/PID/ns/net, /run/netns/NAME, an open fd's)
    ip: ipaddress.IPv4Address
    mtu: int


@contextlib.contextmanager
def _step(step: str) -> Iterator[None]:
    """Kernel refusals (NetlinkError, OSError) become :class:`WiringError` naming ``step``."""
    try:
        yield
    except WiringError:
        raise
    except OSError as exc:
        raise WiringError(step, exc.strerror or str(exc), exc.errno or 0) from exc


def _gone_ok(code: int) -> bool:
    return code in (errno.ENODEV, errno.ENOENT)


class Wiring:
    """Attach, detach and check pods; the host side lives in ``host_netns`` (None: ours)."""

    def __init__(self, namespaces: Namespaces, host_netns: NetnsRef = None) -> None:
        self.namespaces = namespaces
        self.host_netns = host_netns

    @contextlib.contextmanager
    def _host(self) -> Iterator[Netlink]:
        netlink = self.namespaces.netlink(self.host_netns)
        try:
            yield netlink
        finally:
            netlink.close()

    @contextlib.contextmanager
    def _pod(self, netns: str) -> Iterator[Netlink]:
        """A Netlink in the pod's namespace ``netns``; :class:`NetnsGoneError` if it is gone."""
        if not os.path.exists(netns):
            raise NetnsGoneError(OPEN_STEP, f"{netns} does not exist", errno.ENOENT)
        try:
            netlink = self.namespaces.netlink(netns)
        except OSError as exc:  # setns failed: the namespace vanished under us
            raise NetnsGoneError(
                f"work in the pod's namespace {netns}", str(exc), exc.errno or 0
            ) from exc
        try:
            yield netlink
        finally:
            netlink.close()

    # -- the pod's namespace -----------------------------------------------------------------
    def own_namespaces(self) -> set[NetnsId]:
        """Namespaces no pod may be given: the one the host side lives in, this process's
        (they differ in a lab), and the machine's init namespace."""
        own = {self.namespaces.identity(self.host_netns), self.namespaces.identity(None)}
        with contextlib.suppress(OSError):
            own.add(self.namespaces.identity(INIT_NETNS))
        return own

    @contextlib.contextmanager
    def open_pod_netns(self, path: str, *, gone_ok: bool = False) -> Iterator[str | None]:
        """Open the pod's namespace ``path`` once and yield a path to that open namespace (use
        it for all the work: ``path`` itself may be re-pointed meanwhile).

        Raises :class:`NetnsRefusedError` if it is the node's own namespace (however named) or
        not a network namespace, and :class:`NetnsGoneError` (ENOENT) if nothing is there.
        With ``gone_ok`` (DEL), a missing path or one that is no namespace yields None: an
        unmounted namespace pin is an empty file, and DEL must still finish; the node's own
        namespace is refused all the same.
        """
        try:
            fd, ident = self.namespaces.open(path)
        except FileNotFoundError:
            if gone_ok:
                yield None
                return
            raise NetnsGoneError(OPEN_STEP, f"{path} does not exist", errno.ENOENT) from None
        except NotANetnsError as exc:
            if gone_ok:
                yield None
                return
            raise NetnsRefusedError(
                OPEN_STEP,
                f"{path} is not a network namespace ({exc.strerror}); CNI_NETNS must name the "
                "pod's namespace (/proc/<pid>/ns/net or /run/netns/<name>)",
                errno.EINVAL,
            ) from None
        except OSError as exc:
            raise NetnsGoneError(OPEN_STEP, f"{path}: {exc.strerror}", exc.errno or 0) from exc
        try:
            if ident in self.own_namespaces():
                raise NetnsRefusedError(
                    OPEN_STEP,
                    f"{path} is the node's own network namespace"
                    f"{f' ({self.host_netns})' if self.host_netns else ''}, not a pod's: "
                    "wiring a pod there would replace the node's routes and interfaces. The "
                    "runtime passed the wrong CNI_NETNS; give the pod's own namespace",
                    errno.EINVAL,
                )
            yield fd_path(fd)
        finally:
            os.close(fd)

    def inspect(self, netns: str, ifname: str, host_ifname: str) -> Existing:
        """What an ADD of (``host_ifname``, ``ifname`` in ``netns``) would be replacing."""
        step = f"inspect {ifname} in the pod"
        with contextlib.ExitStack() as stack:
            pod = stack.enter_context(self._pod(netns))
            host = stack.enter_context(self._host())
            stack.enter_context(_step(step))
            host_link = host.get_link(host_ifname)
            host_index = None if host_link is None else host_link.index
            found = pod.get_link(ifname)
            if found is None:
                return Existing(host_index=host_index)
            # Both namespaces as fds: each side asks the kernel for the other's netns id
            # (RTM_GETNSID), which is how a veth names its peer's namespace.
            host_fd, _ = self.namespaces.open(self.host_netns)
            stack.callback(os.close, host_fd)
            pod_fd, _ = self.namespaces.open(netns)
            stack.callback(os.close, pod_fd)
            addresses = tuple(str(a.ip) for a in pod.list_addrs(ifname))
            peer = _peer_name(found, pod.netnsid(host_fd), host, pod_fd)
            interface = PodInterface(
                found.index, found.kind, (found.mac or "").lower(), addresses, peer
            )
            return Existing(pod_side=interface, host_index=host_index)

    # -- ADD ---------------------------------------------------------------------------------
    def attach(self, link: PodLink, existing: Existing | None = None) -> str:
        """Build the attachment, first removing what ``existing`` found (the caller judged it
        this container's to replace); return the pod side's MAC. Raises :class:`WiringError`,
        also if something else took the names since it was inspected."""
        existing = existing or Existing()
        with self._host() as host, self._pod(link.netns) as pod:
            if existing.pod_side is not None:
                self._remove_pod_side(pod, link.ifname, existing.pod_side.index)
            self._create_veth(host, link, existing.host_index)
            self._configure_host(host, link)
            mac = self._configure_pod_side(pod, link)
            self._host_route(host, link)
        return mac

    @staticmethod
    def _host_route(host: Netlink, link: PodLink) -> None:
        with _step(f"route {link.ip}/32 to {link.host_ifname}"):
            index = _index(host, link.host_ifname, "route to it")
            host.replace_route(
                KernelRoute(
                    IPv4Network(f"{link.ip}/32"),
                    table=MAIN_TABLE,
                    proto=RTPROT_BOOT,
                    scope=Scope.LINK,
                    oif=index,
                )
            )

    @staticmethod
    def _remove_pod_side(pod: Netlink, ifname: str, index: int) -> None:
        with _step(f"replace {ifname} in the pod"):
            now = pod.get_link(ifname)
            if now is None:
                return  # went with its host end
            if now.index != index:
                raise InterfaceTakenError(
                    f"replace {ifname} in the pod",
                    f"another interface {ifname} appeared meanwhile; not ours to delete",
                    errno.EEXIST,
                )
            _delete_index(pod, index)

    @staticmethod
    def _create_veth(host: Netlink, link: PodLink, replaceable: int | None) -> None:
        with _step(f"create veth {link.host_ifname}/{link.ifname}"):
            stale = host.get_link(link.host_ifname)
            if stale is not None:
                # Same pod name, earlier sandbox (or an earlier attempt): Calico replaces it,
                # once the caller has judged it this pod's (``replaceable``).
                if stale.index != replaceable:
                    raise InterfaceTakenError(
                        f"create {link.host_ifname}",
                        f"{link.host_ifname} already exists and is not this pod's to replace",
                        errno.EEXIST,
                    )
                _delete_index(host, stale.index)
            host.create_veth(
                link.host_ifname, link.ifname, peer_netns=link.netns, mtu=link.mtu, mac=HOST_MAC
            )

    @staticmethod
    def _configure_host(host: Netlink, link: PodLink) -> None:
        with _step(f"set sysctls on {link.host_ifname}"):
            host.ensure_sysctls(workload_sysctls(link.host_ifname))
        with _step(f"set {link.host_ifname} up"):
            _index(host, link.host_ifname, "set it up")
            host.set_link(link.host_ifname, up=True)

    @staticmethod
    def _configure_pod_side(pod: Netlink, link: PodLink) -> str:
        name = link.ifname
        with _step(f"configure {name} in the pod"):
            index = _index(pod, name, "configure it")
            pod.set_link(name, up=True)
            pod.add_addr(name, IPv4Interface(f"{link.ip}/32"))
            gateway = IPv4Network(f"{GATEWAY}/32")
            route = KernelRoute(gateway, proto=RTPROT_STATIC, scope=Scope.LINK, oif=index)
            pod.replace_route(route)
            default = KernelRoute(
                IPv4Network("0.0.0.0/0"), proto=RTPROT_STATIC, gateway=_GATEWAY, oif=index
            )
            pod.replace_route(default)
            configured = pod.get_link(name)
            return str((configured.mac if configured else None) or "")

    # -- DEL ---------------------------------------------------------------------------------
    def detach_pod_side(self, netns: str, ifname: str, index: int) -> bool:
        """Delete the pod's ``ifname`` if it is still the interface ``index`` that was
        inspected and judged (a newer one of that name is left alone)."""
        if not netns or not os.path.exists(netns):
            return False
        try:
            with self._pod(netns) as pod, _step(f"delete {ifname} in the pod"):
                now = pod.get_link(ifname)
                return now is not None and now.index == index and _delete_index(pod, index)
        except NetnsGoneError as exc:
            if exc.code in (errno.ENOENT, errno.EINVAL):  # namespace went away meanwhile
                return False
            raise

    def detach_host_side(self, host_ifname: str) -> bool:
        """Delete the host veth (its peer and its routes go with it); False if absent."""
        with self._host() as host, _step(f"delete {host_ifname}"):
            found = host.get_link(host_ifname)
            return found is not None and _delete_index(host, found.index)

    def host_link_exists(self, host_ifname: str) -> bool:
        with self._host() as host, _step(f"look up {host_ifname}"):
            return host.get_link(host_ifname) is not None

    def routes_to(self, ip: ipaddress.IPv4Address) -> str | None:
        """The device the host routes ``ip`` through (None: unreachable or no device)."""
        try:
            with self._host() as host, _step(f"route get {ip}"):
                return routes_to(host, ip)
        except WiringError:
            return None  # ENETUNREACH and friends: nothing routes it

    # -- CHECK -------------------------------------------------------------------------------
    def check(self, link: PodLink) -> list[str]:
        """What differs from what :meth:`attach` builds (empty: all as it should be)."""
        with self._host() as host, _step(f"inspect {link.host_ifname}"):
            problems = check_host(host, link.host_ifname, link.ip)
        if not os.path.exists(link.netns):
            return [*problems, f"the pod's network namespace {link.netns} does not exist"]
        with self._pod(link.netns) as pod, _step(f"inspect {link.ifname} in the pod"):
            return problems + check_pod_side(pod, link.ifname, link.ip)


def _index(netlink: Netlink, name: str, doing: str) -> int:
    found = netlink.get_link(name)
    if found is None:
        raise WiringError(f"{doing} ({name})", "it vanished", errno.ENODEV)
    return found.index


def _delete_index(netlink: Netlink, index: int) -> bool:
    """Delete interface ``index``; False if it was gone already (its peer took it along)."""
    try:
        netlink.delete_link_index(index)
    except OSError as exc:
        if _gone_ok(exc.errno or 0):
            return False
        raise
    return True


def _peer_name(found: Link, host_nsid: int | None, host: Netlink, pod_fd: int) -> str | None:
    """The name of the pod interface ``found``'s veth peer if it lives in the host's namespace.

    ifindexes are per namespace (a pod's eth0 and a host's cali are often both 2), so the peer
    is proven both ways: the pod side points at the host's namespace (its netns id for it) and
    an ifindex there, and that host interface points back at the pod's namespace and the pod
    side's ifindex."""
    if (
        found.kind != "veth"
        or found.peer_index is None
        or found.peer_netnsid is None
        or found.peer_netnsid != host_nsid
    ):
        return None
    pod_nsid = host.netnsid(pod_fd)
    if pod_nsid is None:
        return None
    peer = host.get_link_by_index(found.peer_index)
    if peer is None or peer.peer_index != found.index or peer.peer_netnsid != pod_nsid:
        return None
    return peer.name
