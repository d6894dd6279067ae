"""Fixtures for the IPAM unit tests: an in-memory store, a manual clock, resource helpers."""

from __future__ import annotations

import random

import pytest
from ipam_helpers import Cluster, HookedStore

from tortie.datastore.memory import MemoryDatastore
from tortie.ipam.client import IPAM
from tortie.ipam.clock import ManualClock


@pytest.fixture
def store() -> MemoryDatastore:
    return MemoryDatastore()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def cluster(store: MemoryDatastore) -> Cluster:
    return Cluster(store)


@pytest.fixture
def ipam(store: MemoryDatastore, clock: ManualClock) -> IPAM:
    return IPAM(store, clock, rng=random.Random(7))


@pytest.fixture
def hooked() -> HookedStore:
    return HookedStore()
