"""A pod's kernel plumbing, Calico's way: a veth pair, proxy ARP, a /32 each way.

Problem: the CNI server must give a pod a working interface and take it away again, from
threads serving several pods at once, in a namespace that may not be its own (lab nodes are
network namespaces). What Calico builds, and so what we build:

- a veth pair: host side ``cali<11 hex>`` with MAC ``ee:ee:ee:ee:ee:ee``, pod side
  ``CNI_IFNAME`` created straight into the pod's namespace (no name clash with the host's
  ``eth0``, nothing half-moved if we fail);
- host side sysctls proxy_arp=1, proxy_delay=0, forwarding=1 (and the rest of
  :func:`tortie.dataplane.workload.workload_sysctls`), so the host answers the pod's ARP for
  the gateway 169.254.1.1, which nobody owns;
- pod side: the pod's address as a /32, ``169.254.1.1 dev eth0 scope link``,
  ``default via 169.254.1.1 dev eth0``;
- host side: ``<ip>/32 dev caliX scope link`` (protocol ``boot``, as Calico's CNI plugin
  writes it: the agent's route table, which owns protocol 80, replaces it when it programs
  the pod itself, and never mistakes it for a stale route of its own).

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
- Each call opens its own pyroute2 sockets in the thread that uses them and closes them
  before returning: pyroute2 0.9 binds a socket per calling thread, so sharing one across
  the server's request threads would leak a socket per thread. Opening one costs ~2 ms.
- Work in another namespace runs in a short-lived thread that entered it
  (:func:`tortie.dataplane.netns.run_in_netns`); the calling thread never changes namespace.
- Nothing in a pod's namespace is deleted by name alone, only the ifindex that was inspected
  and judged; a host interface is replaced only as judged (:meth:`Wiring.attach`).
- :meth:`Wiring.attach` does not undo on failure; the caller removes the host side (deleting
  one end of a veth deletes the other and the routes through it), which also cleans up after
  a crash. Every removal treats "already gone" as success.

Hazards: pyroute2's proxy_arp setting is a no-op on these kernels, so sysctls go through
``/proc/sys`` (dataplane.netns). ``route get`` answers with the best route, which may be a
block's blackhole or the default: ownership checks compare the device, not just success.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from tortie.dataplane.netns import (
    OWN_NETNS,
    NetnsId,
    NetnsRef,
    NotANetnsError,
    fd_path,
    netns_identity,
    netns_path,
    open_netns,
    read_sysctls,
    run_in_netns,
)
from tortie.dataplane.workload import configure_workload_interface, workload_sysctls
from tortie.model.naming import GATEWAY, HOST_MAC

T = TypeVar("T")

RTPROT_BOOT = 3
SCOPE_LINK = 253
MAIN_TABLE = 254
IFF_UP = 0x1
NSID_NOT_ASSIGNED = 0xFFFFFFFF  # NETNSA_NSID_NOT_ASSIGNED (-1) as pyroute2 decodes it
INIT_NETNS = "/proc/1/ns/net"  # the machine's own namespace (PID 1's), when visible


class WiringError(Exception):
    """A kernel change failed: ``step`` says which, ``code`` is the errno (0 if none)."""

    def __init__(self, step: str, detail: str, code: int = 0) -> None:
        super().__init__(f"{step}: {detail}")
        self.step = step
        self.code = code


class NetnsRefusedError(WiringError):
    """The pod's namespace is one no pod may have: the node's own, or not a network namespace."""


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
    netns: str  # the pod's namespace: a path (/proc/PID/ns/net, /run/netns/NAME)
    ip: ipaddress.IPv4Address
    mtu: int


@contextlib.contextmanager
def _ipr(step: str) -> Iterator[Any]:
    """A pyroute2 IPRoute in the current thread's namespace, closed afterwards; netlink
    errors become :class:`WiringError` naming ``step``."""
    from pyroute2 import IPRoute  # type: ignore[import-untyped]
    from pyroute2.netlink.exceptions import (  # type: ignore[import-untyped]
        NetlinkError,
    )

    ipr = IPRoute()
    try:
        yield ipr
    except NetlinkError as exc:
        raise WiringError(step, str(exc), exc.code) from exc
    finally:
        ipr.close()


def _index(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def _link_info(ipr: Any, index: int) -> dict[str, Any]:
    link = ipr.get_links(index)[0]
    info = link.get_attr("IFLA_LINKINFO")
    return {
        "kind": info.get_attr("IFLA_INFO_KIND") if info is not None else None,
        "up": bool(link["flags"] & IFF_UP),
        "mac": link.get_attr("IFLA_ADDRESS"),
        "mtu": link.get_attr("IFLA_MTU"),
    }


def _in_netns(netns: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` inside the pod namespace ``netns`` (a path)."""
    if not os.path.exists(netns):
        raise WiringError("open the pod's network namespace", f"{netns} does not exist", 2)
    try:
        return run_in_netns(netns, fn)
    except OSError as exc:  # setns failed, or the namespace vanished under us
        raise WiringError(f"work in the pod's namespace {netns}", str(exc), exc.errno or 0) from exc


