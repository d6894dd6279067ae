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
- Bounded cost, and only :class:`ValidationError` whatever the text: at most
  ``MAX_INPUT_BYTES`` (16 MiB); nesting at most ``MAX_DEPTH`` (100) levels, checked before
  anything recurses (JSON: :mod:`tortie.model.nesting` on the text; YAML: the parser's own
  limit or its events, then the node graph, which aliases can make deeper or cyclic); the
  duplicate-key check is O(n) (100k labels). Kubernetes' Go decoders stop at 10,000 levels,
  which Python's stack does not reach; no real manifest comes near 100.
- libyaml parses when PyYAML has it (about 7 times faster than PyYAML's Python parser); the
  constructor and resolver are the same Python code either way. Only some messages differ
  in wording ("mapping values are not allowed in this context" against "... here").

Hazards:
- YAML 1.1 still turns unquoted ``yes``/``no``/``on``/``off`` into booleans (Go's YAML
  library does the same); a label value like that then fails as "expected a string".
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import Any, Literal

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError

from tortie.model.errors import ValidationError
from tortie.model.fields import API_VERSION, show
from tortie.model.kinds import KIND_CLASSES, kind_names, suggest_kind
from tortie.model.nesting import MAX_DEPTH, json_too_deep
from tortie.model.output import format_documents
from tortie.model.resources import Resource

__all__ = ["MAX_DEPTH", "MAX_INPUT_BYTES", "dump_documents", "load_documents", "parse_document"]

_MERGE_TAG = "tag:yaml.org,2002:merge"
_STR_TAG = "tag:yaml.org,2002:str"
_DROPPED_TAGS = ("tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float")

# Inputs larger than this are refused before parsing. Apiserver requests stop at 3 MiB and one
# resource at 1.5 MiB (etcd); an apply here may carry thousands of resources (5,000 IPPools
# are 0.8 MiB of YAML), so the limit is larger, but bounds the memory and time one apply can
# take (16 MiB of YAML: ~10 s and a few hundred MiB to parse). All limits: docs/limits.md.
MAX_INPUT_BYTES = 16 * 1024 * 1024


class _Resolver(yaml.resolver.Resolver):
    """YAML 1.1 resolution without timestamps and base-60 numbers (see below)."""

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in _DROPPED_TAGS]
        for first, resolvers in yaml.resolver.Resolver.yaml_implicit_resolvers.items()
    }


class _Constructor(yaml.constructor.SafeConstructor):
    """The safe constructor, refusing duplicate keys and documents nested too deep."""

    def construct_document(self, node: yaml.Node) -> Any:
        # Measured on the node graph, not the text: aliases can nest a document deeper than
        # its text does (``&b [*a]``, ``&c [*b]``, ...) or make it contain itself (``&a [*a]``).
        deep = _too_deep(node)
        if deep is not None:
            raise ConstructorError(None, None, _nesting_problem(), deep.start_mark)
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if not isinstance(node, yaml.MappingNode):
            return super().construct_mapping(node, deep=deep)  # its error
        # Merged keys (``<<: *base``) may be overridden; the keys written here may not repeat.
        written = [key for key, _ in node.value if key.tag != _MERGE_TAG]
        merges = len(written) != len(node.value)
        self.flatten_mapping(node)
        # BaseConstructor.construct_mapping, with plain strings taken as they are: most keys
        # and values of a manifest are, and construct_object costs ~4 us each (a label map of
        # 100k entries: 0.8 s). Strings are immutable, so sharing through aliases is moot.
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if type(key_node) is yaml.ScalarNode and key_node.tag == _STR_TAG:
                key: Any = key_node.value
            else:
                key = self.construct_object(key_node, deep=deep)
                if not isinstance(key, Hashable):
                    raise ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        "found unhashable key",
                        key_node.start_mark,
                    )
            if type(value_node) is yaml.ScalarNode and value_node.tag == _STR_TAG:
                mapping[key] = value_node.value
            else:
                mapping[key] = self.construct_object(value_node, deep=deep)
        # Without merges, fewer entries than keys means a duplicate: O(1) to notice, and the
        # search for which one runs only then (a list search was O(n^2): 32k labels, 10 s).
        if merges or len(mapping) != len(written):
            self._refuse_duplicates(node, written)
        return mapping

    def _refuse_duplicates(self, node: yaml.MappingNode, keys: list[yaml.Node]) -> None:
        seen: set[Any] = set()
        for key_node in keys:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)


class _PyLoader(
    yaml.reader.Reader,
    yaml.scanner.Scanner,
    yaml.parser.Parser,
    yaml.composer.Composer,
    _Constructor,
    _Resolver,
):
    """PyYAML's own (Python) parser: the loader where PyYAML was built without libyaml."""

    def __init__(self, stream: str) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        _Constructor.__init__(self)
        _Resolver.__init__(self)


_Loader: type[_PyLoader] = _PyLoader
if yaml.__with_libyaml__:
    # libyaml parses about 7 times faster than PyYAML's Python parser (5,000 IPPools: 0.4 s
    # against 2.9 s); both give the same events, and the construction stays in Python.
    from yaml._yaml import CParser

    class _CLoader(CParser, _Constructor, _Resolver):
        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            _Constructor.__init__(self)
            _Resolver.__init__(self)

    _Loader = _CLoader  # type: ignore[assignment]


