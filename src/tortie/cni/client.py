"""The plugin's side of the socket: one request to the node agent, one response back.

Problem: when the agent is not running (not started yet, restarting, crashed), the runtime
must get the CNI code that makes it retry (11, "try again later"; STATUS: 50, "plugin not
available") and a person reading the runtime's log must learn which socket was tried and what
to start. Anything the agent says goes back to the runtime unchanged.

Invariants: one connection per request; the request is written whole, then our side of the
stream is shut down so the agent reads to end-of-file (the framing of
:mod:`tortie.model.cniwire`); the answer is read to end-of-file, bounded in size and time.

Stdlib only: this runs in every pod's plugin process.
"""

from __future__ import annotations

# _socket, not socket: the wrapper module's import (enum conversions, selectors) costs the
# plugin process ~4 ms, and we need none of it.
import _socket

from tortie.model.cnierrors import CniError
from tortie.model.cniwire import (
    MAX_MESSAGE,
    CniRequest,
    CniResponse,
    Code,
    WireError,
    unix_connect_or_bind,
)


def agent_down(path: str, why: str, command: str) -> CniError:
    code = Code.PLUGIN_NOT_AVAILABLE if command == "STATUS" else Code.TRY_AGAIN_LATER
    return CniError(
        code,
        f"the tortie node agent is not running: {why} on {path}",
        "start it with 'tortie node run' on this node (it serves the CNI socket); "
        "the runtime retries meanwhile",
    )


def call_agent(path: str, request: CniRequest, timeout: float) -> CniResponse:
    """Send ``request`` to the agent listening on ``path``; raises :class:`CniError`."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            unix_connect_or_bind(sock, path)
        except FileNotFoundError:
            raise agent_down(path, "no socket", request.command) from None
        except ConnectionRefusedError:
            raise agent_down(path, "nothing listens", request.command) from None
        except PermissionError:
            raise CniError(
                Code.IO_FAILURE,
                f"permission denied on {path}",
                "the tortie CNI plugin must run as root (as container runtimes run it)",
            ) from None
        try:
            sock.sendall(request.to_bytes())
            sock.shutdown(_socket.SHUT_WR)
            data = _read_all(sock)
        except TimeoutError:
            raise CniError(
                Code.TRY_AGAIN_LATER,
                f"the tortie node agent did not answer within {timeout:g} s on {path}",
                "it may be overloaded or stuck; see its log",
            ) from None
        except OSError as exc:
            raise CniError(
                Code.TRY_AGAIN_LATER,
                f"lost the connection to the tortie node agent on {path}: {exc}",
            ) from None
    finally:
        sock.close()
    if not data:
        raise CniError(
            Code.TRY_AGAIN_LATER, f"the tortie node agent on {path} closed without answering"
        )
    try:
        return CniResponse.from_bytes(data)
    except WireError as exc:
        raise CniError(Code.DECODE_FAILURE, f"bad answer from the tortie agent: {exc}") from None


def _read_all(sock: _socket.socket) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_MESSAGE:
            raise OSError(f"answer larger than {MAX_MESSAGE} bytes")
        chunks.append(chunk)
