"""The CNI server's unix socket: where the per-pod plugin reaches the agent.

Problem: the ``tortie`` plugin (one process per pod and verb) sends one request and waits for
one answer (:mod:`tortie.model.cniwire`); the agent must serve many such connections at once,
only to the runtime (root), and must never take over a socket another live agent serves.
:class:`CniSocket` is that transport: bind, peer check, read and write, one thread per
connection; what a request means is the handler's business (:mod:`tortie.agent.cni_verbs`).

Invariants:
- The socket is mode 0600 in a directory no one else can enter (0700): it is bound under a
  temporary name, restricted, then renamed into place, so it is never reachable with a wider
  mode and a half-made one never has the real name. Peers must have our uid (SO_PEERCRED):
  only root (the runtime) can ask for pods.
- An existing socket file is replaced at start only if no one answers on it (a server that
  died); a live one is an error, and so is any other kind of file there.
- At most ``max_connections`` requests are served at once (the rest wait in the listen
  backlog); a request larger than :data:`~tortie.model.cniwire.MAX_MESSAGE` or slower than
  :data:`IO_TIMEOUT` fails that connection only.
- :meth:`CniSocket.stop` removes the socket file only if it is still ours (same inode): a newer
  server may have replaced it.

Hazards: the handler runs on the connection's thread and must answer every request itself
(including failures); an exception escaping it is logged and the plugin sees the agent hang
up (it reports try-again-later).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable

from tortie.errors import TortieError
from tortie.model.cniwire import (
    MAX_MESSAGE,
    CniRequest,
    CniResponse,
    Code,
    WireError,
    failure,
    unix_connect_or_bind,
)

log = logging.getLogger(__name__)

IO_TIMEOUT = 30.0  # seconds to read a request / write a response


class CniServerError(TortieError):
    """The server cannot start (socket in use, unsafe directory)."""


class CniSocket:
    """Serves ``handle`` on the unix socket ``socket_path`` from background threads."""

    def __init__(
        self,
        socket_path: str,
        handle: Callable[[CniRequest], CniResponse],
        *,
        max_connections: int = 64,
    ) -> None:
        self.socket_path = os.path.abspath(socket_path)
        self.handle = handle
        self._slots = threading.BoundedSemaphore(max_connections)
        self._listener: socket.socket | None = None
        self._inode: int | None = None
        self._accept_thread: threading.Thread | None = None
        self._workers: set[threading.Thread] = set()
        self._workers_lock = threading.Lock()
        self._stopping = threading.Event()

    @property
    def running(self) -> bool:
        return self._listener is not None

    def start(self) -> None:
        """Listen on the socket (replacing a stale one) and serve in background threads."""
        if self._listener is not None:
            raise CniServerError("the CNI server is already running")
        self._stopping.clear()
        self._listener = self._bind()
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="tortie-cni-accept", daemon=True
        )
        self._accept_thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, remove our socket file, wait up to ``timeout`` s for requests."""
        listener = self._listener
        if listener is None:
            return
        self._stopping.set()
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        listener.close()
        self._listener = None
        with contextlib.suppress(OSError):
            if os.stat(self.socket_path).st_ino == self._inode:
                os.unlink(self.socket_path)  # only ours: a newer server may have replaced it
        if self._accept_thread is not None:
            self._accept_thread.join(timeout)
        deadline = time.monotonic() + timeout
        with self._workers_lock:
            workers = list(self._workers)
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))

    def _bind(self) -> socket.socket:
        directory = os.path.dirname(self.socket_path)
        if not os.path.isdir(directory):
            os.makedirs(os.path.dirname(directory), mode=0o755, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(directory, 0o700)
        mode = stat.S_IMODE(os.stat(directory).st_mode)
        if mode & 0o077:
            raise CniServerError(
                f"{directory} has mode {mode:04o}: the CNI socket needs a directory only its "
                "owner can enter (0700); use another --socket path or chmod it"
            )
        self._remove_stale_socket()
        temp = os.path.join(directory, f".cni.sock.{os.getpid()}.{secrets.token_hex(4)}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            unix_connect_or_bind(sock, temp, bind=True)
            os.chmod(temp, 0o600)
            sock.listen(128)
            os.rename(temp, self.socket_path)
        except BaseException:
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        self._inode = os.stat(self.socket_path).st_ino
        return sock

    def _remove_stale_socket(self) -> None:
        try:
            st = os.lstat(self.socket_path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise CniServerError(f"{self.socket_path} exists and is not a socket; remove it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            unix_connect_or_bind(probe, self.socket_path)
        except OSError:
            os.unlink(self.socket_path)  # nobody listens: left by a server that died
            return
        finally:
            probe.close()
        raise CniServerError(
            f"another tortie agent is serving {self.socket_path}; stop it first "
            "(or give this one another socket path)"
        )

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                log.exception("accept() failed on %s", self.socket_path)
                time.sleep(0.1)
                continue
            self._slots.acquire()
            worker = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            with self._workers_lock:
                self._workers.add(worker)
            worker.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(IO_TIMEOUT)
                if not _peer_allowed(conn):
                    conn.sendall(
                        failure(
                            Code.IO_FAILURE, "permission denied: only root may use tortie's CNI"
                        ).to_bytes()
                    )
                    return
                conn.sendall(self._respond(_read_all(conn)).to_bytes())
        except OSError as exc:
            log.warning("CNI connection failed: %s", exc)
        finally:
            with self._workers_lock:
                self._workers.discard(threading.current_thread())
            self._slots.release()

    def _respond(self, data: bytes) -> CniResponse:
        try:
            request = CniRequest.from_bytes(data)
        except WireError as exc:
            return failure(Code.DECODE_FAILURE, f"bad request from the CNI plugin: {exc}")
        return self.handle(request)


def _peer_allowed(conn: socket.socket) -> bool:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid in (0, os.geteuid())


def _read_all(conn: socket.socket) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_MESSAGE:
            raise OSError(f"request larger than {MAX_MESSAGE} bytes")
        chunks.append(chunk)
