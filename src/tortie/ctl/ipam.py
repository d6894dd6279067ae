"""``tortie ipam assign|release|show|check|gc|configure``: block IPAM from the command line.

Problem: operators and scripts need calicoctl's IPAM views (``ipam show`` with Calico's
columns GROUPING, CIDR, IPS TOTAL, IPS IN USE, IPS FREE), a leak check with an exit status
(0 clean, 3 problems found) and a report that ``release --from-report`` can act on, plus
``assign`` for tests and debugging (the same library call the CNI plugin makes).

Invariants: every handler opens the datastore, calls :class:`tortie.ipam.client.IPAM`, and
closes it; user errors are :class:`tortie.errors.TortieError` (printed by ``main``).

Hazard: ``release --from-report`` acts on a report that may be old; each release in it is
guarded by the handle and sequence number the report saw, so stale entries release nothing.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
from collections.abc import Callable, Sequence

from tortie.ctl.common import open_store
from tortie.ipam.check import CheckReport
from tortie.ipam.client import IPAM
from tortie.ipam.errors import IPAMError
from tortie.ipam.gc import DEFAULT_GRACE_SECONDS, GCResult
from tortie.ipam.usage import BorrowedAddress, UsageRow

EXIT_PROBLEMS = 3
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*$")


class IPAMUsageError(IPAMError):
    """Bad command-line input for ``tortie ipam``."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ipam = subparsers.add_parser("ipam", help="IP address management: assign, release, show, gc")
    sub = ipam.add_subparsers(dest="ipam_command", metavar="SUBCOMMAND")
    sub.required = True

    a = sub.add_parser("assign", help="assign addresses to a handle on a node")
    a.add_argument("--node", required=True, help="the node the addresses are for")
    a.add_argument("--handle", required=True, help="the handle, e.g. k8s-pod-network.<id>")
    a.add_argument("--count", type=int, default=1, help="how many addresses (default 1)")
    a.add_argument(
        "--pool",
        action="append",
        metavar="CIDR",
        help="use only this pool (CIDR or name; repeatable; ignores node selectors)",
    )
    a.add_argument("--ip", help="assign exactly this address")
    a.add_argument(
        "--attr",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="allocation attribute, e.g. namespace=default or pod=web-0 (repeatable)",
    )
    a.add_argument("--ipv6", action="store_true", help="assign IPv6 addresses")
    a.add_argument("-o", "--output", choices=("text", "json"), default="text")
    a.set_defaults(func=_assign)

    r = sub.add_parser("release", help="release addresses by handle, address or check report")
    which = r.add_mutually_exclusive_group(required=True)
    which.add_argument("--handle", help="release every address of this handle")
    which.add_argument("--ip", action="append", metavar="X", help="release this address")
    which.add_argument(
        "--from-report",
        metavar="FILE",
        help="fix what a 'tortie ipam check -o FILE' report found (stale entries are skipped)",
    )
    r.set_defaults(func=_release)

    s = sub.add_parser("show", help="address usage per pool (and block), borrowed addresses")
    s.add_argument("--show-blocks", action="store_true", help="one row per block too")
    s.add_argument(
        "--show-borrowed", action="store_true", help="addresses borrowed from other nodes' blocks"
    )
    s.add_argument("--ip", help="show who holds this address")
    s.set_defaults(func=_show)

    c = sub.add_parser("check", help="find leaked addresses and inconsistencies (exit 3 if any)")
    c.add_argument("-o", "--output", metavar="FILE", help="write the report (JSON) to FILE")
    c.set_defaults(func=_check)

    g = sub.add_parser("gc", help="release leaks older than the grace period")
    g.add_argument(
        "--grace",
        default=f"{int(DEFAULT_GRACE_SECONDS // 60)}m",
        help="only fix leaks older than this (e.g. 900, 900s, 15m, 1h; default 15m)",
    )
    g.set_defaults(func=_gc)

    f = sub.add_parser("configure", help="show or change IPAM settings")
    f.add_argument("--strict-affinity", choices=("true", "false"), help="never borrow addresses")
    f.add_argument(
        "--max-blocks-per-host",
        type=int,
        metavar="N",
        help="blocks a node may own before borrowing (0: no limit)",
    )
    f.set_defaults(func=_configure)


def _with_ipam(args: argparse.Namespace, body: Callable[[IPAM], int]) -> int:
    store = open_store(args)
    try:
        return body(IPAM(store))
    finally:
        store.close()


def parse_duration(text: str) -> float:
    m = _DURATION.match(text)
    if m is None:
        raise IPAMUsageError(f"{text!r} is not a duration: write seconds, or 30s, 15m, 1h")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2) or "s"]


