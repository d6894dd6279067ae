"""Shared fixtures. Datastore: a private etcd for the session (``etcd_url``), and
``start_etcd`` for tests that need one of their own (to stop and restart it).

A missing etcd binary skips the etcd tests on a developer's machine but fails them when ``CI``
is set or ``TORTIE_REQUIRE_ALL=1``: a tier that silently skips in CI tests nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ETCD_BINARY_ENV = "TORTIE_ETCD"  # the etcd binary's path, instead of looking for one


def _must_not_skip() -> bool:
    ci = os.environ.get("CI", "").strip().lower()
    return ci not in ("", "0", "false", "no") or os.environ.get("TORTIE_REQUIRE_ALL") == "1"


def etcd_binary() -> str:
    """The etcd binary, or skip (fail under CI / TORTIE_REQUIRE_ALL=1) if there is none."""
    path = os.environ.get(ETCD_BINARY_ENV) or shutil.which("etcd") or "/usr/bin/etcd"
    if os.path.isfile(path) and os.access(path, os.X_OK):
        return path
    msg = (
        f"etcd not found (looked for ${ETCD_BINARY_ENV}, etcd on PATH, /usr/bin/etcd); "
        "install Debian's etcd-server (scripts/install-deps)"
    )
    if _must_not_skip():
        pytest.fail(f"{msg}; CI / TORTIE_REQUIRE_ALL=1 requires every tier", pytrace=False)
    pytest.skip(msg)


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class EtcdProcess:
    """One private single-member etcd on loopback. ``stop()``/``start()`` keep its ports and
    data directory, so a restart is the same cluster."""

    data_dir: Path
    client_port: int = 0
    peer_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.data_dir.with_suffix(".log")
        if not self.client_port:
            self.client_port, self.peer_port = _free_ports(2)

    @property
    def url(self) -> str:
        return f"etcd://127.0.0.1:{self.client_port}"

    def start(self, timeout: float = 60.0) -> None:
        client = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        cmd = [
            etcd_binary(),
            "--name=default",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
            "--initial-cluster-state=new",
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}: {self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{client}/health", timeout=2) as r:
                    if json.loads(r.read()).get("health") == "true":
                        return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"etcd not healthy after {timeout} s: {self._log_tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop exactly this process (by its handle)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"


@pytest.fixture(scope="session")
def etcd_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``etcd://127.0.0.1:PORT`` of a private etcd shared by the session. Tests isolate
    themselves by key prefix or by wiping keys; they must not stop it."""
    etcd = EtcdProcess(tmp_path_factory.mktemp("etcd") / "data")
    etcd.start()
    try:
        yield etcd.url
    finally:
        etcd.stop()


@pytest.fixture
def start_etcd(tmp_path: Path) -> Iterator[EtcdProcess]:
    """A private etcd for one test (not started: call ``.start()``); stopped afterwards."""
    etcd_binary()
    etcd = EtcdProcess(tmp_path / "etcd-data")
    try:
        yield etcd
    finally:
        etcd.stop()
