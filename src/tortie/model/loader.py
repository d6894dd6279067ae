"""Read and write streams of Calico resources (YAML or JSON), as calicoctl does.

Problem: users hand tortie files (or stdin) holding one or more resources in any of the
shapes calicoctl accepts, and expect errors that name the file, the document and the field.

Accepted input (calicoctl's ``resourcemgr`` behaviour):
- a YAML stream of documents separated by ``---``; empty documents are skipped;
- JSON (one value; tried first when the text starts with ``{`` or ``[``);
- in any document: one resource, a sequence of resources, or a list document
  ``{apiVersion, kind: <Kind>List | List, metadata?, items: [...]}``. Items of a typed list
  (``IPPoolList``) may omit ``apiVersion``/``kind``.

Output (:func:`dump_documents`): one resource is one document; several (or ``single=False``)
are a list document like ``calicoctl get -o yaml`` prints: ``kind: <Kind>List`` when all items are
of one kind, otherwise ``kind: List``; always ``apiVersion: projectcalico.org/v3``. What it
writes, :func:`load_documents` reads back to equal resources.

Invariants:
- ``document`` numbers count every document in the stream from 1, empty ones included, so
  they match what a user counts by ``---``; ``item`` counts from 1 inside a list.
- YAML is read safely and closer to Go's YAML than PyYAML's defaults: duplicate keys are an
  error, and timestamps and base-60 numbers are not resolved (``12:30:45`` stays text).

Hazards:
- YAML 1.1 still turns unquoted ``yes``/``no``/``on``/``off`` into booleans (Go's YAML
  library does the same); a label value like that then fails as "expected a string".
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import yaml
from yaml.constructor import ConstructorError

from tortie.model.errors import ValidationError
from tortie.model.fields import API_VERSION, show
from tortie.model.kinds import KIND_CLASSES, kind_names, resolve_kind, suggest_kind
from tortie.model.resources import Resource

__all__ = ["dump_documents", "load_documents", "parse_document"]

_MERGE_TAG = "tag:yaml.org,2002:merge"
_DROPPED_TAGS = ("tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float")


class _Loader(yaml.SafeLoader):
    """SafeLoader without timestamps and base-60 numbers, and refusing duplicate keys."""

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in _DROPPED_TAGS]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: list[Any] = []
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue  # merged keys may legitimately be overridden
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.append(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(
        r"""^(?:[-+]?0b[0-1_]+
        |[-+]?0[0-7_]+
        |[-+]?(?:0|[1-9][0-9_]*)
        |[-+]?0x[0-9a-fA-F_]+)$""",
        re.X,
    ),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
        |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


# --------------------------------------------------------------------------------------------
# Reading


def load_documents(text: str, source: str) -> list[Resource]:
    """All resources in ``text`` (YAML or JSON); ``source`` names it in errors."""
    resources: list[Resource] = []
    for index, doc in _documents(text, source):
        if doc is None:
            continue
        if isinstance(doc, list):
            for n, item in enumerate(doc, 1):
                resources.append(parse_document(item, source=source, document=index, item=n))
        elif isinstance(doc, Mapping) and _is_list_document(doc):
            resources.extend(_list_items(doc, source, index))
        else:
            resources.append(parse_document(doc, source=source, document=index))
    return resources


def parse_document(
    doc: object,
    *,
    source: str | None = None,
    document: int | None = None,
    item: int | None = None,
) -> Resource:
    """One resource from one parsed document, dispatching on its ``kind``."""
    where: dict[str, Any] = {"source": source, "document": document, "item": item}
    if not isinstance(doc, Mapping):
        raise ValidationError(
            f"expected a mapping with apiVersion, kind, metadata and spec, got {show(doc)}",
            **where,
        )
    if "kind" not in doc:
        raise ValidationError("required field is missing", field="kind", **where)
    kind = doc["kind"]
    cls = KIND_CLASSES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValidationError(_unknown_kind(kind), field="kind", **where)
    try:
        return cls.from_document(doc)
    except ValidationError as exc:
        raise exc.with_context(source=source, document=document, item=item) from None


def _unknown_kind(kind: object) -> str:
    message = f"{show(kind)} is not a known kind (known: {', '.join(kind_names())})"
    if isinstance(kind, str):
        guess = suggest_kind(kind)
        if guess:
            message += f"; did you mean {guess}?"
    return message


def _is_list_document(doc: Mapping[str, Any]) -> bool:
    kind = doc.get("kind")
    return isinstance(kind, str) and (
        kind == "List" or (kind.endswith("List") and kind[: -len("List")] in KIND_CLASSES)
    )


def _list_items(doc: Mapping[str, Any], source: str, index: int) -> Iterator[Resource]:
    kind = str(doc["kind"])
    item_kind = kind[: -len("List")] or None
    where: dict[str, Any] = {"source": source, "document": index, "kind": kind}
    allowed_versions = (API_VERSION, "v1") if item_kind is None else (API_VERSION,)
    version = doc.get("apiVersion")
    if version not in allowed_versions:
        raise ValidationError(
            f"{show(version)} is not supported; use {API_VERSION}", field="apiVersion", **where
        )
    for key in doc:
        if key not in ("apiVersion", "kind", "metadata", "items"):
            raise ValidationError(
                "unknown field (a list has apiVersion, kind, metadata and items)",
                field=str(key),
                **where,
            )
    items = doc.get("items")
    if not isinstance(items, list):
        raise ValidationError(
            f"expected a list of resources, got {show(items)}", field="items", **where
        )
    for n, raw in enumerate(items, 1):
        entry = raw
        if item_kind is not None and isinstance(raw, Mapping):
            if raw.get("kind", item_kind) != item_kind:
                raise ValidationError(
                    f"an item of a {kind} must be a {item_kind}, got {show(raw.get('kind'))}",
                    field="kind",
                    source=source,
                    document=index,
                    item=n,
                )
            # Typed lists need not repeat the type on each item (Go unmarshals into the type).
            entry = {"apiVersion": API_VERSION, "kind": item_kind, **raw}
        yield parse_document(entry, source=source, document=index, item=n)


def _documents(text: str, source: str) -> list[tuple[int, Any]]:
    """``(1-based index, parsed value)`` for every document of the stream."""
    json_error: json.JSONDecodeError | None = None
    if text.lstrip().startswith(("{", "[")):
        try:
            return [(1, json.loads(text, object_pairs_hook=_no_duplicate_keys))]
        except json.JSONDecodeError as exc:
            json_error = exc  # maybe YAML flow style; report this if YAML fails too
        except _DuplicateKeyError as exc:
            raise ValidationError(str(exc), source=source, document=1) from None
    docs: list[tuple[int, Any]] = []
    try:
        for doc in yaml.load_all(text, Loader=_Loader):  # _Loader is a SafeLoader
            docs.append((len(docs) + 1, doc))
    except yaml.YAMLError as exc:
        if json_error is not None:
            raise ValidationError(
                f"invalid JSON: {json_error.msg}",
                source=source,
                line=json_error.lineno,
                column=json_error.colno,
            ) from None
        raise _yaml_error(exc, source, len(docs) + 1) from None
    return docs


def _yaml_error(exc: yaml.YAMLError, source: str, document: int) -> ValidationError:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    message = f"invalid YAML: {problem}"
    if context and "duplicate key" not in problem:
        message += f" ({context})"
    return ValidationError(
        message,
        source=source,
        document=document,
        line=mark.line + 1 if mark is not None else None,
        column=mark.column + 1 if mark is not None else None,
    )


class _DuplicateKeyError(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(f"invalid JSON: duplicate key {key!r}")
        out[key] = value
    return out


# --------------------------------------------------------------------------------------------
# Writing


def dump_documents(
    resources: Sequence[Resource],
    fmt: Literal["yaml", "json"] = "yaml",
    *,
    single: bool | None = None,
    kind: str | None = None,
) -> str:
    """Serialise ``resources`` as calicoctl would print them.

    ``single``: ``None`` means a bare document for exactly one resource and a list document
    otherwise; ``False`` always writes a list (as ``calicoctl get <kind>`` does even for one
    result); ``True`` writes a bare document and requires exactly one resource. ``kind`` is
    the kind being listed (any spelling :func:`resolve_kind` accepts): it names the list
    (``IPPoolList``) even when it is empty.
    """
    docs = [r.to_document() for r in resources]
    if single is None:
        single = len(docs) == 1
    payload: dict[str, Any]
    if not single:
        kinds = {r.KIND for r in resources}
        if kind is not None:
            kinds.add(resolve_kind(kind).KIND)
        list_kind = f"{next(iter(kinds))}List" if len(kinds) == 1 else "List"
        payload = {"apiVersion": API_VERSION, "kind": list_kind, "items": docs}
    elif len(docs) == 1:
        payload = docs[0]
    else:
        raise ValueError(f"single=True needs exactly one resource, got {len(docs)}")
    if fmt == "json":
        return json.dumps(payload, indent=2, ensure_ascii=False) + "\n"
    if fmt == "yaml":
        return yaml.safe_dump(
            payload, sort_keys=False, default_flow_style=False, allow_unicode=True
        )
    raise ValueError(f"unknown format {fmt!r}; use 'yaml' or 'json'")