def _attrs(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise IPAMUsageError(f"--attr {pair!r}: write KEY=VALUE")
        out[key] = value
    return out


# -- assign -----------------------------------------------------------------------------------
def _assign(args: argparse.Namespace) -> int:
    attrs = _attrs(args.attr)

    def body(ipam: IPAM) -> int:
        got = ipam.assign_detailed(
            node=args.node,
            handle=args.handle,
            count=args.count,
            pools=args.pool,
            attrs=attrs,
            ip=args.ip,
            version=6 if args.ipv6 else 4,
        )
        if args.output == "json":
            doc = {
                "node": args.node,
                "handle": args.handle,
                "ips": [str(a.ip) for a in got],
                "allocations": [
                    {"ip": str(a.ip), "block": str(a.block), "sequence": a.sequence} for a in got
                ],
            }
            print(json.dumps(doc, indent=2))
        else:
            for a in got:
                print(a.ip)
        return 0

    return _with_ipam(args, body)


# -- release ----------------------------------------------------------------------------------
def _release(args: argparse.Namespace) -> int:
    if args.from_report:
        report = _read_report(args.from_report)

        def fix(ipam: IPAM) -> int:
            result = ipam.apply_report(report)
            _print_released(result.released)
            print(result.summary())
            return 0

        return _with_ipam(args, fix)

    def body(ipam: IPAM) -> int:
        by_handle = bool(args.handle)
        released = ipam.release_by_handle(args.handle) if by_handle else ipam.release_ips(args.ip)
        _print_released(released)
        print(f"released {len(released)} address(es)")
        return 0

    return _with_ipam(args, body)


def _print_released(ips: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> None:
    for ip in ips:
        print(f"released {ip}")


def _read_report(path: str) -> CheckReport:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise IPAMUsageError(f"cannot read report {path}: {err.strerror or err}") from err
    return CheckReport.from_json(text)


# -- show -------------------------------------------------------------------------------------
def _percent(part: int, whole: int) -> str:
    return f"{part} ({round(100 * part / whole) if whole else 0}%)"


def bordered_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    """calicoctl's bordered table: centred headers; columns in ``right`` right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells: Sequence[str], header: bool) -> str:
        out = []
        for i, (c, w) in enumerate(zip(cells, widths, strict=True)):
            if header:
                out.append(c.center(w))
            elif i in right:
                out.append(c.rjust(w))
            else:
                out.append(c.ljust(w))
        return "| " + " | ".join(out) + " |"

    lines = [rule, line(headers, True), rule, *(line(r, False) for r in rows), rule]
    return "\n".join(lines) + "\n"


def usage_table(rows: Sequence[UsageRow]) -> str:
    return bordered_table(
        ["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"],
        [
            [
                r.grouping,
                r.cidr,
                str(r.total),
                _percent(r.in_use, r.total),
                _percent(r.free, r.total),
            ]
            for r in rows
        ],
        right={2},
    )


def borrowed_table(rows: Sequence[BorrowedAddress]) -> str:
    return bordered_table(
        ["IP", "BORROWING-NODE", "BLOCK", "BLOCK OWNER", "TYPE", "ALLOCATED-TO"],
        [
            [str(b.ip), b.borrowing_node, str(b.block), b.block_owner, b.type, b.allocated_to]
            for b in rows
        ],
        right=set(),
    )


def _show(args: argparse.Namespace) -> int:
    def body(ipam: IPAM) -> int:
        if args.ip:
            info = ipam.address_info(args.ip)
            if info is None:
                print(f"IP {args.ip} is not assigned")
                return 0
            print(f"IP {info.ip} is in use")
            print(f"Block: {info.block} (affinity: {info.block_owner or 'none'})")
            print(f"Handle: {info.handle}")
            print(f"Sequence number: {info.sequence}")
            print("Attributes:")
            for k, v in sorted(info.attrs.items()):
                print(f"  {k}: {v}")
            return 0
        if args.show_borrowed:
            print(borrowed_table(ipam.borrowed()), end="")
            return 0
        print(usage_table(ipam.usage(show_blocks=args.show_blocks)), end="")
        return 0

    return _with_ipam(args, body)


# -- check / gc -------------------------------------------------------------------------------
def _check(args: argparse.Namespace) -> int:
    def body(ipam: IPAM) -> int:
        print("Checking IPAM for inconsistencies...")
        report = ipam.check()
        scanned = ", ".join(f"{v} {k}" for k, v in report.counts.items())
        print(f"Scanned {scanned}.")
        for p in report.problems:
            print(f"  [{p.kind.value}] {p.message}")
        if args.output:
            try:
                with open(args.output, "w", encoding="utf-8") as f:
                    f.write(report.to_json() + "\n")
            except OSError as err:
                raise IPAMUsageError(
                    f"cannot write report {args.output}: {err.strerror or err}"
                ) from err
            print(f"Report written to {args.output}.")
        n = len(report.problems)
        print(f"found {n} problems")  # calicoctl's wording, whatever n is
        return EXIT_PROBLEMS if n else 0

    return _with_ipam(args, body)


def _gc(args: argparse.Namespace) -> int:
    grace = parse_duration(args.grace)

    def body(ipam: IPAM) -> int:
        result: GCResult = ipam.gc(grace)
        _print_released(result.released)
        print(result.summary())
        return 0

    return _with_ipam(args, body)


# -- configure --------------------------------------------------------------------------------
def _configure(args: argparse.Namespace) -> int:
    strict = None if args.strict_affinity is None else args.strict_affinity == "true"

    def body(ipam: IPAM) -> int:
        if strict is None and args.max_blocks_per_host is None:
            settings = ipam.settings()
        else:
            settings = ipam.configure(
                strict_affinity=strict, max_blocks_per_host=args.max_blocks_per_host
            )
        print(f"StrictAffinity: {'true' if settings.strict_affinity else 'false'}")
        print(f"MaxBlocksPerHost: {settings.max_blocks_per_host}")
        return 0

    return _with_ipam(args, body)