_Resolver.add_implicit_resolver(
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
_Resolver.add_implicit_resolver(
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


def _nesting_problem() -> str:
    return f"nested more than {MAX_DEPTH} levels deep (the limit is {MAX_DEPTH})"


def _too_deep(root: yaml.Node) -> yaml.Node | None:
    """A collection more than :data:`MAX_DEPTH` levels down the graph under ``root``, or None.

    Level by level, each level's nodes deduplicated (an alias is a shared node): at most
    ``MAX_DEPTH + 1`` levels of at most every node each, and a cycle never runs out of
    levels, so it is found too deep. No recursion.
    """
    level: dict[int, yaml.Node] = {id(root): root} if isinstance(root, _COLLECTIONS) else {}
    for _ in range(MAX_DEPTH):
        below: dict[int, yaml.Node] = {}
        for node in level.values():
            for child in _children(node):
                if isinstance(child, _COLLECTIONS):
                    below[id(child)] = child
        if not below:
            return None
        level = below
    return next(iter(level.values()), None)


_COLLECTIONS = (yaml.SequenceNode, yaml.MappingNode)


def _children(node: yaml.Node) -> Iterator[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            yield key
            yield value
    else:
        yield from node.value


@functools.cache
def _parser_limits_nesting() -> bool:
    """Whether the parser itself refuses deep nesting (recent libyaml stops at 1,000 levels),
    so composing a document cannot recurse deeper than that. Checked once, on first use."""
    loader = _Loader("[" * 1001 + "]" * 1001)
    try:
        loader.get_single_node()
    except yaml.YAMLError:
        return True
    finally:
        loader.dispose()
    return False


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
    _check_size(text, source)
    json_error: ValidationError | None = None
    if text.lstrip().startswith(("{", "[")):
        if json_too_deep(text):
            json_error = ValidationError(f"invalid JSON: {_nesting_problem()}", source=source)
        else:
            try:
                return [(1, json.loads(text, object_pairs_hook=_no_duplicate_keys))]
            except json.JSONDecodeError as exc:
                # Maybe YAML flow style; report this if YAML fails too.
                json_error = ValidationError(
                    f"invalid JSON: {exc.msg}", source=source, line=exc.lineno, column=exc.colno
                )
            except _DuplicateKeyError as exc:
                raise ValidationError(str(exc), source=source, document=1) from None
    try:
        return _yaml_documents(text, source)
    except ValidationError:
        if json_error is not None:
            raise json_error from None
        raise


def _check_size(text: str, source: str) -> None:
    # Characters are at most bytes: only a long text needs encoding to be measured.
    if len(text) * 4 > MAX_INPUT_BYTES:
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > MAX_INPUT_BYTES:
            raise ValidationError(
                f"the input is {size} bytes; the limit is {MAX_INPUT_BYTES} (16 MiB): "
                "split it into several files",
                source=source,
            )


_STARTS = (yaml.SequenceStartEvent, yaml.MappingStartEvent)
_ENDS = (yaml.SequenceEndEvent, yaml.MappingEndEvent)


def _yaml_documents(text: str, source: str) -> list[tuple[int, Any]]:
    if not _parser_limits_nesting():
        _check_yaml_depth(text, source)
    docs: list[tuple[int, Any]] = []
    loader = _Loader(text)
    try:
        while loader.check_data():  # type: ignore[no-untyped-call]  # stub lacks types
            docs.append((len(docs) + 1, loader.get_data()))
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, source, len(docs) + 1) from None
    finally:
        loader.dispose()
    return docs


_STARTS = (yaml.SequenceStartEvent, yaml.MappingStartEvent)
_ENDS = (yaml.SequenceEndEvent, yaml.MappingEndEvent)


def _check_yaml_depth(text: str, source: str) -> None:
    """Refuse a deep document from its events alone, before the composer (which recurses once
    per level) sees it: for parsers that do not limit nesting themselves."""
    loader = _Loader(text)
    document = 1
    try:
        depth = 0
        while loader.check_event():
            event = loader.get_event()  # type: ignore[no-untyped-call]
            kind = type(event)
            if kind in _STARTS:
                depth += 1
                if depth > MAX_DEPTH:
                    raise ComposerError(None, None, _nesting_problem(), event.start_mark)
            elif kind in _ENDS:
                depth -= 1
            elif kind is yaml.DocumentEndEvent:
                document += 1
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, source, document) from None
    finally:
        loader.dispose()


def _yaml_error(exc: yaml.YAMLError, source: str, document: int) -> ValidationError:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    if "maximum nesting depth" in problem:  # libyaml's own limit (1,000): say ours
        problem, context = _nesting_problem(), None
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
    """Serialise ``resources`` as calicoctl would print them (see
    :func:`tortie.model.output.format_documents` for ``single`` and ``kind``)."""
    docs = [r.to_document() for r in resources]
    return format_documents(docs, fmt, single=single, kind=kind)
