"""Calico label selectors: parse, evaluate, print canonically.

Problem: IPPool ``nodeSelector`` and BGPPeer ``nodeSelector``/``peerSelector`` use Calico's
selector language. We need to reject bad selectors with the column of the mistake, evaluate
them against label maps, and print them in one canonical form.

Grammar (a hand-written recursive-descent parser, never ``eval``)::

    selector := <empty> | or
    or       := and ("||" and)*
    and      := unary ("&&" unary)*
    unary    := "!" unary | primary
    primary  := "(" or ")" | "all()" | "has(" KEY ")"
              | KEY ("==" | "!=") STR | KEY ["not"] "in" "{" [STR ("," STR)*] "}"
              | KEY "contains" STR | KEY "starts" "with" STR | KEY "ends" "with" STR
    KEY      := [A-Za-z0-9_./-]+        STR := '...' | "..."   (no escapes, as in Calico)

Semantics (Calico's): ``k != v`` and ``k not in {...}`` also match when ``k`` is absent; the
empty selector selects everything, like ``all()``.

Invariants:
- The tree is normalised: ``&&``/``||`` are flattened n-ary nodes with at least two operands
  and ``in`` sets are sorted without duplicates, so ``Selector.parse(str(s)) == s``.
- Parsing never raises anything but :class:`SelectorError`.

Hazards:
- Keywords (``in``, ``not``, ``has``, ``all``...) are only keywords in their position; a label
  may be called ``in``. Nesting depth is capped so hostile input cannot hit Python's
  recursion limit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

from tortie.model.errors import SelectorError

__all__ = [
    "All",
    "And",
    "Compare",
    "Expr",
    "Has",
    "In",
    "Not",
    "Or",
    "Selector",
    "SelectorError",
]

_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./-")
_MAX_DEPTH = 64

CompareOp = Literal["==", "!=", "contains", "starts with", "ends with"]


def _quote(value: str) -> str:
    return f"'{value}'" if '"' in value else f'"{value}"'


def _check_value(value: str) -> None:
    if '"' in value and "'" in value:
        raise ValueError("a selector value cannot contain both ' and \" (no escapes exist)")


@dataclass(frozen=True)
class All:
    """``all()``: matches every label set."""

    def matches(self, labels: Mapping[str, str]) -> bool:
        return True

    def __str__(self) -> str:
        return "all()"


@dataclass(frozen=True)
class Has:
    key: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        return self.key in labels

    def __str__(self) -> str:
        return f"has({self.key})"


@dataclass(frozen=True)
class Compare:
    key: str
    op: CompareOp
    value: str

    def __post_init__(self) -> None:
        _check_value(self.value)

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.key)
        if self.op == "!=":
            return actual != self.value
        if actual is None:
            return False
        if self.op == "==":
            return actual == self.value
        if self.op == "contains":
            return self.value in actual
        if self.op == "starts with":
            return actual.startswith(self.value)
        return actual.endswith(self.value)

    def __str__(self) -> str:
        return f"{self.key} {self.op} {_quote(self.value)}"


@dataclass(frozen=True)
class In:
    """``k in {...}`` (``negated``: ``k not in {...}``, which matches an absent key)."""

    key: str
    values: tuple[str, ...]
    negated: bool = False

    def __post_init__(self) -> None:
        for v in self.values:
            _check_value(v)
        # Normalise so that equal sets compare and print equally.
        object.__setattr__(self, "values", tuple(sorted(set(self.values))))

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.key)
        inside = actual is not None and actual in self.values
        return not inside if self.negated else inside

    def __str__(self) -> str:
        op = "not in" if self.negated else "in"
        return f"{self.key} {op} {{{', '.join(_quote(v) for v in self.values)}}}"


@dataclass(frozen=True)
class Not:
    operand: Expr

    def matches(self, labels: Mapping[str, str]) -> bool:
        return not self.operand.matches(labels)

    def __str__(self) -> str:
        if isinstance(self.operand, All | Has | Not):
            return f"!{self.operand}"
        return f"!({self.operand})"


@dataclass(frozen=True)
class And:
    operands: tuple[Expr, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(o.matches(labels) for o in self.operands)

    def __str__(self) -> str:
        return " && ".join(f"({o})" if isinstance(o, Or) else str(o) for o in self.operands)


@dataclass(frozen=True)
class Or:
    operands: tuple[Expr, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return any(o.matches(labels) for o in self.operands)

    def __str__(self) -> str:
        return " || ".join(str(o) for o in self.operands)


Expr: TypeAlias = All | Has | Compare | In | Not | And | Or


def and_(operands: Sequence[Expr]) -> Expr:
    """Conjunction, flattened (``a && (b && c)`` is ``a && b && c``)."""
    flat: list[Expr] = []
    for o in operands:
        flat.extend(o.operands if isinstance(o, And) else (o,))
    return flat[0] if len(flat) == 1 else And(tuple(flat))


def or_(operands: Sequence[Expr]) -> Expr:
    """Disjunction, flattened."""
    flat: list[Expr] = []
    for o in operands:
        flat.extend(o.operands if isinstance(o, Or) else (o,))
    return flat[0] if len(flat) == 1 else Or(tuple(flat))


@dataclass(frozen=True)
class Selector:
    """A parsed selector. Equal selectors have equal (normalised) trees."""

    expr: Expr

    @classmethod
    def parse(cls, text: str) -> Selector:
        """Parse ``text``; raise :class:`SelectorError` naming the column of the problem."""
        return cls(_Parser(text).parse())

    @classmethod
    def match_all(cls) -> Selector:
        return cls(All())

    @property
    def is_all(self) -> bool:
        return isinstance(self.expr, All)

    def matches(self, labels: Mapping[str, str]) -> bool:
        return self.expr.matches(labels)

    def __str__(self) -> str:
        return str(self.expr)


# --------------------------------------------------------------------------------------------
# Tokenizer and parser


@dataclass(frozen=True)
class _Token:
    # One of ( ) { } , ! && || == != str key end
    kind: str
    text: str
    column: int  # 1-based


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        col = i + 1
        if c.isspace():
            i += 1
        elif text.startswith(("&&", "||", "==", "!="), i):
            tokens.append(_Token(text[i : i + 2], text[i : i + 2], col))
            i += 2
        elif c in "(){},!":
            tokens.append(_Token(c, c, col))
            i += 1
        elif c in "'\"":
            end = text.find(c, i + 1)
            if end < 0:
                raise SelectorError(text, col, f"unterminated string starting with {c}")
            tokens.append(_Token("str", text[i + 1 : end], col))
            i = end + 1
        elif c in _KEY_CHARS:
            j = i
            while j < n and text[j] in _KEY_CHARS:
                j += 1
            tokens.append(_Token("key", text[i:j], col))
            i = j
        elif c in "&|=":
            raise SelectorError(text, col, f"unexpected {c!r}; did you mean {c * 2!r}?")
        else:
            raise SelectorError(text, col, f"unexpected character {c!r}")
    tokens.append(_Token("end", "", n + 1))
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.pos = 0
        self.depth = 0

    # -- helpers -------------------------------------------------------------------------

    def peek(self, ahead: int = 0) -> _Token:
        return self.tokens[min(self.pos + ahead, len(self.tokens) - 1)]

    def advance(self) -> _Token:
        tok = self.peek()
        self.pos += 1
        return tok

    def fail(self, tok: _Token, expected: str) -> SelectorError:
        found = "end of selector" if tok.kind == "end" else repr(tok.text)
        if tok.kind == "str":
            found = f"string {_quote(tok.text)}"
        return SelectorError(self.text, tok.column, f"expected {expected}, found {found}")

    def expect(self, kind: str, expected: str) -> _Token:
        tok = self.advance()
        if tok.kind != kind:
            raise self.fail(tok, expected)
        return tok

    def is_word(self, word: str, ahead: int = 0) -> bool:
        tok = self.peek(ahead)
        return tok.kind == "key" and tok.text == word

    # -- grammar -------------------------------------------------------------------------

    def parse(self) -> Expr:
        if self.peek().kind == "end":
            return All()
        expr = self.parse_or()
        tok = self.peek()
        if tok.kind != "end":
            raise self.fail(tok, "'&&', '||' or end of selector")
        return expr

    def parse_or(self) -> Expr:
        operands = [self.parse_and()]
        while self.peek().kind == "||":
            self.advance()
            operands.append(self.parse_and())
        return or_(operands)

    def parse_and(self) -> Expr:
        operands = [self.parse_unary()]
        while self.peek().kind == "&&":
            self.advance()
            operands.append(self.parse_unary())
        return and_(operands)

    def parse_unary(self) -> Expr:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise SelectorError(self.text, self.peek().column, "selector is nested too deeply")
        try:
            if self.peek().kind == "!":
                self.advance()
                return Not(self.parse_unary())
            return self.parse_primary()
        finally:
            self.depth -= 1

    def parse_primary(self) -> Expr:
        tok = self.peek()
        if tok.kind == "(":
            self.advance()
            expr = self.parse_or()
            self.expect(")", "')'")
            return expr
        if tok.kind != "key":
            raise self.fail(tok, "a label, 'has(', 'all()', '!' or '('")
        if tok.text in ("all", "has") and self.peek(1).kind == "(":
            self.advance()
            self.advance()
            if tok.text == "all":
                self.expect(")", "')' after 'all('")
                return All()
            key = self.expect("key", "a label name inside has()").text
            self.expect(")", "')' after the label name")
            return Has(key)
        self.advance()
        return self.parse_operation(tok.text)

    def parse_operation(self, key: str) -> Expr:
        tok = self.advance()
        if tok.kind in ("==", "!="):
            eq: CompareOp = "==" if tok.kind == "==" else "!="
            return Compare(key, eq, self.parse_string(eq))
        if tok.kind == "key":
            if tok.text == "in":
                return In(key, self.parse_set())
            if tok.text == "not":
                if not self.is_word("in"):
                    raise self.fail(self.peek(), "'in' after 'not'")
                self.advance()
                return In(key, self.parse_set(), negated=True)
            if tok.text == "contains":
                return Compare(key, "contains", self.parse_string("contains"))
            if tok.text in ("starts", "ends"):
                if not self.is_word("with"):
                    raise self.fail(self.peek(), f"'with' after {tok.text!r}")
                self.advance()
                op: CompareOp = "starts with" if tok.text == "starts" else "ends with"
                return Compare(key, op, self.parse_string(op))
        raise self.fail(tok, f"an operator after label {key!r} (==, !=, in, not in, contains, ...)")

    def parse_string(self, after: str) -> str:
        return self.expect("str", f"a quoted value after {after!r}").text

    def parse_set(self) -> tuple[str, ...]:
        self.expect("{", "'{' to start a set of values")
        values: list[str] = []
        if self.peek().kind == "}":
            self.advance()
            return ()
        while True:
            values.append(self.expect("str", "a quoted value in the set").text)
            tok = self.advance()
            if tok.kind == "}":
                return tuple(values)
            if tok.kind != ",":
                raise self.fail(tok, "',' or '}'")
