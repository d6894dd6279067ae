"""Two `tortie apply` of overlapping IPPools at once, many times (issue 17, item 3).

Each round races two ``tortie apply`` processes, started together (a barrier). Each file
holds ``fillers`` pools of its own (disjoint from everything; they widen the window between
listing the pools and committing, as in the report) and one contested pool: 10.50.0.0/16 in
one file, 10.50.1.0/24 in the other. Exactly one apply may win each round: the other must
fail with "overlaps", and the store must then hold exactly one of the two contested pools.

Shared by the unit tier (SQLite, tests/unit/datastore) and the interop tier (etcd). After
each round this process records what is stored and wipes the datastore for the next. The
applies are real processes, not ``main()`` in a worker: one process opening the SQLite file
again while it holds it open loses SQLite's locks (POSIX locks are per process and a close
drops them all), which corrupts the test, not tortie's answer.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

CONTESTED = {"race-wide": "10.50.0.0/16", "race-narrow": "10.50.1.0/24"}


@dataclass(frozen=True)
class Outcome:
    round: int
    codes: tuple[int, int]  # exit status of each apply
    errors: tuple[str, str]  # stderr of each apply
    stored: tuple[str, ...]  # the contested pools stored afterwards

    @property
    def problem(self) -> str | None:
        """What went wrong this round, or None."""
        if sorted(self.codes) != [0, 1]:
            return f"round {self.round}: exit codes {self.codes}: {self.errors}"
        loser = self.errors[self.codes.index(1)]
        if "overlaps" not in loser:
            return f"round {self.round}: the loser failed for another reason: {loser!r}"
        if len(self.stored) != 1:
            return f"round {self.round}: stored {self.stored}"
        return None


def manifest(index: int, fillers: int) -> str:
    """File ``index`` (0 or 1): its fillers, then its contested pool (parsed last)."""
    name, cidr = list(CONTESTED.items())[index]
    docs = [_pool(f"filler-{index}-{n}", f"10.{60 + index}.{n}.0/24") for n in range(fillers)]
    docs.append(_pool(name, cidr))
    return "---\n".join(docs)


def _pool(name: str, cidr: str) -> str:
    return (
        "apiVersion: projectcalico.org/v3\nkind: IPPool\n"
        f"metadata:\n  name: {name}\nspec:\n  cidr: {cidr}\n  natOutgoing: true\n"
    )


def stored_contested(url: str) -> tuple[str, ...]:
    """The contested pools stored at ``url``."""
    from tortie.datastore.factory import open_datastore
    from tortie.datastore.resources import ResourceStore
    from tortie.model.resources import IPPool

    store = open_datastore(url)
    try:
        names = [p.name for p in ResourceStore(store).list(IPPool)]
    finally:
        store.close()
    return tuple(sorted(n for n in names if n in CONTESTED))


def wipe(url: str) -> None:
    """Delete every tortie key at ``url`` (in transactions etcd accepts: <= 128 ops)."""
    from tortie.datastore.api import Delete
    from tortie.datastore.factory import open_datastore

    store = open_datastore(url)
    try:
        keys = [kv.key for kv in store.list("/tortie/").items]
        for start in range(0, len(keys), 100):
            store.txn([], [Delete(k) for k in keys[start : start + 100]])
    finally:
        store.close()


def _apply(url: str, path: str, barrier: threading.Barrier) -> tuple[int, str]:
    barrier.wait(timeout=60)
    proc = subprocess.run(
        [sys.executable, "-m", "tortie.ctl.main", "--datastore", url, "apply", "-f", path],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    return proc.returncode, proc.stderr.strip()


def race(url: str, workdir: Path, *, fillers: int, rounds: int) -> list[Outcome]:
    """Race the two applies ``rounds`` times on the datastore at ``url`` (wiped after each)."""
    if fillers > 255:
        raise ValueError("fillers are /24s in one /16: at most 255")
    files = []
    for index in (0, 1):
        path = workdir / f"race-{index}.yaml"
        path.write_text(manifest(index, fillers))
        files.append(str(path))
    outcomes = []
    with ThreadPoolExecutor(2) as pool:
        for n in range(rounds):
            barrier = threading.Barrier(2)
            runs = [pool.submit(_apply, url, f, barrier) for f in files]
            (c0, e0), (c1, e1) = (r.result() for r in runs)
            outcomes.append(Outcome(n, (c0, c1), (e0, e1), stored_contested(url)))
            wipe(url)
    return outcomes
