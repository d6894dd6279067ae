"""json_too_deep: the nesting of JSON text, found without parsing (issue 17, item 11)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tortie.model.nesting import MAX_DEPTH, NestingError, json_too_deep

pytestmark = pytest.mark.unit

# Strings full of what the scan must not be fooled by: brackets, quotes, backslashes.
TRICKY = st.text(alphabet='[]{}"\\ax\u00e9\U0001f600\n', max_size=8)
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), TRICKY),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(TRICKY, inner, max_size=3)
    ),
    max_leaves=12,
)


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


@given(JSON_VALUES, st.integers(0, 6), st.booleans())
@settings(max_examples=500)
def test_agrees_with_the_parsed_depth(value: Any, limit: int, ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    assert json_too_deep(text, limit) == (depth(value) > limit)
    assert json_too_deep(text.encode(), limit) == (depth(value) > limit)


@given(st.binary(max_size=300), st.integers(0, 5))
def test_any_bytes_get_an_answer(data: bytes, limit: int) -> None:
    assert json_too_deep(data, limit) in (True, False)


@pytest.mark.parametrize(
    ("text", "deep"),
    [
        ("[" * 101 + "]" * 101, True),
        ("[" * 100 + "]" * 100, False),
        ('{"a":' * 101 + "1" + "}" * 101, True),
        ('["' + "[" * 500 + '"]', False),  # brackets in a string
        ('["\\"' + "[" * 500 + '"]', False),  # an escaped quote does not end the string
        ('["\\\\"' + ",[" * 101 + "]" * 102, True),  # an escaped backslash does not escape
        ("[" * 10**6, True),  # long, stops early
    ],
)
def test_edges(text: str, deep: bool) -> None:
    assert json_too_deep(text) is deep
    if not deep:
        assert depth(json.loads(text)) <= MAX_DEPTH


def test_the_error_names_the_limit() -> None:
    err = NestingError(100)
    assert isinstance(err, ValueError)
    assert "more than 100 levels deep (the limit is 100)" in str(err)
