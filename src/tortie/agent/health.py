"""The agent's HTTP endpoints: /healthz, /readyz and Prometheus /metrics.

Problem: operators (and the lab, and ``tortie cni`` STATUS) need to know whether the agent's
loop is alive, whether the node is programmed, and counters to graph, without a client
library. The loop publishes a :class:`Health` snapshot; the HTTP threads only read it.

Invariants: the server never touches the dataplane or the datastore; a snapshot is replaced
whole (no torn reads); ``/healthz`` fails when the loop has not beaten for ``stale_after``
seconds (a wedged loop is unhealthy even if the process lives).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Health:
    heartbeat: float = 0.0  # monotonic time of the loop's last pass
    in_sync: bool = False
    converged: bool = False
    detail: str = "starting"
    counters: Mapping[str, float] = field(default_factory=dict)  # name -> value
    gauges: Mapping[str, float] = field(default_factory=dict)
    help: Mapping[str, str] = field(default_factory=dict)


class HealthBoard:
    """Holds the latest :class:`Health`; the loop sets it, readers get it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, stale_after: float = 30.0):
        self._lock = threading.Lock()
        self._health = Health()
        self._clock = clock
        self.stale_after = stale_after

    def publish(self, health: Health) -> None:
        with self._lock:
            self._health = health

    def get(self) -> Health:
        with self._lock:
            return self._health

    def live(self) -> tuple[bool, str]:
        h = self.get()
        age = self._clock() - h.heartbeat
        if h.heartbeat == 0.0:
            return True, "starting"
        if age > self.stale_after:
            return False, f"agent loop stalled: no pass for {age:.0f}s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        h = self.get()
        if not h.in_sync:
            return False, "not in sync with the datastore yet"
        if not h.converged:
            return False, f"dataplane not converged: {h.detail}"
        return True, "ok"

    def metrics_text(self) -> str:
        h = self.get()
        lines: list[str] = []
        for kind, values in (("counter", h.counters), ("gauge", h.gauges)):
            for name in sorted(values):
                metric = f"tortie_{name}"
                if name in h.help:
                    lines.append(f"# HELP {metric} {h.help[name]}")
                lines.append(f"# TYPE {metric} {kind}")
                lines.append(f"{metric} {values[name]:g}")
        return "\n".join(lines) + "\n"


def serve(board: HealthBoard, host: str, port: int) -> ThreadingHTTPServer:
    """Start the HTTP server in a daemon thread; ``shutdown()`` stops it."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/healthz":
                ok, text = board.live()
            elif self.path == "/readyz":
                ok, text = board.ready()
            elif self.path == "/metrics":
                self._reply(200, board.metrics_text(), "text/plain; version=0.0.4")
                return
            else:
                self._reply(404, "not found: try /healthz, /readyz or /metrics\n")
                return
            self._reply(200 if ok else 503, text + "\n")

        def _reply(self, code: int, body: str, ctype: str = "text/plain") -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            return  # probes every few seconds would drown the agent's log

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="health-http", daemon=True).start()
    return server
