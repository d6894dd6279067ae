"""CNI failures, and the one mapping from tortie's error types to CNI error codes.

Problem: three places answer a runtime with a CNI error code: the node agent's CNI server, the
``tortie`` plugin and the ``tortie-ipam`` plugin. Each used to map exceptions to codes its own
way, so one cause (an exhausted pool, an unreachable datastore) could reach the runtime with
two different codes, and one mapping told causes apart by the text of their messages. Here is
the one mapping, from exception *types*, which both the plugins (``cni/``) and the agent
(``agent/``) import: :func:`failure_of`.

Invariants:
- A type is found by walking the exception's MRO and taking the first class listed in
  :data:`CODES`, so the most specific entry wins (``NetnsRefusedError`` before
  ``WiringError``, ``UnavailableError`` before ``DatastoreError``) and a subclass added later
  inherits its parent's code. Anything unlisted is a bug: :data:`Code.INTERNAL`.
- Classes are named by ``module.qualname``, not imported: this module is on the stdlib-only
  plugin's fast path, and the types live in layers above ``model`` (``ipam``, ``datastore``,
  ``dataplane``). ``tests/unit/cni/test_cni_errors.py`` imports every name, so a renamed or
  moved class fails a test instead of silently becoming "internal error".
- :class:`CniError` is itself a failure with its code (raised by code that knows the code); it
  is returned as it is.

Hazards: the message shown is ``prefix + str(exc)``: messages of the listed types are meant
for the user (tortie's errors say what, where and how to fix).
"""

from __future__ import annotations

from tortie.model.cniwire import Code, dumps

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_NO_ADDRESS = (Code.NO_ADDRESS, "no address for the pod: ")
_BUSY = (Code.TRY_AGAIN_LATER, "the datastore is busy: ")
_CONFIG = (Code.INVALID_NETWORK_CONFIG, "")

# module.qualname -> (CNI code, message prefix).
CODES: dict[str, tuple[int, str]] = {
    # The pod's wiring (tortie.dataplane.wiring).
    "tortie.dataplane.wiring.NetnsRefusedError": (Code.INVALID_ENVIRONMENT, "invalid CNI_NETNS: "),
    "tortie.dataplane.wiring.NetnsGoneError": (Code.UNKNOWN_CONTAINER, ""),
    "tortie.dataplane.wiring.InterfaceTakenError": (Code.INTERFACE_EXISTS, ""),
    "tortie.dataplane.wiring.WiringError": (Code.KERNEL_FAILURE, "the kernel refused: "),
    # Any other dataplane failure (a NetlinkError, a sysctl, nft): also an OSError, so it must
    # be named before builtins.OSError, or the kernel's refusal reads as "I/O failure".
    "tortie.dataplane.errors.DataplaneError": (Code.KERNEL_FAILURE, "the kernel refused: "),
    # IPAM.
    "tortie.ipam.errors.ExhaustedError": _NO_ADDRESS,
    "tortie.ipam.errors.NoPoolsError": _NO_ADDRESS,
    "tortie.ipam.errors.AddressInUseError": _NO_ADDRESS,
    "tortie.ipam.errors.AddressNotInPoolError": _NO_ADDRESS,
    "tortie.ipam.errors.PoolNotFoundError": _CONFIG,
    "tortie.ipam.errors.InvalidRequestError": _CONFIG,
    "tortie.ipam.errors.TooManyConflictsError": _BUSY,
    # The datastore.
    "tortie.datastore.api.ConflictError": _BUSY,
    "tortie.datastore.resources.ResourceConflictError": _BUSY,
    "tortie.datastore.api.UnavailableError": (Code.TRY_AGAIN_LATER, ""),
    "tortie.datastore.api.DatastoreError": (Code.TRY_AGAIN_LATER, "datastore error: "),
    # Bad input that reached the model (a pod name that cannot name an endpoint, ...).
    "tortie.model.errors.ModelError": (Code.INVALID_ENVIRONMENT, ""),
    # Anything else the system refused.
    "builtins.OSError": (Code.IO_FAILURE, "I/O failure: "),
}


class CniError(Exception):
    """A failure reported to the runtime as spec error JSON (code, message, details)."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str) -> str:
        doc: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            doc["details"] = self.details
        return dumps(doc)


def code_of(exc_type: type[BaseException]) -> tuple[int, str] | None:
    """The (code, message prefix) of the most specific listed class ``exc_type`` is."""
    for cls in exc_type.__mro__:
        found = CODES.get(f"{cls.__module__}.{cls.__qualname__}")
        if found is not None:
            return found
    return None


def failure_of(exc: BaseException, who: str = "tortie") -> CniError:
    """The CNI failure for ``exc``; ``who`` names the program in an internal error's message."""
    if isinstance(exc, CniError):
        return exc
    found = code_of(type(exc))
    if found is None:
        return CniError(Code.INTERNAL, f"internal error in {who}: {exc!r}")
    code, prefix = found
    return CniError(code, f"{prefix}{exc}")
