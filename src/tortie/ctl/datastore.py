"""``tortie datastore init|info|accept``: creating a datastore, looking at one, and accepting a
restored one on a node.

Problem (issue 17, item 1): opening a datastore used to create it, so a read command run while
the live file was moved away made an empty store and destroyed the real one's journal.
Opening no longer creates anything; making a store is this explicit act (or an agent's first
start), and a node's agent refuses a store that is not the one it has been using until the
operator says otherwise (docs/datastore.md).

- ``init``: creates the store if the URL names none (SQLite: the file, private, with a new
  id; etcd: the identity key), or gives an existing tortie store an id if it has none.
  Idempotent: on an existing store it prints its id. A path that holds something else is
  refused and left untouched.
- ``info``: URL, id, revision; for SQLite also the schema, creation time, compaction horizon,
  key and change-log counts and the files' sizes.
- ``accept --node NAME``: rewrite that node's record to the store now at the URL, for a
  deliberate restore or a new store; the agent is restarted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from tortie.ctl.common import datastore_url
from tortie.errors import TortieError


class DatastoreCommandError(TortieError):
    pass


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ds = subparsers.add_parser(
        "datastore",
        help="create a datastore, show it, accept a restored one on a node",
        description="Opening a datastore never creates one: `init` does (docs/datastore.md).",
    )
    sub = ds.add_subparsers(dest="datastore_command", metavar="SUBCOMMAND")
    sub.required = True
    init = sub.add_parser(
        "init", help="create the datastore if missing (idempotent: prints its id)"
    )
    init.set_defaults(func=_init)
    info = sub.add_parser("info", help="URL, id, revision, schema and sizes of the datastore")
    info.add_argument("-o", "--output", choices=("text", "json"), default="text")
    info.set_defaults(func=_info)
    accept = sub.add_parser(
        "accept",
        help="make a node's agent accept the datastore now at the URL (after a restore)",
        description="An agent refuses a datastore whose id differs from the one it recorded, "
        "or whose revision went backwards (it changes nothing in the kernel meanwhile). After "
        "a deliberate restore, record the store now at the URL for the node, then restart "
        "its agent.",
    )
    accept.add_argument("--node", help="node name (default: $TORTIE_NODENAME or the host name)")
    accept.add_argument(
        "--state-dir", type=Path, help="the agent's state dir (default: /run/tortie/<node>)"
    )
    accept.set_defaults(func=_accept)


def _init(args: argparse.Namespace) -> int:
    from tortie.datastore.factory import open_datastore

    url = datastore_url(args)
    store = open_datastore(url, create=True)
    try:
        ident, rev = store.identity(), store.revision()
    finally:
        store.close()
    made = getattr(store, "created", None)
    what = "created" if made else "a tortie datastore"
    print(f"datastore {url}: {what}, id {ident}, revision {rev}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from tortie.datastore.factory import open_datastore

    url = datastore_url(args)
    store = open_datastore(url)
    try:
        doc: dict[str, object] = {"url": url, "id": store.identity(), "revision": store.revision()}
        details = getattr(store, "info", None)
        if callable(details):
            doc.update(details())
    finally:
        store.close()
    if args.output == "json":
        print(json.dumps(doc, indent=2))
        return 0
    for key, value in doc.items():
        if isinstance(value, dict):
            for path, size in value.items():
                print(f"{'file:':<17}{path} ({size:,} bytes)")
        else:
            print(f"{key + ':':<17}{value if value != '' else '(none: run tortie datastore init)'}")
    return 0


def _accept(args: argparse.Namespace) -> int:
    from tortie.agent.config import DEFAULT_RUN_DIR
    from tortie.agent.trust import Record, RecordError, load_record, record_path, save_record
    from tortie.ctl.node import node_name
    from tortie.datastore.factory import open_datastore

    name = node_name(args.node)
    state_dir = args.state_dir or Path(os.environ.get("TORTIE_STATE_DIR") or DEFAULT_RUN_DIR / name)
    path = record_path(state_dir)
    url = datastore_url(args)
    try:
        old: Record | str | None = load_record(path)
    except RecordError as err:
        old = str(err)
    store = open_datastore(url)
    try:
        ident, rev = store.identity(), store.revision()
    finally:
        store.close()
    if not ident:
        raise DatastoreCommandError(
            f"datastore {url} has no id yet: run `tortie datastore init` first"
        )
    try:
        save_record(path, Record(url, ident, rev))
    except OSError as err:
        raise DatastoreCommandError(
            f"cannot write {path}: {err.strerror or err}; give the agent's --state-dir"
        ) from err
    if isinstance(old, Record):
        was = f"id {old.id} at revision {old.revision} ({old.url})"
    else:
        was = old or "nothing"
    print(f"node {name}: now accepts datastore {url}, id {ident} at revision {rev}")
    print(f"  (the record {path} said: {was}); restart the node's agent to use it")
    return 0
