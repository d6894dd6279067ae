"""Load the benchmark scripts (``bench/*.py``, not a package) as modules for unit tests.

Each is imported under a ``tortie_bench_`` name so it cannot collide with another module
called ``report`` or ``run``; ``bench/`` goes on ``sys.path`` because the scripts import
each other by their plain names.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[3] / "bench"


def load(name: str) -> ModuleType:
    key = f"tortie_bench_{name}"
    if key in sys.modules:
        return sys.modules[key]
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(key, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module
