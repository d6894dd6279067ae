"""ValidationError rendering and context."""

from __future__ import annotations

import pytest

from tortie.errors import TortieError
from tortie.model.errors import ModelError, Problem, SelectorError, ValidationError

pytestmark = pytest.mark.unit


def test_hierarchy() -> None:
    assert issubclass(ModelError, TortieError)
    assert issubclass(ValidationError, ModelError)
    assert issubclass(SelectorError, ModelError)


def test_full_message() -> None:
    err = ValidationError(
        "33 is out of range: IPv4 block sizes are 20..32",
        field="spec.blockSize",
        source="pools.yaml",
        document=2,
        kind="IPPool",
        name="pool-b",
    )
    assert str(err) == (
        "pools.yaml: document 2 (IPPool pool-b): spec.blockSize: "
        "33 is out of range: IPv4 block sizes are 20..32"
    )
    assert (err.source, err.document, err.kind, err.name, err.field) == (
        "pools.yaml",
        2,
        "IPPool",
        "pool-b",
        "spec.blockSize",
    )


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, "msg"),
        ({"field": "spec.cidr"}, "spec.cidr: msg"),
        ({"kind": "IPPool", "name": "a"}, "IPPool a: msg"),
        ({"source": "<stdin>", "kind": "IPPool"}, "<stdin>: IPPool: msg"),
        ({"source": "f", "document": 1, "item": 3}, "f: document 1, item 3: msg"),
        (
            {"source": "f", "document": 2, "line": 4, "column": 7},
            "f: document 2, line 4, column 7: msg",
        ),
        ({"source": "f", "line": 4}, "f: line 4: msg"),
    ],
)
def test_partial_context(kwargs: dict[str, object], expected: str) -> None:
    assert str(ValidationError("msg", **kwargs)) == expected  # type: ignore[arg-type]


def test_with_context_fills_only_missing() -> None:
    err = ValidationError("msg", field="spec.cidr", kind="IPPool", name="a")
    ctx = err.with_context(source="x.yaml", document=3, kind="Other", name="b")
    assert str(ctx) == "x.yaml: document 3 (IPPool a): spec.cidr: msg"
    assert str(err) == "IPPool a: spec.cidr: msg"  # the original is unchanged


def test_more_problems_summarised_on_second_line() -> None:
    err = ValidationError(
        "first", field="spec.a", more=[Problem("spec.b", "x"), Problem(None, "y")]
    )
    lines = str(err).splitlines()
    assert lines == ["spec.a: first", "  (2 more problems: spec.b, (document))"]
    one = ValidationError("first", more=[Problem("spec.b", "x")])
    assert str(one).splitlines()[1] == "  (1 more problem: spec.b)"


def test_selector_error() -> None:
    err = SelectorError("a == ", 6, "expected a quoted value")
    assert err.column == 6
    assert str(err) == "invalid selector 'a == ': column 6: expected a quoted value"
