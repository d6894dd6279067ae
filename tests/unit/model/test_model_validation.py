"""Set-level checks: overlapping pools, immutable pool fields, duplicates, AS numbers."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tortie.model.errors import ValidationError
from tortie.model.resources import BGPPeer, IPPool
from tortie.model.validation import check_pools, check_unique, validate_as_number

pytestmark = pytest.mark.unit


def pool(name: str, cidr: str, **spec: Any) -> IPPool:
    return IPPool.from_document(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "IPPool",
            "metadata": {"name": name},
            "spec": {"cidr": cidr, **spec},
        }
    )


def test_disjoint_pools_are_fine() -> None:
    check_pools([pool("a", "10.0.0.0/16")], [pool("b", "10.1.0.0/16"), pool("c", "fd00::/48")])
    check_pools([], [])


def test_overlap_with_existing() -> None:
    with pytest.raises(ValidationError) as info:
        check_pools([pool("a", "10.0.0.0/8")], [pool("b", "10.1.0.0/16")])
    err = info.value
    assert (err.kind, err.name, err.field) == ("IPPool", "a", "spec.cidr")
    assert (
        err.message == "10.0.0.0/8 overlaps IPPool b (10.1.0.0/16); pools must not share addresses"
    )
    assert str(err).startswith("IPPool a: spec.cidr: ")


def test_overlap_within_new() -> None:
    with pytest.raises(ValidationError, match="overlaps IPPool b"):
        check_pools([pool("a", "10.0.0.0/16"), pool("b", "10.0.128.0/17")], [])
    with pytest.raises(ValidationError, match="overlaps"):
        check_pools([pool("a", "fd00::/48", blockSize=122), pool("b", "fd00::/64")], [])


def test_a_pool_never_overlaps_the_version_it_replaces() -> None:
    old = pool("a", "10.0.0.0/16")
    check_pools([old.with_spec(disabled=True, nat_outgoing=True)], [old])


def test_replacing_frees_nothing_but_other_pools_still_count() -> None:
    with pytest.raises(ValidationError, match="overlaps IPPool b"):
        check_pools(
            [pool("a", "10.0.0.0/16")], [pool("a", "10.0.0.0/16"), pool("b", "10.0.0.0/24")]
        )


def test_cidr_and_block_size_are_immutable() -> None:
    with pytest.raises(ValidationError) as info:
        check_pools([pool("a", "10.1.0.0/16")], [pool("a", "10.0.0.0/16")])
    assert info.value.field == "spec.cidr"
    assert "cannot change the CIDR of an existing pool (10.0.0.0/16 -> 10.1.0.0/16)" in str(
        info.value
    )
    with pytest.raises(ValidationError) as info:
        check_pools([pool("a", "10.0.0.0/16", blockSize=28)], [pool("a", "10.0.0.0/16")])
    assert info.value.field == "spec.blockSize"
    assert "(26 -> 28)" in info.value.message


def test_duplicate_names_in_input() -> None:
    with pytest.raises(ValidationError, match="IPPool 'a' is defined more than once"):
        check_pools([pool("a", "10.0.0.0/16"), pool("a", "10.1.0.0/16")], [])
    peer = BGPPeer.from_document(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "BGPPeer",
            "metadata": {"name": "a"},
            "spec": {"peerIP": "10.0.0.1", "asNumber": 1},
        }
    )
    check_unique([pool("a", "10.0.0.0/16"), peer])  # same name, different kinds: fine
    with pytest.raises(ValidationError, match="BGPPeer 'a' is defined more than once"):
        check_unique([peer, peer])


@pytest.mark.parametrize("n", [1, 64512, 4294967295])
def test_validate_as_number(n: int) -> None:
    assert validate_as_number(n) == n


@pytest.mark.parametrize(
    ("n", "message"),
    [
        (0, "0 is out of range: AS numbers are 1..4294967295"),
        (4294967296, "out of range"),
        (-5, "out of range"),
        (True, "expected an AS number"),
        ("64512", "expected an AS number"),
    ],
)
def test_validate_as_number_errors(n: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        validate_as_number(n)  # type: ignore[arg-type]


# -- the sweep agrees with the all-pairs definition -------------------------------------------
def _overlaps(a: IPPool, b: IPPool) -> bool:
    return a.ip_version == b.ip_version and a.network.overlaps(b.network)


@st.composite
def pool_sets(draw: st.DrawFn) -> tuple[list[IPPool], list[IPPool]]:
    """Small v4/v6 pools in a narrow range (so overlaps, duplicates and nesting are common)."""
    cidrs = st.one_of(
        st.builds(lambda o, p: f"10.0.{o}.0/{p}", st.integers(0, 7), st.just(24)),
        st.builds(lambda o, p: f"10.0.{o * 4}.0/{p}", st.integers(0, 1), st.just(22)),
        st.sampled_from(["10.0.0.0/16", "10.0.0.0/21", "10.1.0.0/16", "fd00::/120", "fd00::/64"]),
    )
    names = draw(st.lists(st.sampled_from("abcdefghij"), unique=True, max_size=10))
    split = draw(st.integers(0, len(names)))
    made = [
        pool(n, c, blockSize=122 if ":" in c else 26)
        for n, c in zip(
            names, draw(st.lists(cidrs, min_size=len(names), max_size=len(names))), strict=True
        )
    ]
    return made[:split], made[split:]


@given(pool_sets())
@settings(max_examples=400)
def test_overlap_sweep_matches_all_pairs(sets: tuple[list[IPPool], list[IPPool]]) -> None:
    new, existing = sets
    after = existing + new
    culprits = [p for p in new if any(o.name != p.name and _overlaps(p, o) for o in after)]
    if not culprits:
        check_pools(new, existing)
        return
    with pytest.raises(ValidationError) as info:
        check_pools(new, existing)
    err = info.value
    assert err.name == culprits[0].name  # the first new pool, in input order, that overlaps
    partner = err.message.split("overlaps IPPool ", 1)[1].split(" ", 1)[0]
    assert _overlaps(culprits[0], next(p for p in after if p.name == partner))
