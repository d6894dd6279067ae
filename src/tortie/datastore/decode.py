"""A stored value decoded by the resource models: the one place that turns bytes from the
store into a validated resource, or a :class:`CorruptResourceError` naming the key.

Problem: two readers need it, :class:`~tortie.datastore.resources.ResourceStore` (everything
that writes) and :mod:`tortie.datastore.documents` (``tortie get``, which asks the models only
for values it does not recognise). Living in either, it would make the two modules import each
other; here both import it and it imports neither's logic (only the error type).

Invariants: a value that is not JSON, is nested too deep for ``json.loads`` (RecursionError),
or is not a valid ``model`` raises :class:`CorruptResourceError` with the key; never anything
else. The resource carries the key's mod revision as ``metadata.resourceVersion``.
"""

from __future__ import annotations

import json
from typing import TypeVar

from tortie.datastore.api import KeyValue
from tortie.datastore.resource_errors import CorruptResourceError
from tortie.model.errors import ModelError
from tortie.model.resources import Resource

R = TypeVar("R", bound=Resource)


def decode_resource(model: type[R], kv: KeyValue) -> R:
    """The resource ``kv`` holds, with its mod revision as resourceVersion; a value that is not
    a valid ``model`` is a :class:`CorruptResourceError` naming its key."""
    try:
        doc = json.loads(kv.value)
        res = model.from_document(doc)
    except (ValueError, ModelError) as err:
        raise CorruptResourceError(kv.key, str(err).splitlines()[0]) from err
    except RecursionError:
        # json.loads recurses per level: a value nested thousands deep (no writer of ours
        # stores one; the loader refuses 100 levels) must not become a traceback.
        raise CorruptResourceError(kv.key, "JSON nested too deep to read") from None
    return res.with_metadata(resource_version=str(kv.mod_revision))
