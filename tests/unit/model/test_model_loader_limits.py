"""The loader's limits: nesting, input size, annotations, duplicate keys at scale (issue 17).

Before: YAML nested ~500 deep or JSON ~990 deep was a RecursionError (3,000 lines from
``tortie apply``); a 32k-key label map took 10 s (duplicates searched in a list). Whatever the
text, only :class:`ValidationError` comes out, naming the file and the limit.
"""

from __future__ import annotations

import contextlib
import json

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tortie.model import loader
from tortie.model.errors import ValidationError
from tortie.model.loader import MAX_DEPTH, MAX_INPUT_BYTES, load_documents
from tortie.model.resources import MAX_ANNOTATIONS_BYTES, Node

pytestmark = pytest.mark.unit

NESTING = f"nested more than {MAX_DEPTH} levels deep (the limit is {MAX_DEPTH})"
NESTING_RE = NESTING.replace("(", r"\(").replace(")", r"\)")


def flow(depth: int) -> str:
    return "[" * depth + "]" * depth


def block_maps(depth: int) -> str:
    return "".join("  " * i + "a:\n" for i in range(depth)) + "  " * depth + "b: 1\n"


def block_seqs(depth: int) -> str:
    return "- " * depth + "x\n"  # compact nested sequences: all on one line


def alias_chain(depth: int) -> str:
    lines = ["a0: &a0 [1]"] + [f"a{i}: &a{i} [*a{i - 1}]" for i in range(1, depth)]
    return "\n".join(lines) + "\n"


def json_objects(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


DEEP = {
    "flow": flow,
    "block mappings": block_maps,
    "block sequences": block_seqs,
    "aliases": alias_chain,
    "JSON arrays": flow,
    "JSON objects": json_objects,
}


@pytest.fixture(params=["libyaml", "python"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both parsers: libyaml (limits nesting itself), PyYAML's own (checked from events)."""
    if request.param == "python":
        monkeypatch.setattr(loader, "_Loader", loader._PyLoader)
        monkeypatch.setattr(loader, "_parser_limits_nesting", lambda: False)
    elif not yaml.__with_libyaml__:
        pytest.skip("PyYAML without libyaml")
    return str(request.param)


@pytest.mark.parametrize("shape", sorted(DEEP))
@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1200, 3000])
def test_deep_documents_are_refused_with_the_limit(parser: str, shape: str, depth: int) -> None:
    with pytest.raises(ValidationError) as info:
        load_documents(DEEP[shape](depth), "deep.yaml")
    err = info.value
    assert NESTING in str(err)
    assert str(err).startswith("deep.yaml: ")
    assert len(str(err).splitlines()) == 1


def test_a_document_that_contains_itself_is_refused(parser: str) -> None:
    for text in ("&a [*a]", "a: &x {b: *x}", "- &s [1, *s]"):
        with pytest.raises(ValidationError, match=NESTING_RE):
            load_documents(text, "loop.yaml")


@pytest.mark.parametrize("shape", ["flow", "block mappings", "aliases", "JSON objects"])
def test_documents_at_the_limit_are_parsed(parser: str, shape: str) -> None:
    with pytest.raises(ValidationError) as info:  # parsed, then not a resource
        load_documents(DEEP[shape](MAX_DEPTH - 1), "ok.yaml")
    assert "nested" not in str(info.value)


def test_wide_alias_bombs_stay_cheap(parser: str) -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    lines += [f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]" for p, c in
              zip("abcdefgh", "bcdefghi", strict=True)]  # fmt: skip
    with pytest.raises(ValidationError, match=r"expected a mapping with apiVersion|kind"):
        load_documents("\n".join(lines) + "\n", "bomb.yaml")


