"""Errors of ``tortie lab``: each says what went wrong and what to type next.

Every class is a :class:`tortie.errors.TortieError`, so the CLI prints the message without a
traceback. Messages name the lab, the object (namespace, path, PID) and the command that fixes
the situation (``tortie lab down --name L``, ``--wire-pods manual``, run as root, ...).
"""

from __future__ import annotations

from tortie.errors import TortieError


class LabError(TortieError):
    """Base of every lab error."""


class LabOptionError(LabError):
    """An option that cannot describe a lab (bad name, too many nodes, ...)."""


class NotRootError(LabError):
    """Labs create namespaces, mounts and processes: only root can."""


class LabExistsError(LabError):
    """``lab up`` for a name that already has a lab (or the leftovers of one)."""


class LabNotFoundError(LabError):
    """No lab of that name, or no lab at all when the name was left to default."""


class LabAmbiguousError(LabError):
    """``--name`` left out while several labs exist."""


class LabBusyError(LabError):
    """Another ``tortie lab`` command holds the lab's lock."""


class LabBuildError(LabError):
    """A build step failed; the lab is left as it is (``lab down`` removes it)."""


class LabTeardownError(LabError):
    """Some recorded objects could not be removed; the state file is kept for a retry."""


class LabStateError(LabError):
    """The state file is unreadable or from an unknown version."""


class UnknownTargetError(LabError):
    """``exec``/``ping``/``capture`` named something that is neither a node nor a pod."""


class NotAvailableError(LabError):
    """A seam whose implementation has not landed yet (CNI plugin, node agent, BIRD ToR)."""
