"""``lab down``: remove exactly what the state file says ``lab up`` created.

Problem: ``down`` runs after a clean ``up``, after a failed one, after ``kill -9`` of one in
the middle of a step, and again after a ``down`` that itself was interrupted. In every case it
must remove the lab's objects and nothing else.

Order, and why:
1. if a ``lab up`` of this lab is still running (it holds the lock), stop it, after checking
   its PID is still that builder (start time, command line);
2. CNI DEL for pods the plugin created, while their node's agent still runs (it releases the
   addresses and endpoints in the datastore);
3. processes: the recorded ones (verified, :mod:`.procs`), then any process carrying the
   lab's token (started but not yet recorded, or started by ``tortie lab exec``): a process
   inside a namespace would keep that namespace, and its interfaces, alive;
4. mounts: the recorded ones and any mount under the lab directory;
5. namespaces, newest first (their interfaces go with them); as a backstop, also any
   ``tl<id>-*`` namespace while the host-wide id is registered to this lab (names are
   recorded before creation, so normally this finds nothing);
6. resources the lab created in a datastore it does not own;
7. the id registration, then the lab directory (state, lock, SQLite datastore, node dirs).

Invariants: absent objects count as removed (idempotent); on any failure the state file stays
(with ``phase: down-failed``) and the error lists what is left, so ``down`` can be re-run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from tortie.lab import cni, procs
from tortie.lab.errors import LabError, LabNotFoundError, LabTeardownError
from tortie.lab.kernel import HostKernel, Kernel, mounts_under
from tortie.lab.naming import lab_prefix
from tortie.lab.registry import LabPaths, is_locked, lab_lock, owner_of, release_ids
from tortie.lab.runtime import node_runtime
from tortie.lab.seed import unseed_datastore
from tortie.lab.state import Journal, LabState, load_state, state_path
from tortie.lab.topology import LabOptions, build_topology

Progress = Callable[[str], None]
LOCK_WAIT = 15.0


def _quiet(_: str) -> None:
    pass


def _load(lab_dir: Path) -> LabState | None:
    try:
        return load_state(state_path(lab_dir))
    except FileNotFoundError:
        return None


def lab_down(
    paths: LabPaths,
    name: str,
    progress: Progress = _quiet,
    kernel: Kernel | None = None,
    grace: float = 3.0,
) -> list[str]:
    """Remove lab ``name``; return one line per thing done. Raises LabTeardownError."""
    kernel = kernel or HostKernel(paths.netns_dir)
    lab_dir = paths.lab_dir(name)
    if not lab_dir.is_dir():
        raise LabNotFoundError(f"no lab named {name!r} under {paths.root}")
    done: list[str] = []

    def note(line: str) -> None:
        done.append(line)
        progress(line)

    state = _load(lab_dir)
    builder = state.builder if state is not None else None
    if builder is not None and is_locked(lab_dir) and procs.matches(builder):
        outcome = procs.stop_record(builder, grace)
        note(f"lab up (pid {builder.pid}) was still running: {outcome}")
    with lab_lock(lab_dir, wait=LOCK_WAIT):
        state = _load(lab_dir)  # the builder may have recorded more before it stopped
        problems: list[str] = []
        if state is not None:
            journal = Journal(state)
            journal.set(phase="tearing-down")
            _delete_cni_pods(state, note, problems)
            _stop_processes(state, note, grace)
        _unmount(kernel, state, lab_dir, note, problems)
        if state is not None:
            _delete_namespaces(
                kernel, paths=paths, state=state, lab_dir=lab_dir, note=note, problems=problems
            )
            if state.datastore and state.datastore_created and not state.datastore_is_ours:
                problems += unseed_datastore(state.datastore, state.datastore_created)
                note(f"datastore: deleted {len(state.datastore_created)} resources")
        if problems:
            if state is not None:
                journal.set(phase="down-failed", error="; ".join(problems))
            raise LabTeardownError(
                f"lab {name!r} is only partly removed; left:\n  "
                + "\n  ".join(problems)
                + f"\nstate kept in {lab_dir}; fix the cause and run 'tortie lab down "
                f"--name {name}' again"
            )
        for link in release_ids(paths, lab_dir):
            note(f"lab id released: {link}")
        # Still holding the lock's fd: removing the directory under it is fine.
        shutil.rmtree(lab_dir)
        note(f"removed {lab_dir}")
    return done


def _delete_cni_pods(state: LabState, note: Progress, problems: list[str]) -> None:
    pods = [p for p in state.pods.values() if p.wiring == "cni"]
    if not pods or state.lab_id is None or not cni.cni_available():
        return
    topology = build_topology(LabOptions.from_json(state.options), state.lab_id)
    for record in reversed(pods):
        try:
            pod = topology.pod(record.name)
            cni.delete_pod(topology, node_runtime(topology, state, pod.node), pod)
            note(f"{record.name}: CNI DEL done")
        except LabError as err:
            # The namespaces go anyway; what DEL would have released stays in the datastore.
            note(f"{record.name}: CNI DEL failed ({err}); continuing")


def _stop_processes(state: LabState, note: Progress, grace: float) -> None:
    for record in reversed(state.processes):
        outcome = procs.stop_record(record, grace, token=state.token)
        note(f"{record.role} {record.node or ''} pid {record.pid}: {outcome}".replace("  ", " "))
    for pid, outcome in procs.stop_token_holders(state.token, grace):
        note(f"process {pid} carrying the lab's token: {outcome}")


def _unmount(
    kernel: Kernel, state: LabState | None, lab_dir: Path, note: Progress, problems: list[str]
) -> None:
    recorded = [Path(m) for m in reversed(state.mounts)] if state else []
    extra = [m for m in mounts_under(lab_dir) if m not in recorded]
    for path in [*recorded, *extra]:
        try:
            kernel.unmount(path)
        except LabError as err:
            problems.append(str(err))
            continue
        if path in recorded:
            note(f"unmounted {path}")


def _delete_namespaces(
    kernel: Kernel,
    *,
    paths: LabPaths,
    state: LabState,
    lab_dir: Path,
    note: Progress,
    problems: list[str],
) -> None:
    names = list(reversed(state.namespaces))
    # Sweep the lab's prefix only while the id is registered to this very lab.
    if state.lab_id is not None and owner_of(paths, state.lab_id) == os.fspath(lab_dir):
        prefix = lab_prefix(state.lab_id)
        with contextlib.suppress(FileNotFoundError):
            names += sorted(
                n for n in os.listdir(paths.netns_dir) if n.startswith(prefix) and n not in names
            )
    removed = 0
    for name in names:
        if not kernel.netns_exists(name):
            continue
        try:
            kernel.netns_delete(name)
            removed += 1
        except LabError as err:
            problems.append(str(err))
    note(f"namespaces: {removed} removed")
