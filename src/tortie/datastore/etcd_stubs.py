"""pyetcd's generated gRPC stubs, without pyetcd's own client.

Problem: :mod:`tortie.datastore.etcd` uses only ``pyetcd.etcdrpc`` (the generated messages and
stubs), but ``import pyetcd.etcdrpc`` first runs ``pyetcd/__init__.py``, which imports the
package's ``Etcd3Client`` and with it asyncio, locks, leases and watch helpers: about 15-30 ms
of every CLI process on etcd (issue 17, item 14; ``bench/cli.py``).

:func:`load_etcdrpc` imports ``pyetcd.etcdrpc`` under a bare stand-in for the ``pyetcd``
package (its ``__path__`` only) and removes the stand-in at once. Invariant: afterwards
``sys.modules`` holds no stand-in; a later ``import pyetcd`` runs the real ``__init__``, whose
``from . import etcdrpc`` finds the already-loaded submodule, so both agree on one module.
Hazard: the generated modules must not import ``pyetcd`` itself (5.x: they import only
``google.protobuf`` and their siblings); if they ever do, the stand-in is what they get while
it exists, so the loader falls back to the plain import when the package is already loaded.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

__all__ = ["load_etcdrpc"]


def load_etcdrpc() -> ModuleType:
    """``pyetcd.etcdrpc`` (see the module docstring); ImportError if pyetcd is missing."""
    if "pyetcd.etcdrpc" in sys.modules or "pyetcd" in sys.modules:
        return importlib.import_module("pyetcd.etcdrpc")
    spec = importlib.util.find_spec("pyetcd")
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError("No module named 'pyetcd'")
    stand_in = importlib.util.module_from_spec(
        importlib.machinery.ModuleSpec("pyetcd", None, is_package=True)
    )
    stand_in.__path__ = list(spec.submodule_search_locations)
    sys.modules["pyetcd"] = stand_in
    try:
        return importlib.import_module("pyetcd.etcdrpc")
    finally:
        if sys.modules.get("pyetcd") is stand_in:
            del sys.modules["pyetcd"]
