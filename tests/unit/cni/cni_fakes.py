"""Helpers for the CNI unit tests: a fake node agent on a real unix socket, plugin runners.

The fake agent answers each request with whatever ``reply`` returns and records the requests,
so tests see exactly what the plugin sent and how it printed the answer. Socket paths live in
a short private directory (``sun_path`` is 108 bytes; pytest's tmp paths can be longer).
"""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tortie.cni import plugin
from tortie.model.cniwire import CniRequest, CniResponse


@dataclass
class FakeAgent:
    path: str
    reply: Callable[[CniRequest], CniResponse] = field(default=lambda req: CniResponse())
    requests: list[CniRequest] = field(default_factory=list)
    raw: Callable[[bytes], bytes] | None = None  # answer with these bytes instead
    _sock: socket.socket | None = None
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(self.path)
        self._sock.listen(16)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        assert self._sock is not None
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
                if self.raw is not None:
                    conn.sendall(self.raw(data))
                    continue
                req = CniRequest.from_bytes(data)
                self.requests.append(req)
                conn.sendall(self.reply(req).to_bytes())

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        if self._thread is not None:
            self._thread.join(5)


def net_config(socket_path: str, version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
    """tortie's entry of a conflist as the runtime passes it on stdin."""
    return {
        "cniVersion": version,
        "name": "k8s-pod-network",
        "type": "tortie",
        "nodename": "node-1",
        "datastore": "memory://",
        "agent_socket": socket_path,
        "ipam": {"type": "tortie-ipam"},
        **extra,
    }


def cni_env(command: str, **overrides: str) -> dict[str, str]:
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "c0ffee",
        "CNI_NETNS": "/run/netns/tt-test",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/opt/cni/bin",
        "CNI_ARGS": "K8S_POD_NAMESPACE=web;K8S_POD_NAME=web-0",
    }
    env.update(overrides)
    return {k: v for k, v in env.items() if v != "<unset>"}


@dataclass
class Outcome:
    status: int
    stdout: str

    @property
    def doc(self) -> Any:
        return json.loads(self.stdout)


def run_plugin(env: dict[str, str], stdin: bytes | dict[str, Any]) -> Outcome:
    data = json.dumps(stdin).encode() if isinstance(stdin, dict) else stdin
    out = io.StringIO()
    status = plugin.run(env, data, out)
    return Outcome(status, out.getvalue())


ADD_RESULT = {
    "interfaces": [
        {"name": "cali1234567890a", "mac": "ee:ee:ee:ee:ee:ee", "mtu": 1480},
        {"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/run/netns/x", "mtu": 1480},
    ],
    "ips": [{"address": "10.244.0.5/32", "gateway": "169.254.1.1", "interface": 1}],
    "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
    "dns": {},
}
