"""The lab's datastore forwarder in real namespaces: a node's 127.0.0.1:PORT reaches the host's
127.0.0.1:PORT, and only that (issue 17, item 10).

The test makes two namespaces named ``tt<hex>f<n>`` (deleted at the end whatever happens), a
TCP echo server on the host's loopback, and the forwarder process, stopped by its PID.
"""

from __future__ import annotations

import contextlib
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tortie.lab.forward import in_netns

PREFIX = "tt" + secrets.token_hex(2) + "f"


@pytest.fixture
def namespaces() -> Iterator[list[str]]:
    names = [f"{PREFIX}{i}" for i in (1, 2)]
    try:
        for name in names:
            subprocess.run(["ip", "netns", "add", name], check=True)
            subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield names
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


class Echo:
    """A TCP echo server on the host's loopback (a stand-in for etcd)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() so the port closes
        self.sock.close()


def ask(netns: str, port: int, payload: bytes) -> bytes:
    def talk() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            out = b""
            while chunk := sock.recv(4096):
                out += chunk
            return out

    return in_netns(f"/run/netns/{netns}", talk)


def test_forwarder_relays_from_every_node_namespace_to_the_hosts_loopback(
    namespaces: list[str], tmp_path: Path
) -> None:
    echo = Echo()
    ready = tmp_path / "ready"
    argv = [sys.executable, "-m", "tortie.lab.forward", "--ready", str(ready)]
    for ns in namespaces:
        argv += ["--netns", f"/run/netns/{ns}"]
    argv += ["--endpoint", f"127.0.0.1:{echo.port}"]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
            time.sleep(0.02)
        assert len(ready.read_text().splitlines()) == 2
        # Without the forwarder nothing listens there: the namespaces' loopback is their own.
        for ns in namespaces:
            assert ask(ns, echo.port, b"hello " + ns.encode()) == b"hello " + ns.encode()
        big = secrets.token_bytes(300_000)
        assert ask(namespaces[0], echo.port, big) == big
        # Nothing listens in the host's namespace on its behalf: it only forwards.
        echo.close()
        t0 = time.monotonic()
        try:
            answer = ask(namespaces[1], echo.port, b"x")
        except ConnectionResetError:  # closed with our byte unread: a reset
            answer = b""
        assert answer == b""  # the node side is closed at once
        assert time.monotonic() - t0 < 3
    finally:
        echo.close()
        proc.send_signal(signal.SIGTERM)  # the forwarder this test started, by its PID
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0
    # Once it is gone, the node's 127.0.0.1:PORT refuses again.
    with pytest.raises(ConnectionRefusedError):
        ask(namespaces[0], echo.port, b"x")
