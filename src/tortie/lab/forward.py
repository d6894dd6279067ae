"""The lab's datastore forwarder: node namespaces' 127.0.0.1:PORT -> the host's 127.0.0.1:PORT.

Problem (issue 17, item 10): ``tortie lab up --datastore etcd://127.0.0.1:2379`` means the etcd
on the host's loopback, but the agents run in the nodes' network namespaces, whose loopback is
their own: nothing listens there, and the lab used to wait 60 s for agents that could never
sync. This process makes the URL mean the same thing inside every node: it listens on the
endpoint's address and port *inside* each node namespace and relays every connection to the
same address and port in the host's namespace. The agents, the CNI calls and ``tortie lab exec
NODE -- tortie ...`` all use the lab's URL unchanged.

How: a listening socket belongs to the network namespace of the thread that created it, for
its whole life. For each node namespace a short-lived thread enters it (``setns(2)`` on
``/run/netns/<ns>``, affecting only that thread), creates and binds the listener, and ends;
the process itself never leaves the host's namespace, so every outgoing connection is made
there. One relay thread per direction per connection (a lab's agents hold a handful).

Invariants: it listens only on the loopback addresses it is given, only inside the namespaces
it is given (the lab's own), and connects only to those same endpoints in the host namespace;
traffic never leaves loopback. When the host side refuses, the node side is closed at once (the
client sees the datastore unavailable, as without the lab). It writes ``--ready FILE`` (the
listeners, one per line) once every listener exists, and exits on SIGTERM/SIGINT. The lab
starts it recorded in its state file and ``lab down`` stops it by its PID (:mod:`.dsforward`).

Hazard: Python 3.11 has no ``os.setns``; libc's ``setns`` is called through ctypes.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

CLONE_NEWNET = 0x40000000
BACKLOG = 64
CONNECT_TIMEOUT = 3.0
T = TypeVar("T")


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def in_netns(netns_path: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a thread that entered the network namespace ``netns_path``; return its
    result or raise its exception. Sockets ``fn`` creates stay in that namespace."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=run, name="in-netns", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def parse_endpoint(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"{text!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    return sock


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def _relay(client: socket.socket, target: tuple[str, int]) -> None:
    try:
        upstream = socket.create_connection(target, timeout=CONNECT_TIMEOUT)
    except OSError as exc:
        print(f"forward: {target[0]}:{target[1]} on the host: {exc}", file=sys.stderr, flush=True)
        client.close()
        return
    upstream.settimeout(None)
    with client, upstream:
        back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        back.start()
        _pump(client, upstream)
        back.join()


def _serve(listener: socket.socket, target: tuple[str, int]) -> None:
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=_relay, args=(client, target), daemon=True).start()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--netns", action="append", required=True, metavar="PATH")
    parser.add_argument("--endpoint", action="append", required=True, metavar="HOST:PORT")
    parser.add_argument("--ready", type=Path, required=True, metavar="FILE")
    args = parser.parse_args(argv)
    endpoints = [parse_endpoint(e) for e in args.endpoint]
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    lines = []
    for netns in args.netns:
        for host, port in endpoints:
            listener = in_netns(netns, functools.partial(listen, host, port))
            threading.Thread(
                target=_serve, args=(listener, (host, port)), name="forward", daemon=True
            ).start()
            lines.append(f"{netns} {host}:{port}")
    tmp = args.ready.with_name(args.ready.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(args.ready)
    print(f"forward: {len(lines)} listener(s) ready", file=sys.stderr, flush=True)
    stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
