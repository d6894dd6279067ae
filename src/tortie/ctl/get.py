"""``tortie get``: stored resources as calicoctl shows them (a table, YAML or JSON).

Invariants:
- What is shown is what :class:`~tortie.datastore.resources.ResourceStore` reads, as
  documents (:mod:`tortie.datastore.documents`): a stored value that is not a valid resource
  is reported with its key (:class:`~tortie.datastore.documents.CorruptResourceError`),
  never shown as if it were one.
- ``get`` never prints a secret unless asked (``--show-secrets``): a BGPPeer password is
  printed as :data:`~tortie.model.fields.REDACTED` (calicoctl never prints one either: its
  passwords are only secretKeyRefs). ``get -o yaml | apply -f -`` keeps the stored password.
- ``-o yaml|json`` prints list documents (``IPPoolList``) as calicoctl does, and a single one
  for ``get KIND NAME``; what it prints, ``tortie apply`` reads back to equal resources.

Start-up (issue 17, item 14): a ``tortie get`` is a whole process, so this module and what it
imports stay clear of pydantic and the models (about 0.1 s), which are loaded only for a
stored value tortie did not write as it writes them, and of PyYAML unless ``-o yaml``
(``tests/unit/ctl/test_cli_startup.py`` checks both; ``bench/cli.py`` times it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Any

from tortie.ctl.common import InputError, namespace_for, open_store
from tortie.ctl.tables import table
from tortie.datastore.documents import list_documents, require_document
from tortie.model.fields import REDACTED
from tortie.model.kindinfo import kind_info
from tortie.model.stored import redact_document


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    g = sub.add_parser("get", help="show resources")
    g.add_argument("kind", help="resource kind, e.g. ippools, nodes, bgppeers")
    g.add_argument("names", nargs="*", metavar="NAME")
    g.add_argument(
        "-o",
        "--output",
        default="table",
        choices=("table", "wide", "yaml", "json"),
        help="output format (default: table)",
    )
    g.add_argument("-n", "--namespace", help="namespace of namespaced kinds (default: default)")
    g.add_argument("-A", "--all-namespaces", action="store_true", help="list across all namespaces")
    g.add_argument(
        "--show-secrets",
        action="store_true",
        help=f"print BGP passwords (default: {REDACTED}, which apply reads as 'keep the stored "
        "password')",
    )
    g.set_defaults(func=_get)


def _get(args: argparse.Namespace) -> int:
    info = kind_info(args.kind)
    if args.all_namespaces and not info.namespaced:
        raise InputError(f"{info.kind} is not namespaced; drop -A/--all-namespaces")
    ns = None if args.all_namespaces else namespace_for(info, args.namespace)
    store = open_store(args)
    found: list[Mapping[str, Any]]
    if args.names:
        found = [require_document(store, info.kind, name, ns) for name in args.names]
    else:
        found = list(list_documents(store, info.kind, ns))
    if not args.show_secrets:
        shown = [redact_document(d) for d in found]
        hidden = sum(a is not b for a, b in zip(found, shown, strict=True))
        if hidden and args.output in ("yaml", "json"):
            # On stderr: stdout stays a manifest that apply reads back.
            print(
                f"note: {hidden} password(s) shown as {REDACTED} (--show-secrets prints them; "
                "applying this output keeps the stored ones)",
                file=sys.stderr,
            )
        found = shown
    if args.output in ("table", "wide"):
        sys.stdout.write(table(found, info.kind, args.output == "wide", info.namespaced))
        return 0
    from tortie.model.output import format_documents  # YAML: only for -o yaml

    single = bool(args.names) and len(found) == 1
    text = format_documents(found, args.output, single=single, kind=info.kind)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0
