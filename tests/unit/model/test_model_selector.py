"""Calico selector parsing, evaluation and canonical printing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tortie.model.errors import ModelError
from tortie.model.selector import (
    All,
    And,
    Compare,
    Expr,
    Has,
    In,
    Not,
    Or,
    Selector,
    SelectorError,
    and_,
    or_,
)

pytestmark = pytest.mark.unit

LABELS = {"role": "worker", "rack": "r1", "zone": "eu-1a", "empty": ""}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", True),
        ("   ", True),
        ("all()", True),
        ("!all()", False),
        ("has(role)", True),
        ("has( role )", True),
        ("!has(role)", False),
        ("has(missing)", False),
        ("role == 'worker'", True),
        ('role == "worker"', True),
        ("role=='worker'", True),
        ("role == 'master'", False),
        ("role != 'master'", True),
        ("missing != 'x'", True),  # absent keys match !=
        ("missing == ''", False),
        ("empty == ''", True),
        ("rack in {'r1', 'r2'}", True),
        ("rack in {}", False),
        ("rack not in {'r1'}", False),
        ("missing not in {'r1'}", True),  # absent keys match "not in"
        ("missing in {'r1'}", False),
        ("zone contains '-1'", True),
        ("zone starts with 'eu'", True),
        ("zone ends with '1a'", True),
        ("zone ends with 'eu'", False),
        ("missing contains ''", False),
        ("role == 'worker' && rack == 'r2'", False),
        ("role == 'worker' || rack == 'r2'", True),
        ("!(role == 'worker' && rack == 'r2')", True),
        ("!role == 'worker'", False),  # ! applies to the comparison
        ("has(role) && (rack == 'r2' || zone == 'eu-1a')", True),
        ("has(a) || has(b) && has(role)", False),  # && binds tighter
        ("has(role) || has(b) && has(c)", True),
        ("!!has(role)", True),
        ("kubernetes.io/hostname != 'x'", True),
    ],
)
def test_evaluation(text: str, expected: bool) -> None:
    assert Selector.parse(text).matches(LABELS) is expected


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("", "all()"),
        ("all()", "all()"),
        ("has(a)", "has(a)"),
        ("a=='b'", 'a == "b"'),
        ("a == 'say \"hi\"'", "a == 'say \"hi\"'"),
        ("a in {'y','x','y'}", 'a in {"x", "y"}'),
        ("a not in {}", "a not in {}"),
        ("(has(a) && has(b)) && has(c)", "has(a) && has(b) && has(c)"),
        ("has(a) && (has(b) && has(c))", "has(a) && has(b) && has(c)"),
        ("(has(a) || has(b)) && has(c)", "(has(a) || has(b)) && has(c)"),
        ("has(a) || (has(b) && has(c))", "has(a) || has(b) && has(c)"),
        ("!(a == 'b')", '!(a == "b")'),
        ("!a == 'b'", '!(a == "b")'),
        ("!(has(a) || has(b))", "!(has(a) || has(b))"),
        ("! ! has(a)", "!!has(a)"),
        ("a starts with 'x'", 'a starts with "x"'),
        ("((has(a)))", "has(a)"),
    ],
)
def test_canonical_text(text: str, canonical: str) -> None:
    sel = Selector.parse(text)
    assert str(sel) == canonical
    assert Selector.parse(canonical) == sel


def test_keywords_are_labels_in_label_position() -> None:
    assert Selector.parse("in == 'x'").matches({"in": "x"})
    assert Selector.parse("has == 'x'").matches({"has": "x"})
    assert Selector.parse("all != 'x'").matches({})
    assert Selector.parse("not not in {'a'}").matches({"not": "b"})


def test_equality_and_helpers() -> None:
    assert Selector.parse("") == Selector.parse("all()") == Selector.match_all()
    assert Selector.parse("").is_all
    assert not Selector.parse("has(a)").is_all
    assert Selector.parse("a in {'x','y'}") == Selector.parse('a in {"y", "x"}')
    assert issubclass(SelectorError, ModelError)


@pytest.mark.parametrize(
    ("text", "column", "reason"),
    [
        ("a ==", 5, "expected a quoted value after '==', found end of selector"),
        ("a == b", 6, "expected a quoted value after '==', found 'b'"),
        ("a = 'b'", 3, "unexpected '='; did you mean '=='?"),
        ("has(a) & has(b)", 8, "unexpected '&'; did you mean '&&'?"),
        ("has(a) | has(b)", 8, "did you mean '||'?"),
        ("has(a", 6, "expected ')' after the label name, found end of selector"),
        ("has()", 5, "expected a label name inside has(), found ')'"),
        ("(has(a)", 8, "expected ')', found end of selector"),
        ("has(a))", 7, "expected '&&', '||' or end of selector, found ')'"),
        ("has(a) has(b)", 8, "expected '&&', '||' or end of selector, found 'has'"),
        ("a == 'b", 6, "unterminated string starting with '"),
        ("a", 2, "expected an operator after label 'a'"),
        ("a not {'x'}", 7, "expected 'in' after 'not', found '{'"),
        ("a in 'x'", 6, "expected '{' to start a set of values, found string \"x\""),
        ("a in {'x' 'y'}", 11, "expected ',' or '}', found string \"y\""),
        ("a in {'x',}", 11, "expected a quoted value in the set, found '}'"),
        ("a starts 'x'", 10, "expected 'with' after 'starts'"),
        ("all(", 5, "expected ')' after 'all('"),
        ("&&", 1, "expected a label, 'has(', 'all()', '!' or '(', found '&&'"),
        ("a == 'x' #", 10, "unexpected character '#'"),
        ("!", 2, "found end of selector"),
        ("'x' == a", 1, "expected a label"),
    ],
)
def test_errors_name_the_column(text: str, column: int, reason: str) -> None:
    with pytest.raises(SelectorError) as info:
        Selector.parse(text)
    assert info.value.column == column
    assert reason in info.value.reason
    assert info.value.text == text


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    with pytest.raises(SelectorError, match="nested too deeply"):
        Selector.parse("(" * 500 + "has(a)" + ")" * 500)
    with pytest.raises(SelectorError, match="nested too deeply"):
        Selector.parse("!" * 500 + "has(a)")
    assert Selector.parse("(" * 30 + "has(a)" + ")" * 30) == Selector.parse("has(a)")


def test_values_with_both_quotes_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="both"):
        Compare("a", "==", 'it\'s "x"')
    with pytest.raises(ValueError, match="both"):
        In("a", ("'\"",))


# --------------------------------------------------------------------------------------------
# Property tests

KEYS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_./-", min_size=1, max_size=8)
SMALL_KEYS = st.sampled_from(["a", "b", "c", "in", "not", "has", "all", "x.io/y"])
VALUES = st.text(max_size=6).filter(lambda v: not ('"' in v and "'" in v))
SMALL_VALUES = st.sampled_from(["", "1", "x", "xy", "it's", 'say "hi"'])


def exprs(keys: st.SearchStrategy[str], values: st.SearchStrategy[str]) -> st.SearchStrategy[Expr]:
    leaves: st.SearchStrategy[Expr] = st.one_of(
        st.just(All()),
        st.builds(Has, keys),
        st.builds(
            Compare,
            keys,
            st.sampled_from(["==", "!=", "contains", "starts with", "ends with"]),
            values,
        ),
        st.builds(In, keys, st.lists(values, max_size=3).map(tuple), st.booleans()),
    )
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.builds(Not, children),
            st.lists(children, min_size=2, max_size=3).map(and_),
            st.lists(children, min_size=2, max_size=3).map(or_),
        ),
        max_leaves=12,
    )


@given(exprs(KEYS, VALUES))
@settings(max_examples=400)
def test_canonical_text_reparses_to_an_equal_selector(expr: Expr) -> None:
    sel = Selector(expr)
    again = Selector.parse(str(sel))
    assert again == sel
    assert str(again) == str(sel)


@given(
    exprs(SMALL_KEYS, SMALL_VALUES),
    st.dictionaries(SMALL_KEYS, SMALL_VALUES, max_size=5),
)
@settings(max_examples=400)
def test_round_trip_preserves_meaning(expr: Expr, labels: dict[str, str]) -> None:
    sel = Selector(expr)
    assert Selector.parse(str(sel)).matches(labels) == sel.matches(labels)


@given(st.text(alphabet="ab()!&|=' {},has", max_size=30))
@settings(max_examples=400)
def test_garbage_only_raises_selector_error(text: str) -> None:
    try:
        sel = Selector.parse(text)
    except SelectorError as exc:
        assert 1 <= exc.column <= len(text) + 1
    else:
        assert Selector.parse(str(sel)) == sel


def test_flattening_helpers() -> None:
    a, b, c = Has("a"), Has("b"), Has("c")
    assert and_([a]) == a
    assert and_([a, and_([b, c])]) == And((a, b, c))
    assert or_([or_([a, b]), c]) == Or((a, b, c))
