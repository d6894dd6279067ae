"""LearnedTable: events keep an observer equal to the table; graceful-restart staleness."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from hypothesis import given, settings
from hypothesis import strategies as st

from tortie.bgp.routes import LearnedTable, RouteEvent
from tortie.bgp.types import LearnedRoute, RouteAdded, RouteRemoved

P1, P2 = IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2")
N1, N2 = IPv4Network("10.244.1.0/26"), IPv4Network("10.244.2.0/26")
H1, H2 = IPv4Address("10.0.0.1"), IPv4Address("10.0.0.9")


def apply(view: set[LearnedRoute], events: list[RouteEvent]) -> None:
    for event in events:
        if isinstance(event, RouteAdded):
            assert event.route not in view
            view.add(event.route)
        else:
            assert event.route in view
            view.remove(event.route)


def test_set_is_idempotent_and_next_hop_change_adds_before_removing() -> None:
    t = LearnedTable()
    assert t.set(P1, N1, H1) == [RouteAdded(LearnedRoute(N1, H1, P1))]
    assert t.set(P1, N1, H1) == []
    assert t.set(P1, N1, H2) == [
        RouteAdded(LearnedRoute(N1, H2, P1)),
        RouteRemoved(LearnedRoute(N1, H1, P1)),
    ]
    assert t.routes() == {LearnedRoute(N1, H2, P1)}


def test_same_prefix_from_two_peers_is_two_routes() -> None:
    t = LearnedTable()
    t.set(P1, N1, H1)
    t.set(P2, N1, H1)
    assert len(t) == 2
    assert t.remove(P2, N1) == [RouteRemoved(LearnedRoute(N1, H1, P2))]
    assert t.remove(P2, N1) == []  # unknown withdrawal: no event


def test_drop_peer_and_keep_only() -> None:
    t = LearnedTable()
    t.set(P1, N1, H1)
    t.set(P1, N2, H1)
    t.set(P2, N2, H2)
    assert len(t.drop_peer(P1)) == 2 and t.peers() == {P2}
    assert t.keep_only_peers([P1]) == [RouteRemoved(LearnedRoute(N2, H2, P2))]
    assert len(t) == 0


def test_stale_routes_survive_until_sweep_or_deadline() -> None:
    t = LearnedTable()
    t.set(P1, N1, H1)
    t.set(P1, N2, H1)
    t.mark_stale(100.0, P1)
    assert t.stale_count(P1) == 2 and t.next_deadline() == 100.0
    assert t.set(P1, N1, H1) == []  # resent: fresh again, no event
    assert t.stale_count() == 1
    assert t.expire(99.0) == []
    assert t.sweep_stale(P1) == [RouteRemoved(LearnedRoute(N2, H1, P1))]
    assert t.routes() == {LearnedRoute(N1, H1, P1)}


def test_stale_deadline_expires_and_never_extends() -> None:
    t = LearnedTable()
    t.set(P1, N1, H1)
    t.mark_stale(50.0)
    t.mark_stale(80.0)  # a flap during the restart does not buy more time
    assert t.next_deadline() == 50.0
    assert t.expire(50.0) == [RouteRemoved(LearnedRoute(N1, H1, P1))]
    assert t.next_deadline() is None


def test_replace_peer_keeps_stale_routes_for_the_sweep() -> None:
    t = LearnedTable()
    t.set(P1, N1, H1)
    t.set(P1, N2, H1)
    assert t.replace_peer(P1, [(N1, H1)]) == [RouteRemoved(LearnedRoute(N2, H1, P1))]
    t.set(P1, N2, H1)
    t.mark_stale(10.0)
    assert t.replace_peer(P1, [(N1, H1)]) == []  # N2 is stale: it waits
    assert t.sweep_stale(P1) == [RouteRemoved(LearnedRoute(N2, H1, P1))]


PEERS = st.sampled_from([P1, P2])
PREFIXES = st.sampled_from([N1, N2, IPv4Network("10.244.3.0/26")])
HOPS = st.sampled_from([H1, H2])
OPS = st.one_of(
    st.tuples(st.just("set"), PEERS, PREFIXES, HOPS),
    st.tuples(st.just("remove"), PEERS, PREFIXES),
    st.tuples(st.just("drop"), PEERS),
    st.tuples(st.just("stale"), st.one_of(st.none(), PEERS), st.floats(0, 100)),
    st.tuples(st.just("sweep"), PEERS),
    st.tuples(st.just("expire"), st.floats(0, 100)),
    st.tuples(st.just("keep"), st.lists(PEERS, max_size=2)),
    st.tuples(st.just("replace"), PEERS, st.lists(st.tuples(PREFIXES, HOPS), max_size=3)),
)


@given(st.lists(OPS, max_size=40))
@settings(max_examples=300, deadline=None)
def test_events_always_reproduce_the_table(ops: list[tuple[object, ...]]) -> None:
    t = LearnedTable()
    view: set[LearnedRoute] = set()
    for op in ops:
        kind, *args = op
        if kind == "set":
            events = t.set(*args)  # type: ignore[arg-type]
        elif kind == "remove":
            events = t.remove(*args)  # type: ignore[arg-type]
        elif kind == "drop":
            events = t.drop_peer(*args)  # type: ignore[arg-type]
        elif kind == "stale":
            t.mark_stale(args[1], args[0])  # type: ignore[arg-type]
            events = []
        elif kind == "sweep":
            events = t.sweep_stale(*args)  # type: ignore[arg-type]
        elif kind == "expire":
            events = t.expire(*args)  # type: ignore[arg-type]
        elif kind == "keep":
            events = t.keep_only_peers(*args)  # type: ignore[arg-type]
        else:
            events = t.replace_peer(*args)  # type: ignore[arg-type]
        apply(view, events)
        assert view == t.routes()
        prefixes_per_peer = [(r.peer, r.prefix) for r in view]
        assert len(prefixes_per_peer) == len(set(prefixes_per_peer))
