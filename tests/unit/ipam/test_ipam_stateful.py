"""Hypothesis stateful test of IPAM over the in-memory datastore.

Random sequences of assign (automatic and specific), release (by handle, by address, stale,
whole node), empty-block release and gc, against a model of who holds what. After every step:
no address has two owners, the store holds exactly the model's addresses, releases returned
exactly what was assigned, and the affinity invariants hold.
"""

from __future__ import annotations

import ipaddress
import random

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from ipam_helpers import Cluster

from tortie.datastore.memory import MemoryDatastore
from tortie.ipam.client import IPAM
from tortie.ipam.clock import ManualClock
from tortie.ipam.errors import AddressInUseError, ExhaustedError
from tortie.ipam.release import ReleaseRequest
from tortie.model.ipam import AffinityState, IPAddress, host_affinity

pytestmark = pytest.mark.unit

POOL = ipaddress.ip_network("10.0.0.0/27")  # 8 blocks of 4: exhaustion comes quickly
NODES = ("n0", "n1", "n2")
MAX_BLOCKS = 2


class IPAMMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.store = MemoryDatastore()
        self.clock = ManualClock()
        self.ipam = IPAM(self.store, self.clock, rng=random.Random(0))
        cluster = Cluster(self.store)
        cluster.pool("p", str(POOL), block_size=30)
        for n in NODES:
            cluster.node(n)
        self.held: dict[str, set[IPAddress]] = {}
        self.node_of: dict[str, str] = {}
        self.specific: set[str] = set()  # handles that asked for a specific address
        self.strict = False
        self.serial = 0

    @initialize(strict=st.booleans())
    def configure(self, strict: bool) -> None:
        self.strict = strict
        self.ipam.configure(strict_affinity=strict, max_blocks_per_host=MAX_BLOCKS)

    def _new_handle(self) -> str:
        self.serial += 1
        return f"h{self.serial}"

    def _all_held(self) -> set[IPAddress]:
        return set().union(*self.held.values()) if self.held else set()

    # -- assign ---------------------------------------------------------------------------
    @rule(node=st.sampled_from(NODES), count=st.integers(1, 3))
    def assign(self, node: str, count: int) -> None:
        handle = self._new_handle()
        try:
            got = self.ipam.assign(node=node, handle=handle, count=count)
        except ExhaustedError:
            assert self.ipam.addresses_for_handle(handle) == []  # all or nothing
            return
        assert len(got) == count == len(set(got))
        assert not set(got) & self._all_held(), "an address was handed out twice"
        self.held[handle] = set(got)
        self.node_of[handle] = node

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data(), count=st.integers(1, 2))
    def assign_more_to_a_handle(self, data: st.DataObject, count: int) -> None:
        handle = data.draw(st.sampled_from(sorted(self.held)))
        try:
            got = self.ipam.assign(node=self.node_of[handle], handle=handle, count=count)
        except ExhaustedError:
            assert set(self.ipam.addresses_for_handle(handle)) == self.held[handle]
            return
        assert not set(got) & self._all_held()
        self.held[handle] |= set(got)

    @rule(node=st.sampled_from(NODES), ordinal=st.integers(0, POOL.num_addresses - 1))
    def assign_specific(self, node: str, ordinal: int) -> None:
        ip = POOL[ordinal]
        handle = self._new_handle()
        if ip in self._all_held():
            with pytest.raises(AddressInUseError):
                self.ipam.assign(node=node, handle=handle, ip=ip)
            return
        assert self.ipam.assign(node=node, handle=handle, ip=ip) == [ip]
        self.held[handle] = {ip}
        self.node_of[handle] = node
        self.specific.add(handle)

    # -- release --------------------------------------------------------------------------
    @rule(data=st.data(), unknown=st.booleans())
    def release_handle(self, data: st.DataObject, unknown: bool) -> None:
        if unknown or not self.held:
            assert self.ipam.release_by_handle(self._new_handle()) == []
            return
        handle = data.draw(st.sampled_from(sorted(self.held)))
        released = self.ipam.release_by_handle(handle)
        assert len(released) == len(set(released))
        assert set(released) == self.held.pop(handle)
        assert self.ipam.release_by_handle(handle) == []  # idempotent

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data())
    def release_one_ip(self, data: st.DataObject) -> None:
        handle = data.draw(st.sampled_from(sorted(self.held)))
        ip = data.draw(st.sampled_from(sorted(self.held[handle])))
        assert self.ipam.release_ips([ip]) == [ip]
        self.held[handle].discard(ip)
        if not self.held[handle]:
            del self.held[handle]

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data(), wrong_handle=st.booleans())
    def stale_release_frees_nothing(self, data: st.DataObject, wrong_handle: bool) -> None:
        handle = data.draw(st.sampled_from(sorted(self.held)))
        ip = data.draw(st.sampled_from(sorted(self.held[handle])))
        info = self.ipam.address_info(ip)
        assert info is not None
        assert info.sequence is not None
        request = (
            ReleaseRequest(ip, handle="someone-else", sequence=info.sequence)
            if wrong_handle
            else ReleaseRequest(ip, handle=handle, sequence=info.sequence - 1)
        )
        assert self.ipam.release_ips([request]) == []

    @rule(node=st.sampled_from(NODES))
    def release_node(self, node: str) -> None:
        gone = self.ipam.release_node(node)
        expected = set().union(*(ips for h, ips in self.held.items() if self.node_of[h] == node))
        assert set(gone.addresses) == expected
        assert self.ipam.blocks_for_node(node) == []
        for h in [h for h in self.held if self.node_of[h] == node]:
            del self.held[h]

    @rule(seconds=st.sampled_from([0, 30, 1000]))
    def time_passes_and_empty_blocks_go(self, seconds: int) -> None:
        self.clock.advance(seconds)
        for cidr in self.ipam.release_empty_blocks(grace=600):
            assert not any(ip in cidr for ip in self._all_held())

    @rule()
    def gc_touches_no_live_address(self) -> None:
        self.clock.advance(3600)
        result = self.ipam.gc(grace=900)
        assert result.released == []
        assert result.handles_fixed == []

    # -- invariants -----------------------------------------------------------------------
    @invariant()
    def store_matches_model_and_no_address_has_two_owners(self) -> None:
        seen: dict[IPAddress, str] = {}
        for blk in self.ipam.store.blocks():
            b = blk.value
            for o, attr in b.allocated():
                ip = b.address(o)
                assert ip not in seen, f"{ip} allocated twice"
                assert attr.handle_id is not None
                seen[ip] = attr.handle_id
        expected = {ip: h for h, ips in self.held.items() for ip in ips}
        assert seen == expected
        for h, ips in self.held.items():
            assert set(self.ipam.addresses_for_handle(h)) == ips

    @invariant()
    def affinity_invariants(self) -> None:
        blocks = {b.value.cidr: b.value for b in self.ipam.store.blocks()}
        affinities = [a.value for a in self.ipam.store.affinities()]
        confirmed = {(a.node, a.cidr) for a in affinities if a.state is AffinityState.CONFIRMED}
        # Single-threaded: every claim completed, none is left pending.
        assert all(a.state is AffinityState.CONFIRMED for a in affinities)
        for node, cidr in confirmed:
            assert blocks[cidr].affinity == host_affinity(node)
        for cidr, b in blocks.items():
            if b.node is not None:
                assert (b.node, cidr) in confirmed
        per_node: dict[str, int] = {}
        for node, _ in confirmed:
            per_node[node] = per_node.get(node, 0) + 1
        assert all(n <= MAX_BLOCKS for n in per_node.values()), per_node
        if self.strict:
            # No borrowing: every automatic allocation sits in its own node's block.
            for h, ips in self.held.items():
                if h in self.specific:
                    continue
                for ip in ips:
                    owner = next(b for c, b in blocks.items() if ip in c)
                    assert owner.affinity == host_affinity(self.node_of[h])

    @invariant()
    def check_is_clean(self) -> None:
        assert self.ipam.check().problems == ()


TestIPAMStateful = IPAMMachine.TestCase
TestIPAMStateful.settings = settings(
    max_examples=30,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
