"""Errors raised by the resource model, worded for the person who wrote the manifest.

Problem: users apply Calico manifests; when one is wrong they need to know which file, which
document, which resource and which field, in the spelling they typed (``spec.blockSize``, not
``spec.block_size``), and what to change. Pydantic's own multi-line dumps never reach them.

Invariants:
- Every error raised on purpose by ``tortie.model`` is a :class:`ModelError`.
- ``str(ValidationError)`` is one line, plus at most one more line summarising further
  problems in the same document (control characters from user input are escaped), e.g.
  ``pools.yaml: document 2 (IPPool pool-b): spec.blockSize: 33 is out of range: IPv4 block
  sizes are 20..32``.
- ``field`` is a dotted path in the user's camelCase names, list items as ``[i]``.

Hazards:
- Errors are built bottom-up: the model knows the field, the loader knows the file. Use
  :meth:`ValidationError.with_context` to add what a caller knows; it never overwrites what a
  lower layer already recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tortie.errors import TortieError


class ModelError(TortieError):
    """Base of every error raised by ``tortie.model``."""


@dataclass(frozen=True)
class Problem:
    """One more thing wrong with the same document (shown as a short summary line)."""

    field: str | None
    message: str


class ValidationError(ModelError):
    """A resource (or a stream of them) is not valid.

    Attributes mirror the parts of the message so callers (the CLI, tests) can inspect them:
    ``source`` (file name or ``"<stdin>"``), ``document`` (1-based index in the stream),
    ``item`` (1-based index inside a List document), ``line``/``column`` (1-based, for syntax
    errors), ``kind``/``name`` of the resource if known, ``field`` and ``message``.
    """

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        source: str | None = None,
        document: int | None = None,
        item: int | None = None,
        line: int | None = None,
        column: int | None = None,
        kind: str | None = None,
        name: str | None = None,
        more: Sequence[Problem] = (),
    ) -> None:
        self.message = message
        self.field = field
        self.source = source
        self.document = document
        self.item = item
        self.line = line
        self.column = column
        self.kind = kind
        self.name = name
        self.more: tuple[Problem, ...] = tuple(more)
        super().__init__(self._render())

    def with_context(
        self,
        *,
        source: str | None = None,
        document: int | None = None,
        item: int | None = None,
        kind: str | None = None,
        name: str | None = None,
    ) -> ValidationError:
        """A copy with the given context filled in where this error does not know it yet."""
        return ValidationError(
            self.message,
            field=self.field,
            source=self.source if self.source is not None else source,
            document=self.document if self.document is not None else document,
            item=self.item if self.item is not None else item,
            line=self.line,
            column=self.column,
            kind=self.kind if self.kind is not None else kind,
            name=self.name if self.name is not None else name,
            more=self.more,
        )

    def _render(self) -> str:
        where = ""
        if self.document is not None:
            where = f"document {self.document}"
            if self.item is not None:
                where += f", item {self.item}"
        if self.line is not None:
            pos = f"line {self.line}" + (f", column {self.column}" if self.column else "")
            where = f"{where}, {pos}" if where else pos
        who = " ".join(p for p in (self.kind, self.name) if p)
        if where and who:
            where = f"{where} ({who})"
        elif who:
            where = who
        parts = [p for p in (self.source, where, self.field) if p]
        text = _printable(": ".join([*parts, self.message]))
        if self.more:
            fields = _printable(", ".join(p.field or "(document)" for p in self.more[:5]))
            extra = "" if len(self.more) <= 5 else ", ..."
            count = len(self.more)
            text += f"\n  ({count} more problem{'s' if count > 1 else ''}: {fields}{extra})"
        return text

    def __str__(self) -> str:
        return self._render()


def _printable(text: str) -> str:
    """Escape control characters so user-supplied names cannot break the one-line layout."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class SelectorError(ModelError):
    """A label selector does not parse. ``column`` is 1-based within ``text``."""

    def __init__(self, text: str, column: int, reason: str) -> None:
        self.text = text
        self.column = column
        self.reason = reason
        super().__init__(f"invalid selector {text!r}: column {column}: {reason}")
