"""Attaching pinned BPF programs to a device's tc hooks with tcx links (kernel 6.6+).

Problem: a cls_bpf filter (``tc filter ... bpf``, :mod:`tortie.dataplane.tc`) runs behind the
clsact qdisc's classifier layer (``tc_run`` -> ``tcf_classify`` -> ``cls_bpf_classify``) on every
packet. tcx (kernel 6.6) runs the program straight from the device's hook, and the attachment
is a ``bpf_link``: owned by whoever holds a reference, so nobody else's ``tc qdisc del`` takes it
away. The IPIP programs run twice per tunnelled packet (encap on tunl0, decap on the uplink),
and the guest's instruction counts put the classifier layer at about 1 % of the whole pod path
(bench/README.md).

How: :func:`ensure_link` creates the link (``BPF_LINK_CREATE``, attach type TCX_INGRESS or
TCX_EGRESS) and pins it at a path of the caller's, so it outlives the agent; a restarted agent
finds the pin, reads the link's info (device, direction, program) and does nothing when it is
right, swaps the program atomically (``BPF_LINK_UPDATE``) when only that differs, and replaces
a link whose device is gone. :func:`query` lists what is attached to a hook
(``BPF_PROG_QUERY``): iproute2 6.1's ``tc filter show`` and bpftool 7.1 (Debian 12) do not show
tcx at all, so ``tortie bpf show`` (tortie.ctl) prints it, and the lab's trace asks that.

Invariants: only a link pinned at the caller's path is ever updated or detached; other programs
on the same hook (anyone's tcx links, any tc filter) are never touched. A new link goes after
the hook's existing tcx programs, as a tc filter at a high preference would.

Hazards: the ifindex of ``BPF_LINK_CREATE`` and ``BPF_PROG_QUERY`` is resolved in the calling
thread's network namespace, so both run through :func:`~tortie.dataplane.netns.run_in_netns`;
a link's info carries an ifindex but no namespace, which is why every node pins its links in its
own directory. A device that is deleted leaves its link pinned but defunct (ifindex 0): the next
:func:`ensure_link` replaces it, :func:`remove_link` just unpins it. A link lives only as long
as its pin (nobody else holds it): a bpffs that goes away (unmounted, or mounted in a private
mount namespace that has ended: see :mod:`tortie.dataplane.bpffs`) takes the link with it and
the program stops at once, where a tc filter keeps its own reference and runs on; the agent's
next pass attaches again. A program returning ``TC_ACT_OK`` ends the hook for everything
behind it, tcx and tc alike: programs that only look at some packets return
``TC_ACT_UNSPEC`` (``TCX_NEXT``) for the rest.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tortie.dataplane import bpfsys
from tortie.dataplane.errors import DataplaneError
from tortie.dataplane.netns import NetnsRef, netns_path, run_in_netns

Direction = Literal["ingress", "egress"]

BPF_PROG_QUERY = 16
BPF_LINK_CREATE = 28
BPF_LINK_UPDATE = 29
BPF_LINK_DETACH = 34
BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47
BPF_LINK_TYPE_TCX = 11
ATTACH_TYPE: dict[Direction, int] = {"ingress": BPF_TCX_INGRESS, "egress": BPF_TCX_EGRESS}
QUERY_MAX = 64  # programs per hook we list; more is not a tortie node


class TcxError(DataplaneError):
    """The kernel refused a tcx query, attachment or pin (``errno`` is its code)."""


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """A tcx link as the kernel describes it (``struct bpf_link_info``)."""

    type: int
    id: int
    prog_id: int
    ifindex: int  # 0: the device is gone (a defunct link)
    attach_type: int

    def attached_to(self, ifindex: int, direction: Direction) -> bool:
        return (
            self.type == BPF_LINK_TYPE_TCX
            and self.ifindex == ifindex
            and self.attach_type == ATTACH_TYPE[direction]
        )


@dataclass(frozen=True, slots=True)
class Attached:
    """One program on a tcx hook, in run order."""

    prog_id: int
    link_id: int  # 0: attached without a link (BPF_PROG_ATTACH)


def link_info(link_fd: int) -> LinkInfo:
    # struct bpf_link_info: type, id, prog_id, (pad), then a union at 16; for tcx:
    # { __u32 ifindex; __u32 attach_type; }.
    raw = bpfsys.info(link_fd, 64)
    ltype, lid, prog, ifindex, attach = struct.unpack_from("=III4xII", raw)
    return LinkInfo(ltype, lid, prog, ifindex, attach)


def pinned_link_info(link_path: str | os.PathLike[str]) -> LinkInfo | None:
    """The info of the link pinned at ``link_path``; None if nothing is pinned there."""
    try:
        fd = bpfsys.obj_get(link_path)
    except FileNotFoundError:
        return None
    try:
        return link_info(fd)
    finally:
        os.close(fd)


def query(ifindex: int, direction: Direction, netns: NetnsRef = None) -> list[Attached]:
    """The programs on ``ifindex``'s tcx ``direction`` hook, in run order (BPF_PROG_QUERY).

    Raises TcxError when the kernel has no tcx (before 6.6) or no such device."""
    prog_ids = (ctypes.c_uint32 * QUERY_MAX)()
    link_ids = (ctypes.c_uint32 * QUERY_MAX)()
    # union bpf_attr.query: target_ifindex, attach_type, query_flags, attach_flags,
    # prog_ids (u64), count, (pad), prog_attach_flags (u64), link_ids (u64), ...
    attr = bpfsys.attr(
        "=IIIIQI4xQQ",
        ifindex,
        ATTACH_TYPE[direction],
        0,
        0,
        ctypes.addressof(prog_ids),
        QUERY_MAX,
        0,
        ctypes.addressof(link_ids),
    )

    def run() -> None:
        bpfsys.bpf(BPF_PROG_QUERY, attr)

    try:
        run_in_netns(netns, run)
    except OSError as exc:
        raise TcxError(
            _why(exc, f"query tcx {direction} of ifindex {ifindex}"), errno=exc.errno
        ) from exc
    count = struct.unpack_from("=I", attr, 24)[0]
    return [Attached(prog_ids[i], link_ids[i]) for i in range(min(count, QUERY_MAX))]


@functools.cache
def _supported_in(path: str | None) -> bool:
    try:
        query(1, "ingress", path)  # loopback: every namespace has ifindex 1
    except TcxError:
        return False
    return True


def supported(netns: NetnsRef = None) -> bool:
    """Whether this kernel has tcx (6.6+): a query on the loopback device answers."""
    return _supported_in(netns_path(netns))


def _why(exc: OSError, what: str) -> str:
    if exc.errno == errno.EINVAL:
        return f"{what}: the kernel refuses it (no tcx before Linux 6.6: use tc attachment)"
    if exc.errno == errno.ENODEV:
        return f"{what}: no such device in this network namespace"
    if exc.errno == errno.EPERM:
        return f"{what}: permission denied (needs CAP_BPF and CAP_NET_ADMIN: run as root)"
    return f"{what}: {exc.strerror}"


def _create(prog_fd: int, ifindex: int, direction: Direction, netns: NetnsRef) -> int:
    """A new tcx link running ``prog_fd``'s program (the caller closes the link's fd)."""
    # union bpf_attr.link_create: prog_fd, target_ifindex, attach_type, flags,
    # tcx { relative_fd, (pad), expected_revision }: all zero appends to the hook.
    attr = bpfsys.attr("=IIII", prog_fd, ifindex, ATTACH_TYPE[direction], 0)
    return run_in_netns(netns, lambda: bpfsys.bpf(BPF_LINK_CREATE, attr))


def ensure_link(
    link_path: Path,
    prog_path: Path,
    ifindex: int,
    direction: Direction,
    netns: NetnsRef = None,
    *,
    dev: str | None = None,
) -> str | None:
    """Make the link pinned at ``link_path`` run ``prog_path`` on ``ifindex``'s hook.

    Returns what changed (None: it already did), naming the device ``dev`` if given. Never
    detaches a working link to re-attach it: a program change is an atomic swap in the link."""
    what = f"{dev or f'ifindex {ifindex}'} {direction}"
    prog_fd = bpfsys.obj_get(prog_path)
    try:
        return _ensure_link(
            link_path, prog_fd, ifindex, direction, netns=netns, name=prog_path.name, what=what
        )
    finally:
        os.close(prog_fd)


def _ensure_link(
    link_path: Path,
    prog_fd: int,
    ifindex: int,
    direction: Direction,
    *,
    netns: NetnsRef,
    name: str,
    what: str,
) -> str | None:
    want = bpfsys.prog_id_of(prog_fd)
    try:
        fd = bpfsys.obj_get(link_path)
    except FileNotFoundError:
        fd = -1
    except OSError as exc:
        raise TcxError(_why(exc, f"open the link pinned at {link_path}"), errno=exc.errno) from exc
    if fd >= 0:
        try:
            info = link_info(fd)
            if info.attached_to(ifindex, direction):
                if info.prog_id == want:
                    return None
                # link_update: link_fd, new_prog_fd, flags, old_prog_fd.
                bpfsys.bpf(BPF_LINK_UPDATE, bpfsys.attr("=IIII", fd, prog_fd, 0, 0))
                return f"swapped program {info.prog_id} -> {want} on {what} (tcx link)"
            _detach(fd)  # defunct, or another device's: this pin is ours to replace
        except OSError as exc:
            raise TcxError(
                _why(exc, f"update the link pinned at {link_path}"), errno=exc.errno
            ) from exc
        finally:
            os.close(fd)
        os.unlink(link_path)
    try:
        new = _create(prog_fd, ifindex, direction, netns)
    except OSError as exc:
        raise TcxError(_why(exc, f"attach {name} to {what}"), errno=exc.errno) from exc
    try:
        bpfsys.obj_pin(new, link_path)
    except OSError as exc:
        _detach(new)
        raise TcxError(_why(exc, f"pin the link at {link_path}"), errno=exc.errno) from exc
    finally:
        os.close(new)
    return f"attached {name} to {what} (tcx link)"


def _detach(link_fd: int) -> None:
    try:
        bpfsys.bpf(BPF_LINK_DETACH, bpfsys.attr("=I", link_fd))
    except OSError as exc:
        if exc.errno not in (errno.ENOLINK, errno.EINVAL):  # already defunct
            raise


def remove_link(link_path: Path) -> bool:
    """Detach and unpin the link pinned at ``link_path``; False if none was pinned there.

    Detaching first makes the program stop at once, even if someone else holds an fd."""
    try:
        fd = bpfsys.obj_get(link_path)
    except FileNotFoundError:
        return False
    try:
        _detach(fd)
    finally:
        os.close(fd)
    os.unlink(link_path)
    return True
