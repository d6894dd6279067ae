"""Putting a lab's cluster resources into its datastore, and taking them out again.

Problem: agents and the CNI plugin read the pool (its CIDR, block size, encapsulation mode) and
the BGP settings from the datastore, as Calico's components do after an install. ``lab up``
writes them; ``lab down`` must leave a shared datastore (``--datastore etcd://...``) as it
found it.

Invariants:
- The default datastore is an SQLite file inside the lab directory: the lab owns it entirely,
  creates it explicitly here (opening never creates a store: docs/datastore.md), applies its
  resources, and ``down`` removes the file with the directory. A datastore the user gave
  must exist already (``tortie datastore init``): the lab does not create it.
- In a datastore the lab does not own, a resource is created only if absent (recorded in the
  state first, so ``down`` deletes exactly those); an existing identical one is used as is;
  an existing different one stops the build with a message, rather than being overwritten.
"""

from __future__ import annotations

from pathlib import Path

from tortie.lab.errors import LabBuildError
from tortie.lab.manifests import cluster_manifests
from tortie.lab.state import Journal
from tortie.lab.topology import Topology

DATASTORE_FILE = "datastore.db"


def default_datastore(lab_dir: str | Path) -> str:
    return f"sqlite://{Path(lab_dir) / DATASTORE_FILE}"


def seed_datastore(journal: Journal, topology: Topology) -> list[str]:
    """Write the cluster manifests; return "Kind/name" of each resource written."""
    from tortie.datastore.api import DatastoreError
    from tortie.datastore.factory import open_datastore
    from tortie.datastore.resources import ResourceStore

    url = journal.state.datastore
    assert url is not None
    resources = cluster_manifests(topology)
    written = []
    try:
        store = open_datastore(url, create=journal.state.datastore_is_ours)
    except DatastoreError as err:
        raise LabBuildError(f"datastore {url}: {err}") from err
    try:
        rs = ResourceStore(store)
        if journal.state.datastore_is_ours:
            rs.apply(resources)
            return [f"{r.KIND}/{r.name}" for r in resources]
        for res in resources:
            existing = rs.get(type(res), res.name)
            if existing is not None:
                if existing.spec != res.spec:
                    raise LabBuildError(
                        f"datastore {url} already has {res.KIND} {res.name!r} with another "
                        "spec; use a fresh datastore (or none: the lab makes its own)"
                    )
                continue
            journal.record_datastore_resource(res.KIND, res.name)
            rs.create([res])
            written.append(f"{res.KIND}/{res.name}")
    except DatastoreError as err:
        raise LabBuildError(f"datastore {url}: {err}") from err
    finally:
        store.close()
    return written


def unseed_datastore(url: str, created: list[tuple[str, str]]) -> list[str]:
    """Delete the resources the lab created in a datastore it does not own; return problems."""
    from tortie.datastore.api import DatastoreError, NotFoundError
    from tortie.datastore.factory import open_datastore
    from tortie.datastore.resources import ResourceStore
    from tortie.model.resources import BGPConfiguration, BGPPeer, IPPool, Resource

    kinds: dict[str, type[Resource]] = {c.KIND: c for c in (IPPool, BGPConfiguration, BGPPeer)}
    problems = []
    try:
        store = open_datastore(url)
    except DatastoreError as err:
        return [f"datastore {url}: {err}; delete {', '.join(n for _, n in created)} by hand"]
    try:
        rs = ResourceStore(store)
        for kind, name in reversed(created):
            try:
                rs.delete(kinds[kind], name)
            except NotFoundError:
                continue
            except (DatastoreError, KeyError) as err:
                problems.append(f"delete {kind} {name} from {url}: {err}")
    finally:
        store.close()
    return problems
