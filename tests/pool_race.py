"""Two `tortie apply` of overlapping IPPools at once, many times (issue 17, item 3).

Each round races two CLI applies in two processes released together by a barrier. Each file
holds ``fillers`` pools of its own (disjoint from everything; they widen the window between
listing the pools and committing, as in the report) and one contested pool: 10.50.0.0/16 in
one file, 10.50.1.0/24 in the other. Exactly one apply may win each round: the other must
fail with "overlaps", and the store must then hold exactly one of the two contested pools.

Shared by the unit tier (SQLite, tests/unit/datastore) and the interop tier (etcd). The
workers are spawned once and run every round (importing tortie once per worker, not per
round), so a round costs about one apply.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def _worker(jobs: list[tuple[str, str]], index: int, barrier: Any, results: Any) -> None:
    from tortie.ctl.main import main

    for n, (url, path) in enumerate(jobs):
        barrier.wait(timeout=120)
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = main(["--datastore", url, "apply", "-f", path])
        except BaseException as exc:  # report it: the parent is waiting for this round
            code, err = 99, io.StringIO(f"{type(exc).__name__}: {exc}")
        results.put((n, index, code, err.getvalue()))


def race(
    urls: list[str],
    workdir: Path,
    *,
    fillers: int,
    stored_pools: Callable[[str], list[str]],
    timeout: float = 300.0,
) -> list[Outcome]:
    """Race the two applies once per URL (each a prepared, empty datastore)."""
    if fillers > 255:
        raise ValueError("fillers are /24s in one /16: at most 255")
    files = []
    for index in (0, 1):
        path = workdir / f"race-{index}.yaml"
        path.write_text(manifest(index, fillers))
        files.append(str(path))
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    queue = ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker,
            args=([(url, files[index]) for url in urls], index, barrier, queue),
            daemon=True,
        )
        for index in (0, 1)
    ]
    for p in procs:
        p.start()
    codes: dict[tuple[int, int], tuple[int, str]] = {}
    try:
        for _ in range(2 * len(urls)):
            n, index, code, err = queue.get(timeout=timeout)
            codes[(n, index)] = (code, err)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    outcomes = []
    for n, url in enumerate(urls):
        (c0, e0), (c1, e1) = codes[(n, 0)], codes[(n, 1)]
        stored = tuple(sorted(name for name in stored_pools(url) if name in CONTESTED))
        outcomes.append(Outcome(n, (c0, c1), (e0.strip(), e1.strip()), stored))
    return outcomes
