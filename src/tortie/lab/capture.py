"""Running tcpdump inside a lab namespace and reading its lines, with a deadline.

Problem: ``tortie lab capture``, the e2e tests, the demo and the trace all need "start a
capture, know when it is really listening, send something, collect the lines, stop". tcpdump
says it is listening on stderr ("listening on IFACE, ..."); packets come on stdout, one line
each with ``-l``. Two reader threads turn both streams into queues, so a caller can wait for
readiness and read lines with a timeout without blocking on a pipe.

Invariant: :meth:`Capture.stop` always ends the tcpdump process (SIGTERM, then SIGKILL) and
reaps it; the capture object is a context manager.
"""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from types import TracebackType

from tortie.lab.errors import LabError

READY_MARK = "listening on "


class Capture:
    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.argv = list(argv)
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        self._ready = threading.Event()
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip("\n"))
            if READY_MARK in line:
                self._ready.set()
        self._ready.set()  # exited: nobody waits for readiness forever

    def wait_ready(self, timeout: float = 5.0) -> None:
        """Return once tcpdump listens; LabError if it exited or did not start in time."""
        ready = self._ready.wait(timeout)
        if not ready or not any(READY_MARK in line for line in self.stderr):
            self.stop()
            raise LabError(
                f"capture did not start ({' '.join(self.argv)}): {' '.join(self.stderr)[-300:]}"
            )

    def lines(self, timeout: float | None = None) -> Iterator[str]:
        """Packet lines until tcpdump exits or ``timeout`` seconds have passed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                return
            if line is None:
                self._lines.put(None)  # stay at end for later calls
                return
            yield line

    def collect(self, timeout: float) -> list[str]:
        return list(self.lines(timeout))

    def stop(self) -> list[str]:
        """End tcpdump; return the lines not read yet."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(3)
        for t in self._threads:
            t.join(3)
        return list(self.lines(0.01))

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def __enter__(self) -> Capture:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
