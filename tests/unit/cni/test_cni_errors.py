"""One mapping from error types to CNI codes (model/cnierrors.py), for the agent and plugins."""

from __future__ import annotations

import errno
import importlib

import pytest

from tortie.cni import ipam_plugin
from tortie.dataplane.netlink import NetlinkError
from tortie.dataplane.wiring import (
    InterfaceTakenError,
    NetnsGoneError,
    NetnsRefusedError,
    WiringError,
)
from tortie.datastore.api import (
    ConflictError,
    DatastoreError,
    DatastoreMissingError,
    NotFoundError,
    UnavailableError,
)
from tortie.datastore.resources import ResourceConflictError
from tortie.ipam import errors as ipam_errors
from tortie.model.cnierrors import CODES, CniError, failure_of
from tortie.model.cniwire import Code
from tortie.model.errors import ValidationError


@pytest.mark.parametrize("name", sorted(CODES))
def test_every_listed_type_exists(name: str) -> None:
    """A renamed or moved class must fail here, not turn into "internal error" at run time."""
    module, _, qualname = name.rpartition(".")
    cls = getattr(importlib.import_module(module), qualname)
    assert isinstance(cls, type) and issubclass(cls, BaseException)


def _ipam(cls: type[Exception]) -> Exception:
    return cls.__new__(cls)


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (NetnsRefusedError("open", "the node's own", errno.EINVAL), Code.INVALID_ENVIRONMENT),
        (NetnsGoneError("open", "gone", errno.ENOENT), Code.UNKNOWN_CONTAINER),
        (InterfaceTakenError("create", "taken", errno.EEXIST), Code.INTERFACE_EXISTS),
        (WiringError("set up", "refused", errno.EPERM), Code.KERNEL_FAILURE),
        (NetlinkError(errno.EPERM), Code.KERNEL_FAILURE),  # a DataplaneError, also an OSError
        (UnavailableError("sqlite:///x", "down"), Code.TRY_AGAIN_LATER),
        (DatastoreMissingError("sqlite:///x", "missing"), Code.TRY_AGAIN_LATER),
        (ValidationError("bad pod name"), Code.INVALID_ENVIRONMENT),
        (PermissionError(errno.EACCES, "no"), Code.IO_FAILURE),
        (CniError(Code.CHECK_FAILED, "as given"), Code.CHECK_FAILED),
        (TypeError("a bug"), Code.INTERNAL),
        (NotImplementedError(), Code.INTERNAL),
    ],
)
def test_codes_by_type(exc: BaseException, code: int) -> None:
    assert failure_of(exc).code == code


@pytest.mark.parametrize(
    ("cls", "code"),
    [
        (ipam_errors.ExhaustedError, Code.NO_ADDRESS),
        (ipam_errors.NoPoolsError, Code.NO_ADDRESS),
        (ipam_errors.AddressInUseError, Code.NO_ADDRESS),
        (ipam_errors.AddressNotInPoolError, Code.NO_ADDRESS),
        (ipam_errors.PoolNotFoundError, Code.INVALID_NETWORK_CONFIG),
        (ipam_errors.InvalidRequestError, Code.INVALID_NETWORK_CONFIG),
        (ipam_errors.TooManyConflictsError, Code.TRY_AGAIN_LATER),
        (ResourceConflictError, Code.TRY_AGAIN_LATER),
        (ConflictError, Code.TRY_AGAIN_LATER),
        (NotFoundError, Code.TRY_AGAIN_LATER),
        (DatastoreError, Code.TRY_AGAIN_LATER),
    ],
)
def test_ipam_and_datastore_codes(cls: type[Exception], code: int) -> None:
    exc = _ipam(cls)
    assert failure_of(exc).code == code
    # The tortie-ipam plugin answers the same code for the same cause.
    assert ipam_plugin._code_for(exc).code == code


def test_the_cause_is_told_by_type_not_by_message() -> None:
    """A message that reads like another cause changes nothing (the old agent matched the
    text "open the pod's network namespace" to answer "unknown container")."""
    looks_gone = WiringError("open the pod's network namespace", "File exists", errno.EEXIST)
    assert failure_of(looks_gone).code == Code.KERNEL_FAILURE
    assert failure_of(NetnsGoneError("anything", "x")).code == Code.UNKNOWN_CONTAINER


def test_messages() -> None:
    assert failure_of(WiringError("set up", "refused")).msg == "the kernel refused: set up: refused"
    assert (
        failure_of(TypeError("x"), "tortie-ipam").msg
        == "internal error in tortie-ipam: TypeError('x')"
    )