class Wiring:
    """Attach, detach and check pods; the host side lives in ``host_netns`` (None: ours)."""

    def __init__(self, host_netns: NetnsRef = None) -> None:
        self.host_netns = host_netns

    def _host(self, fn: Callable[[], T]) -> T:
        return run_in_netns(self.host_netns, fn)

    # -- the pod's namespace -----------------------------------------------------------------
    def own_namespaces(self) -> set[NetnsId]:
        """Namespaces no pod may be given: the one the host side lives in, this process's
        (they differ in a lab), and the machine's init namespace."""
        own = {netns_identity(self.host_netns), netns_identity(None)}
        with contextlib.suppress(OSError):
            own.add(netns_identity(INIT_NETNS))
        return own

    @contextlib.contextmanager
    def open_pod_netns(self, path: str, *, gone_ok: bool = False) -> Iterator[str | None]:
        """Open the pod's namespace ``path`` once and yield a path to that open namespace (use
        it for all the work: ``path`` itself may be re-pointed meanwhile).

        Raises :class:`NetnsRefusedError` if it is the node's own namespace (however named) or
        not a network namespace, and a :class:`WiringError` with ENOENT if nothing is there.
        With ``gone_ok`` (DEL), a missing path or one that is no namespace yields None: an
        unmounted namespace pin is an empty file, and DEL must still finish; the node's own
        namespace is refused all the same.
        """
        try:
            fd, ident = open_netns(path)
        except FileNotFoundError:
            if gone_ok:
                yield None
                return
            raise WiringError(
                "open the pod's network namespace", f"{path} does not exist", errno.ENOENT
            ) from None
        except NotANetnsError as exc:
            if gone_ok:
                yield None
                return
            raise NetnsRefusedError(
                "open the pod's network namespace",
                f"{path} is not a network namespace ({exc.strerror}); CNI_NETNS must name the "
                "pod's namespace (/proc/<pid>/ns/net or /run/netns/<name>)",
                errno.EINVAL,
            ) from None
        except OSError as exc:
            raise WiringError(
                "open the pod's network namespace", f"{path}: {exc.strerror}", exc.errno or 0
            ) from exc
        try:
            if ident in self.own_namespaces():
                raise NetnsRefusedError(
                    "open the pod's network namespace",
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
        with contextlib.ExitStack() as stack:
            # Both namespaces as fds, opened in this thread: each side asks the kernel for the
            # other's netns id (RTM_GETNSID), which is how a veth names its peer's namespace.
            host_fd = os.open(netns_path(self.host_netns) or OWN_NETNS, os.O_RDONLY | os.O_CLOEXEC)
            stack.callback(os.close, host_fd)
            pod_fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            stack.callback(os.close, pod_fd)
            found = _in_netns(netns, lambda: _inspect_pod_side(ifname, host_fd))

            def host_side() -> tuple[int | None, str | None]:
                with _ipr(f"inspect {host_ifname}") as ipr:
                    peer = None if found is None else _peer_name(ipr, found, pod_fd)
                    return _index(ipr, host_ifname), peer

            host_index, peer = self._host(host_side)
        if found is None:
            return Existing(host_index=host_index)
        return Existing(pod_side=_PodFacts.interface(found, peer), host_index=host_index)

    # -- ADD ---------------------------------------------------------------------------------
    def attach(self, link: PodLink, existing: Existing | None = None) -> str:
        """Build the attachment, first removing what ``existing`` found (the caller judged it
        this container's to replace); return the pod side's MAC. Raises :class:`WiringError`,
        also if something else took the names since it was inspected."""
        existing = existing or Existing()
        if existing.pod_side is not None:
            self._remove_pod_side(link.netns, link.ifname, existing.pod_side.index)
        self._create_veth(link, existing.host_index)
        self._configure_host(link)
        mac = _in_netns(link.netns, lambda: self._configure_pod_side(link))
        self._host_route(link)
        return mac

    def _remove_pod_side(self, netns: str, ifname: str, index: int) -> None:
        def work() -> None:
            with _ipr(f"replace {ifname} in the pod") as ipr:
                now = _index(ipr, ifname)
                if now is None:
                    return  # went with its host end
                if now != index:
                    raise InterfaceTakenError(
                        f"replace {ifname} in the pod",
                        f"another interface {ifname} appeared meanwhile; not ours to delete",
                        errno.EEXIST,
                    )
                _delete_link(ipr, index)

        _in_netns(netns, work)

    def _create_veth(self, link: PodLink, replaceable: int | None = None) -> None:
        def work() -> None:
            with _ipr(f"create veth {link.host_ifname}/{link.ifname}") as ipr:
                stale = _index(ipr, link.host_ifname)
                if stale is not None:
                    # Same pod name, earlier sandbox (or an earlier attempt): Calico replaces
                    # it, once the caller has judged it this pod's (``replaceable``).
                    if stale != replaceable:
                        raise InterfaceTakenError(
                            f"create {link.host_ifname}",
                            f"{link.host_ifname} already exists and is not this pod's to replace",
                            errno.EEXIST,
                        )
                    _delete_link(ipr, stale)
                ipr.link(
                    "add",
                    ifname=link.host_ifname,
                    kind="veth",
                    address=HOST_MAC,
                    mtu=link.mtu,
                    peer={"ifname": link.ifname, "net_ns_fd": link.netns, "mtu": link.mtu},
                )

        self._host(work)

    def _configure_host(self, link: PodLink) -> None:
        try:
            configure_workload_interface(link.host_ifname, netns=self.host_netns)
        except OSError as exc:
            raise WiringError(
                f"set sysctls on {link.host_ifname}", str(exc), exc.errno or 0
            ) from exc

        def work() -> None:
            with _ipr(f"set {link.host_ifname} up") as ipr:
                index = _index(ipr, link.host_ifname)
                if index is None:
                    raise WiringError(f"set {link.host_ifname} up", "it vanished", errno.ENODEV)
                ipr.link("set", index=index, state="up")

        self._host(work)

    @staticmethod
    def _configure_pod_side(link: PodLink) -> str:
        with _ipr(f"configure {link.ifname} in the pod") as ipr:
            index = _index(ipr, link.ifname)
            if index is None:
                raise WiringError(f"configure {link.ifname}", "not in the pod", errno.ENODEV)
            ipr.link("set", index=index, state="up")
            ipr.addr("add", index=index, address=str(link.ip), prefixlen=32)
            ipr.route("replace", dst=f"{GATEWAY}/32", oif=index, scope=SCOPE_LINK)
            ipr.route("replace", dst="0.0.0.0/0", gateway=GATEWAY, oif=index)
            return str(_link_info(ipr, index)["mac"])

    def _host_route(self, link: PodLink) -> None:
        def work() -> None:
            with _ipr(f"route {link.ip}/32 to {link.host_ifname}") as ipr:
                index = _index(ipr, link.host_ifname)
                if index is None:
                    raise WiringError(f"route to {link.host_ifname}", "it vanished", errno.ENODEV)
                ipr.route(
                    "replace",
                    dst=f"{link.ip}/32",
                    oif=index,
                    scope=SCOPE_LINK,
                    proto=RTPROT_BOOT,
                    table=MAIN_TABLE,
                )

        self._host(work)

    # -- DEL ---------------------------------------------------------------------------------
    def detach_pod_side(self, netns: str, ifname: str, index: int) -> bool:
        """Delete the pod's ``ifname`` if it is still the interface ``index`` that was
        inspected and judged (a newer one of that name is left alone)."""
        if not netns or not os.path.exists(netns):
            return False

        def work() -> bool:
            with _ipr(f"delete {ifname} in the pod") as ipr:
                if _index(ipr, ifname) != index:
                    return False
                return _delete_link(ipr, index)

        try:
            return _in_netns(netns, work)
        except WiringError as exc:
            if exc.code in (errno.ENOENT, errno.EINVAL):  # namespace went away meanwhile
                return False
            raise

    def detach_host_side(self, host_ifname: str) -> bool:
        """Delete the host veth (its peer and its routes go with it); False if absent."""

        def work() -> bool:
            with _ipr(f"delete {host_ifname}") as ipr:
                index = _index(ipr, host_ifname)
                return index is not None and _delete_link(ipr, index)

        return self._host(work)

    def host_link_exists(self, host_ifname: str) -> bool:
        def work() -> bool:
            with _ipr(f"look up {host_ifname}") as ipr:
                return _index(ipr, host_ifname) is not None

        return self._host(work)

    def routes_to(self, ip: ipaddress.IPv4Address) -> str | None:
        """The device the host routes ``ip`` through (None: unreachable or no device)."""

        def work() -> str | None:
            with _ipr(f"route get {ip}") as ipr:
                answer = ipr.route("get", dst=str(ip))
                oif = answer[0].get_attr("RTA_OIF") if answer else None
                if oif is None:
                    return None
                links = ipr.get_links(oif)
                return str(links[0].get_attr("IFLA_IFNAME")) if links else None

        try:
            return self._host(work)
        except WiringError:
            return None  # ENETUNREACH and friends: nothing routes it

    # -- CHECK -------------------------------------------------------------------------------
    def check(self, link: PodLink) -> list[str]:
        """What differs from what :meth:`attach` builds (empty: all as it should be)."""
        problems = self._check_host(link)
        if not os.path.exists(link.netns):
            return [*problems, f"the pod's network namespace {link.netns} does not exist"]
        return problems + _in_netns(link.netns, lambda: self._check_pod_side(link))

    def _check_host(self, link: PodLink) -> list[str]:
        name = link.host_ifname

        def work() -> list[str]:
            out: list[str] = []
            with _ipr(f"inspect {name}") as ipr:
                index = _index(ipr, name)
                if index is None:
                    return [f"host interface {name} does not exist"]
                info = _link_info(ipr, index)
                if info["kind"] != "veth":
                    out.append(f"host interface {name} is a {info['kind']}, not a veth")
                if not info["up"]:
                    out.append(f"host interface {name} is down")
                if str(info["mac"]).lower() != HOST_MAC:
                    out.append(f"host interface {name} has MAC {info['mac']}, not {HOST_MAC}")
            return out

        problems = self._host(work)
        if problems and problems[0].endswith("does not exist"):
            return problems
        wanted = workload_sysctls(name)
        try:
            have = read_sysctls(list(wanted), self.host_netns)
        except OSError as exc:
            return [*problems, f"cannot read sysctls of {name}: {exc}"]
        problems += [
            f"{key.rsplit('/', 1)[1]} of {name} is {have[key]}, not {value}"
            for key, value in wanted.items()
            if have.get(key) != value
        ]
        device = self.routes_to(link.ip)
        if device != name:
            problems.append(f"the host routes {link.ip} via {device or 'nothing'}, not {name}")
        return problems

    @staticmethod
    def _check_pod_side(link: PodLink) -> list[str]:
        name = link.ifname
        out: list[str] = []
        with _ipr(f"inspect {name} in the pod") as ipr:
            index = _index(ipr, name)
            if index is None:
                return [f"the pod has no interface {name}"]
            if not _link_info(ipr, index)["up"]:
                out.append(f"{name} in the pod is down")
            addrs = {
                (a.get_attr("IFA_ADDRESS"), a["prefixlen"])
                for a in ipr.get_addr(index=index, family=2)
            }
            if (str(link.ip), 32) not in addrs:
                out.append(f"{name} in the pod does not have {link.ip}/32")
            routes = {
                (r.get_attr("RTA_DST") or "0.0.0.0", r["dst_len"], r.get_attr("RTA_GATEWAY"))
                for r in ipr.get_routes(family=2, table=MAIN_TABLE)
                if r.get_attr("RTA_OIF") == index
            }
            if (GATEWAY, 32, None) not in routes:
                out.append(f"the pod has no route {GATEWAY} dev {name} scope link")
            if ("0.0.0.0", 0, GATEWAY) not in routes:
                out.append(f"the pod has no route default via {GATEWAY} dev {name}")
        return out


@dataclass(frozen=True, slots=True)
class _PodFacts:
    """What the pod's namespace says about its interface; the peer is resolved on the host."""

    index: int
    kind: str | None
    mac: str
    addresses: tuple[str, ...]
    peer_index: int | None  # IFLA_LINK: the peer's ifindex, in the peer's namespace
    peer_in_host: bool  # IFLA_LINK_NETNSID is the id the pod's namespace has for the host's

    def interface(self, peer: str | None) -> PodInterface:
        return PodInterface(self.index, self.kind, self.mac, self.addresses, peer)


def _inspect_pod_side(ifname: str, host_fd: int) -> _PodFacts | None:
    """Run in the pod's namespace: the facts about ``ifname`` (None: no such interface)."""
    with _ipr(f"inspect {ifname} in the pod") as ipr:
        index = _index(ipr, ifname)
        if index is None:
            return None
        link = ipr.get_links(index)[0]
        info = _link_info(ipr, index)
        addresses = tuple(
            str(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr(index=index, family=2)
        )
        link_nsid = link.get_attr("IFLA_LINK_NETNSID")
        host_nsid = _nsid(ipr, host_fd)
        return _PodFacts(
            index=index,
            kind=info["kind"],
            mac=str(info["mac"]).lower(),
            addresses=addresses,
            peer_index=link.get_attr("IFLA_LINK"),
            peer_in_host=link_nsid is not None and host_nsid is not None and link_nsid == host_nsid,
        )


def _peer_name(ipr: Any, pod: _PodFacts, pod_fd: int) -> str | None:
    """Run in the host's namespace: the name of ``pod``'s veth peer if it lives here.

    ifindexes are per namespace (a pod's eth0 and a host's cali are often both 2), so the peer
    is proven both ways: the pod side points at this namespace and this ifindex, and the host
    interface points back at the pod's namespace and the pod side's ifindex."""
    if pod.kind != "veth" or not pod.peer_in_host or pod.peer_index is None:
        return None
    from pyroute2.netlink.exceptions import NetlinkError

    pod_nsid = _nsid(ipr, pod_fd)
    if pod_nsid is None:
        return None
    try:
        host = ipr.get_links(pod.peer_index)[0]
    except NetlinkError:  # ENODEV: no interface with that index here
        return None
    if host.get_attr("IFLA_LINK") != pod.index or host.get_attr("IFLA_LINK_NETNSID") != pod_nsid:
        return None
    return str(host.get_attr("IFLA_IFNAME"))


def _nsid(ipr: Any, fd: int) -> int | None:
    """The id the current namespace has for the namespace open as ``fd`` (None: none yet, so
    no interface here has a peer there)."""
    answer = ipr.get_netnsid(fd=fd)
    nsid = None if answer is None else answer.get("nsid")
    return None if nsid is None or nsid == NSID_NOT_ASSIGNED else int(nsid)


def _delete_link(ipr: Any, index: int) -> bool:
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        ipr.link("del", index=index)
    except NetlinkError as exc:
        if exc.code in (errno.ENODEV, errno.ENOENT):  # deleted meanwhile (its peer went)
            return False
        raise
    return True
