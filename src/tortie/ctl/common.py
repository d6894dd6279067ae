"""Shared CLI plumbing: the datastore option, output formats, error reporting.

Every subcommand module exposes ``register(subparsers)`` which adds its parser(s) and sets
``func`` to a handler ``(args: argparse.Namespace) -> int`` (the exit status). Handlers raise
:class:`tortie.errors.TortieError` for anything the user can fix; ``main`` prints it in one or
two lines and exits 1 (or the error's ``exit_code``).
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from tortie.errors import TortieError

if TYPE_CHECKING:
    from tortie.datastore.api import Datastore
    from tortie.model.kindinfo import KindInfo

DEFAULT_DATASTORE = "sqlite:///var/lib/tortie/tortie.db"
DATASTORE_ENV = "TORTIE_DATASTORE"


def datastore_url(args: argparse.Namespace) -> str:
    """``--datastore`` beats ``$TORTIE_DATASTORE`` beats the default."""
    url = getattr(args, "datastore", None)
    return url or os.environ.get(DATASTORE_ENV) or DEFAULT_DATASTORE


class InputError(TortieError):
    """A command's arguments or input files are wrong (the message says how)."""


def namespace_for(kind: KindInfo, namespace: str | None) -> str | None:
    """The namespace a command means: refused for a kind that has none, ``default`` if not
    given for one that has."""
    if not kind.namespaced:
        if namespace:
            raise InputError(f"{kind.kind} is not namespaced; drop -n/--namespace")
        return None
    return namespace or "default"


def open_store(args: argparse.Namespace) -> Datastore:
    from tortie.datastore.factory import open_datastore

    return open_datastore(datastore_url(args))
