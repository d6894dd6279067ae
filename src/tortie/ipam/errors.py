"""The errors block IPAM raises on purpose: each says what went wrong and what to do.

Every class derives from :class:`IPAMError` (a :class:`tortie.errors.TortieError`), so the CLI
prints the message and exits 1. Callers that must tell cases apart (the CNI plugin turns
exhaustion into a CNI error code) catch the subclass.
"""

from __future__ import annotations

from tortie.errors import TortieError


class IPAMError(TortieError):
    """Base of every IPAM error."""


class NoPoolsError(IPAMError):
    """No enabled pool matches the request (node selector, explicit list, IP version)."""


class PoolNotFoundError(IPAMError):
    """The caller named a pool that does not exist or is disabled."""


class ExhaustedError(IPAMError):
    """Not enough free addresses (or, with strict affinity, affine blocks) for the request."""

    def __init__(self, message: str, *, requested: int, available: int) -> None:
        super().__init__(message)
        self.requested = requested
        self.available = available


class AddressInUseError(IPAMError):
    """A specific address was requested but is allocated to another handle."""


class AddressNotInPoolError(IPAMError):
    """A specific address was requested outside every usable pool."""


class TooManyConflictsError(IPAMError):
    """Compare-and-swap kept losing: the datastore changed on every one of the bounded tries."""


class InvalidRequestError(IPAMError):
    """Malformed arguments: empty handle, bad count, unparsable address."""
