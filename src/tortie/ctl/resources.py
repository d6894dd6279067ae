"""``tortie apply|create|replace|delete``: calicoctl's resource commands that write
(``get`` is :mod:`tortie.ctl.get`).

Invariants:
- Input is fully parsed and validated before anything is written, and the write is one
  all-or-nothing datastore transaction (see :mod:`tortie.datastore.resources`), so a bad
  document anywhere in the input changes nothing.
- A BGPPeer password given as :data:`~tortie.model.fields.REDACTED` (what ``get`` prints)
  keeps the stored password (:mod:`tortie.datastore.resources`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO

from tortie.ctl.common import InputError, namespace_for, open_store
from tortie.datastore.resources import ResourceStore
from tortie.model.errors import ValidationError
from tortie.model.kindinfo import kind_info
from tortie.model.kinds import resolve_kind
from tortie.model.resources import Resource

__all__ = ["InputError", "read_resources", "register"]

_YAML_SUFFIXES = (".yaml", ".yml", ".json")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name, helptext, func in (
        ("apply", "create or replace resources from a file", _apply),
        ("create", "create resources from a file (fails if any exists)", _create),
        ("replace", "replace existing resources from a file", _replace),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument(
            "-f",
            "--filename",
            required=True,
            metavar="FILE",
            help="YAML or JSON file, a directory of them, or - for stdin",
        )
        p.set_defaults(func=func)

    d = sub.add_parser("delete", help="delete resources by KIND NAME or from a file")
    d.add_argument("kind", nargs="?", help="resource kind, e.g. ippool")
    d.add_argument("names", nargs="*", metavar="NAME")
    d.add_argument("-f", "--filename", metavar="FILE")
    d.add_argument("-n", "--namespace", help="namespace of namespaced kinds (default: default)")
    d.add_argument(
        "--skip-not-exists", action="store_true", help="do not fail on resources that are absent"
    )
    d.set_defaults(func=_delete)


# -- input ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Input:
    """Parsed resources and the file each came from (to name it in set-level errors)."""

    resources: list[Resource]
    sources: dict[tuple[str, str | None, str], str]

    def explain(self, err: ValidationError) -> ValidationError:
        """Add the file name to an error raised after parsing (e.g. overlapping pools)."""
        if err.kind and err.name:
            for (kind, _ns, name), source in self.sources.items():
                if kind == err.kind and name == err.name:
                    return err.with_context(source=source)
        return err


def read_resources(filename: str) -> Input:
    """Parse every document of a file, a directory or stdin (``-``); raise on any error.

    At most ``MAX_INPUT_BYTES`` are read in all (a directory's files together), and no more
    than that is ever held: a larger input is refused before it is parsed.
    """
    budget = _Budget()
    if filename == "-":
        # The bytes under the text stream (strict UTF-8, bounded), unless stdin was replaced
        # by a text-only stream (embedding, tests): then its characters.
        raw = getattr(sys.stdin, "buffer", None)
        texts = [("<stdin>", budget.read("<stdin>", raw) if raw else budget.read_text(sys.stdin))]
    else:
        path = Path(filename)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in _YAML_SUFFIXES)
            if not files:
                raise InputError(f"{filename}: directory has no .yaml, .yml or .json files")
        else:
            files = [path]
        texts = [(str(f), _read_text(f, budget)) for f in files]
    from tortie.model.loader import load_documents  # YAML: not loaded by `tortie get`

    resources: list[Resource] = []
    sources: dict[tuple[str, str | None, str], str] = {}
    for source, text in texts:
        for res in load_documents(text, source):
            resources.append(res)
            sources.setdefault(res.identity, source)
    if not resources:
        raise InputError(f"{filename}: no resources found")
    return Input(resources, sources)


class _Budget:
    """What is left of ``MAX_INPUT_BYTES`` for one command's input."""

    def __init__(self) -> None:
        from tortie.model.loader import MAX_INPUT_BYTES  # YAML: not loaded by `tortie get`

        self.limit = self.left = MAX_INPUT_BYTES

    def read(self, source: str, stream: BinaryIO) -> str:
        data = stream.read(self.left + 1)
        self._take(source, len(data))
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise InputError(
                f"{source}: not UTF-8 text (byte {err.start}: {err.reason}); manifests are "
                "UTF-8 YAML or JSON"
            ) from None

    def read_text(self, stream: TextIO) -> str:
        text = stream.read(self.left + 1)
        self._take("<stdin>", len(text.encode("utf-8", "surrogatepass")))
        return text

    def _take(self, source: str, size: int) -> None:
        if size > self.left:
            raise InputError(
                f"{source}: the input is larger than {self.limit} bytes (16 MiB, the limit "
                "for all files of one command together): split it and apply the parts"
            )
        self.left -= size


def _read_text(f: Path, budget: _Budget) -> str:
    try:
        with f.open("rb") as stream:
            return budget.read(str(f), stream)
    except FileNotFoundError as err:
        raise InputError(f"{f}: no such file") from err
    except OSError as err:
        raise InputError(f"{f}: cannot read: {err}") from err


_WRITERS: dict[str, Callable[[ResourceStore, Sequence[Resource]], list[Resource]]] = {
    "applied": ResourceStore.apply,
    "created": ResourceStore.create,
    "replaced": ResourceStore.replace,
}


def _write(args: argparse.Namespace, verb: str) -> int:
    given = read_resources(args.filename)
    try:
        _WRITERS[verb](ResourceStore(open_store(args)), given.resources)
    except ValidationError as err:
        raise given.explain(err) from None
    print(f"Successfully {verb} {len(given.resources)} resource(s)")
    return 0


def _apply(args: argparse.Namespace) -> int:
    return _write(args, "applied")


def _create(args: argparse.Namespace) -> int:
    return _write(args, "created")


def _replace(args: argparse.Namespace) -> int:
    return _write(args, "replaced")


def _delete(args: argparse.Namespace) -> int:
    if args.filename:
        if args.kind:
            raise InputError("give either -f FILE or KIND NAME, not both")
        given = read_resources(args.filename)
        deleted = ResourceStore(open_store(args)).delete_many(
            given.resources, skip_missing=args.skip_not_exists
        )
        print(f"Successfully deleted {len(deleted)} resource(s)")
        return 0
    if not args.kind or not args.names:
        raise InputError(
            "say what to delete: 'tortie delete KIND NAME...' or 'tortie delete -f FILE'"
        )
    cls = resolve_kind(args.kind)
    ns = namespace_for(kind_info(cls.KIND), args.namespace)
    rs = ResourceStore(open_store(args))
    if args.skip_not_exists:
        targets = [r for name in args.names if (r := rs.get(cls, name, ns)) is not None]
    else:
        targets = [rs.require(cls, name, ns) for name in args.names]
    deleted = rs.delete_many(targets, skip_missing=args.skip_not_exists)
    print(f"Successfully deleted {len(deleted)} resource(s)")
    return 0
