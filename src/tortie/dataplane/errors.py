"""Dataplane errors: what the kernel (or a kernel tool) refused, with errno and whether to retry.

Problem: the agent's loop must tell a kernel failure, which it retries item by item with
backoff while the rest of the node is still programmed, from a programming error, which no
retry will ever cure (the agent exits, the kernel stays as it is, and the next start's resync
repairs: docs/agent.md, "Errors"). Before this module every dataplane module answered in its
own shape (``NetlinkError`` an OSError, ``IPIPError``/``VXLANError``/``NftError``/``TcError``
RuntimeErrors, bare OSErrors from sysctl writes and bpf(2)), so the loop caught
``(TortieError, OSError, RuntimeError)``, and with it every ``TypeError`` in disguise.

Rules:
- Every failure of kernel work that the dataplane reports is a :class:`DataplaneError` (or a
  subclass): a :class:`~tortie.errors.TortieError` (its message says what failed, where, and
  how to fix it when a person must) and an ``OSError`` (``errno`` is the kernel's code, or None
  when there is none), so code that catches ``OSError`` around dataplane calls keeps working.
- ``retryable`` says whether trying again soon may help. It is False for what only a person
  can change (permission, an unsupported kernel feature, a missing tool or BPF object, a device
  name held by something else); the loop still tries again, at its slowest pace.
- A bare ``OSError`` must not leave a dataplane entry point the agent calls: :func:`kernel_call`
  wraps one into the module's error with what was being done.
"""

from __future__ import annotations

import errno as errno_mod
from collections.abc import Iterator
from contextlib import contextmanager

from tortie.errors import TortieError

# errno values that no retry cures: a person (or another kernel) must change something.
PERSISTENT = frozenset(
    {
        errno_mod.EPERM,
        errno_mod.EACCES,
        errno_mod.EOPNOTSUPP,
        errno_mod.ENOSYS,
        errno_mod.EAFNOSUPPORT,
        errno_mod.EPROTONOSUPPORT,
    }
)

_HINTS = {
    errno_mod.EPERM: "run the agent as root (it needs CAP_NET_ADMIN, and CAP_BPF for IPIP)",
    errno_mod.EACCES: "run the agent as root (it needs CAP_NET_ADMIN, and CAP_BPF for IPIP)",
    errno_mod.EOPNOTSUPP: "this kernel lacks the feature",
    errno_mod.ENOSYS: "this kernel lacks the system call",
}


def retryable_errno(code: int | None) -> bool:
    return code not in PERSISTENT


class DataplaneError(TortieError, OSError):
    """Kernel work failed: ``errno`` (the kernel's code, or None) and ``retryable``."""

    retryable: bool

    def __init__(
        self, message: str, *, errno: int | None = None, retryable: bool | None = None
    ) -> None:
        # One argument: str(err) is the message itself, not "[Errno N] ...".
        OSError.__init__(self, message)
        self.errno = errno
        self.retryable = retryable_errno(errno) if retryable is None else retryable


def describe(exc: OSError) -> str:
    """An OSError's text with a hint for the errno values a person must act on."""
    text = exc.strerror or str(exc) or type(exc).__name__
    hint = _HINTS.get(exc.errno or 0)
    return f"{text} ({hint})" if hint else text


@contextmanager
def kernel_call(what: str, error: type[DataplaneError] = DataplaneError) -> Iterator[None]:
    """Run kernel work; a bare ``OSError`` out of it becomes ``error`` ("<what>: <why>").

    A :class:`DataplaneError` passes through unchanged (it already says what failed).
    """
    try:
        yield
    except DataplaneError:
        raise
    except OSError as exc:
        raise error(f"{what}: {describe(exc)}", errno=exc.errno) from exc