def test_input_over_the_size_limit_is_refused() -> None:
    with pytest.raises(ValidationError, match=f"the limit is {MAX_INPUT_BYTES} .16 MiB."):
        load_documents("#" * (MAX_INPUT_BYTES + 1), "big.yaml")
    with pytest.raises(ValidationError, match="16 MiB"):  # measured in UTF-8 bytes
        load_documents("# " + "é" * (MAX_INPUT_BYTES // 2), "big.yaml")


def node_doc(labels: str = "", annotations: str = "") -> str:
    return (
        "apiVersion: projectcalico.org/v3\nkind: Node\nmetadata:\n  name: n1\n"
        + (f"  labels:\n{labels}" if labels else "")
        + (f"  annotations:\n{annotations}" if annotations else "")
    )


def test_annotations_over_256_kib_are_refused() -> None:
    value = "x" * (MAX_ANNOTATIONS_BYTES // 2)
    ok = node_doc(annotations=f"    a: {value[:-10]}\n    b: {value}\n")
    (node,) = load_documents(ok, "ok.yaml")
    assert isinstance(node, Node)
    with pytest.raises(ValidationError) as info:
        load_documents(node_doc(annotations=f"    a: {value}\n    b: {value}\n"), "big.yaml")
    assert info.value.field == "metadata.annotations"
    assert f"the limit is {MAX_ANNOTATIONS_BYTES} (256 KiB" in str(info.value)


def test_duplicate_keys_in_a_huge_map_are_found() -> None:
    labels = "".join(f"    k{n}: v\n" for n in range(20_000)) + "    k123: w\n"
    with pytest.raises(ValidationError) as info:
        load_documents(node_doc(labels), "labels.yaml")
    assert "found duplicate key 'k123'" in str(info.value)
    assert info.value.line == 20_006
    (node,) = load_documents(node_doc(labels.replace("k123: w", "k20000: w")), "labels.yaml")
    assert len(node.metadata.labels) == 20_001


def test_merged_keys_may_be_overridden_but_written_ones_not(parser: str) -> None:
    base = "base: &b {x: 1, y: 2}\n"
    data = yaml.load(base + "m: {<<: *b, x: 3}\n", Loader=loader._Loader)
    assert data["m"] == {"x": 3, "y": 2}
    with pytest.raises(ValidationError, match="duplicate key 'x'"):
        load_documents(base + "m: {<<: *b, x: 3, x: 4}\n", "m.yaml")


# -- anything at all ----------------------------------------------------------------------------
@st.composite
def nested_text(draw: st.DrawFn) -> str:
    """YAML/JSON-ish text nested to random depths, with anchors, aliases and junk."""
    depth = draw(st.sampled_from([1, 5, 99, 100, 101, 150, 700, 2500]))
    pieces = draw(
        st.lists(
            st.sampled_from(["[", "{a: ", '{"a":', "- ", "a:\n  ", "&x ", "*x ", "? ", "!!map "]),
            min_size=depth,
            max_size=depth,
        )
    )
    tail = draw(st.sampled_from(["1", "", "]", "}", "*x", "'[", '"{"', "\t"]))
    closers = "".join("]" if p == "[" else "}" if "{" in p else "" for p in reversed(pieces))
    return "".join(pieces) + tail + closers * draw(st.integers(0, 1))


def only_validation_errors(text: str) -> None:
    with contextlib.suppress(ValidationError):
        load_documents(text, "fuzz.yaml")


@given(nested_text())
@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow], deadline=None)
def test_any_nesting_fails_only_with_validation_error(text: str) -> None:
    only_validation_errors(text)


@given(st.binary(max_size=600))
@settings(max_examples=300, deadline=None)
def test_any_bytes_fail_only_with_validation_error(data: bytes) -> None:
    only_validation_errors(data.decode("utf-8", "replace"))
    only_validation_errors(data.decode("latin-1"))


@given(st.recursive(st.none() | st.integers() | st.text(max_size=5), st.lists, max_leaves=20))
@settings(max_examples=100, deadline=None)
def test_any_json_structure_fails_only_with_validation_error(value: object) -> None:
    only_validation_errors(json.dumps(value))
    only_validation_errors(json.dumps({"apiVersion": "projectcalico.org/v3", "kind": value}))
