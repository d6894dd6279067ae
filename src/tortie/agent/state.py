"""The agent's view of the cluster, fed by the datastore syncer.

Problem: the reconciler needs the current pools, nodes, block affinities, blocks and local
workloads, decoded and indexed, without asking the datastore on every pass. The syncer
delivers every key once and then each change; this module folds those events into typed
maps and answers the questions the route calculation asks.

Invariants:
- One thread (the agent loop) calls :meth:`ClusterState.apply`; nothing else mutates it.
- A key that cannot be decoded (corrupt or from a newer tortie) is dropped from the view and
  recorded in ``bad_keys`` with the reason; it never raises into the loop. A later valid value
  for the same key replaces it.
- ``dirty`` is set by every change that can alter routes; the loop clears it after computing.
  Changes to keys the view does not hold (IPAM handles, kinds it does not read) leave it as
  it is: every address assignment rewrites a handle, and that alone must not cost each node a
  reconcile pass.
- ``versions[table]`` counts the changes to each table (``pools``, ``nodes``, ``workloads``,
  ``bgp_configs``, ``bgp_peers``, ``ipam_configs``, ``affinities``, ``blocks``), so a consumer
  can cache what it derives from some tables and recompute only when one of them moved.

- What the datastore guard (:mod:`tortie.agent.trust`) needs is kept apart from the view:
  the syncer's status and its detail, ``syncs`` (in-syncs so far) with the revision of the last
  one (``listed_revision``: ``revision`` never goes down, a rolled-back store's listing does),
  and ``identity_events`` (changes to the etcd identity key, ``IDENTITY_KEY``). Other keys
  under ``/tortie/meta/`` (guards of other writers) are not resources: ignored.

Hazards: blocks are rewritten on every address assignment, so block updates are the hottest
event; decoding one is O(block size) and the loop coalesces bursts before recomputing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, ip_address

from tortie.datastore.api import IDENTITY_KEY
from tortie.datastore.syncer import (
    Deleted,
    InSync,
    StatusChanged,
    SyncEvent,
    SyncStatus,
    Update,
)
from tortie.errors import TortieError
from tortie.model import ipam as ipam_model
from tortie.model.errors import ModelError
from tortie.model.keys import IPAM_ROOT, RESOURCE_ROOT, parse_key
from tortie.model.resources import (
    BGPConfiguration,
    BGPPeer,
    IPAMConfiguration,
    IPPool,
    Node,
    Resource,
    WorkloadEndpoint,
)

log = logging.getLogger(__name__)

_BY_KIND: dict[str, type[Resource]] = {
    cls.KIND: cls
    for cls in (IPPool, Node, WorkloadEndpoint, BGPConfiguration, BGPPeer, IPAMConfiguration)
}
# Resource kind -> the ClusterState attribute (and ``versions`` key) that holds it.
_TABLES: dict[type[Resource], str] = {
    IPPool: "pools",
    Node: "nodes",
    WorkloadEndpoint: "workloads",
    BGPConfiguration: "bgp_configs",
    BGPPeer: "bgp_peers",
    IPAMConfiguration: "ipam_configs",
}


@dataclass
class ClusterState:
    local_node: str
    pools: dict[str, IPPool] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    workloads: dict[tuple[str, str], WorkloadEndpoint] = field(default_factory=dict)
    bgp_configs: dict[str, BGPConfiguration] = field(default_factory=dict)
    bgp_peers: dict[str, BGPPeer] = field(default_factory=dict)
    ipam_configs: dict[str, IPAMConfiguration] = field(default_factory=dict)
    affinities: dict[str, ipam_model.BlockAffinity] = field(default_factory=dict)
    blocks: dict[str, ipam_model.AllocationBlock] = field(default_factory=dict)
    bad_keys: dict[str, str] = field(default_factory=dict)
    in_sync: bool = False
    revision: int = 0
    dirty: bool = True
    versions: dict[str, int] = field(default_factory=dict)
    sync_status: SyncStatus = SyncStatus.WAIT_FOR_DATASTORE
    sync_detail: str = ""
    syncs: int = 0
    listed_revision: int = 0
    identity_events: int = 0

    def version_of(self, *tables: str) -> tuple[int, ...]:
        """A cache key for what is derived from ``tables`` (see ``versions``)."""
        return tuple(self.versions.get(t, 0) for t in tables)

    def _touch(self, table: str) -> None:
        self.versions[table] = self.versions.get(table, 0) + 1
        self.dirty = True

    # -- folding events -------------------------------------------------------------------
    def apply(self, event: SyncEvent) -> None:
        if isinstance(event, Update | Deleted) and event.key == IDENTITY_KEY:
            self.revision = max(self.revision, event.revision)
            self.identity_events += 1
        elif isinstance(event, Update):
            self.revision = max(self.revision, event.revision)
            self._update(event.key, event.value)
        elif isinstance(event, Deleted):
            self.revision = max(self.revision, event.revision)
            self._delete(event.key)
        elif isinstance(event, InSync):
            self.revision = max(self.revision, event.revision)
            if not self.in_sync:
                log.info("datastore in sync at revision %d", event.revision)
            self.in_sync = True
            self.dirty = True
            self.syncs += 1
            self.listed_revision = event.revision
        elif isinstance(event, StatusChanged):
            log.info("datastore sync status: %s %s", event.status.name, event.detail)
            self.sync_status = event.status
            self.sync_detail = event.detail

    def _update(self, key: str, value: str) -> None:
        try:
            table = self._decode_into(key, value)
        except (TortieError, ValueError, KeyError, TypeError, RecursionError) as err:
            # RecursionError: JSON nested thousands deep (json recurses per level), written by
            # something that is not tortie; a daemon never dies of datastore content.
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            if self.bad_keys.get(key) != reason:
                log.warning("ignoring unreadable datastore entry %s: %s", key, reason)
            self._delete(key)  # the old value is no longer the truth either
            self.bad_keys[key] = reason
            return
        self.bad_keys.pop(key, None)
        if table is not None:
            self._touch(table)

    def _decode_into(self, key: str, value: str) -> str | None:
        """Store the decoded value; returns the table it went into (None: not held)."""
        if key.startswith(RESOURCE_ROOT):
            rkey = parse_key(key)
            cls = _BY_KIND.get(rkey.kind)
            if cls is None:
                return None
            res = cls.from_document(json.loads(value))
            table = _TABLES[cls]
            self._table(table)[self._index(rkey.namespace, rkey.name)] = res
            return table
        if key.startswith(ipam_model.blocks_prefix()):
            self.blocks[key] = ipam_model.AllocationBlock.from_json(value, key)
            return "blocks"
        if key.startswith(ipam_model.affinities_prefix()):
            self.affinities[key] = ipam_model.BlockAffinity.from_kv(key, value)
            return "affinities"
        return None  # handles and anything else under IPAM_ROOT do not affect routes

    def _delete(self, key: str) -> None:
        self.bad_keys.pop(key, None)
        if key.startswith(RESOURCE_ROOT):
            try:
                rkey = parse_key(key)
            except ModelError:
                return
            cls = _BY_KIND.get(rkey.kind)
            if cls is not None:
                table = _TABLES[cls]
                if self._table(table).pop(self._index(rkey.namespace, rkey.name), None) is not None:
                    self._touch(table)
        elif key.startswith(IPAM_ROOT):
            if self.blocks.pop(key, None) is not None:
                self._touch("blocks")
            if self.affinities.pop(key, None) is not None:
                self._touch("affinities")

    @staticmethod
    def _index(namespace: str | None, name: str) -> str | tuple[str, str]:
        return (namespace, name) if namespace is not None else name

    def _table(self, name: str) -> dict[object, Resource]:
        table: dict[object, Resource] = getattr(self, name)
        return table

    # -- questions ------------------------------------------------------------------------
    def enabled_ipv4_pools(self) -> list[IPPool]:
        return [p for p in self.pools.values() if p.ip_version == 4]

    def node_ipv4(self, name: str) -> IPv4Interface | None:
        node = self.nodes.get(name)
        if node is None or node.spec.bgp is None or not node.spec.bgp.ipv4_address:
            return None
        try:
            return IPv4Interface(node.spec.bgp.ipv4_address)
        except ValueError:
            return None

    def node_vtep(self, name: str) -> tuple[IPv4Address, str | None] | None:
        """A node's VXLAN tunnel address and VTEP MAC, if it published them."""
        node = self.nodes.get(name)
        if node is None or not node.spec.ipv4_vxlan_tunnel_addr:
            return None
        try:
            addr = IPv4Address(node.spec.ipv4_vxlan_tunnel_addr.split("/")[0])
        except ValueError:
            return None
        return addr, node.spec.vxlan_tunnel_mac_addr

    def confirmed_affinities(self) -> Iterator[tuple[str, IPv4Network]]:
        for aff in self.affinities.values():
            if aff.state is ipam_model.AffinityState.CONFIRMED and aff.cidr.version == 4:
                yield aff.node, IPv4Network(aff.cidr)

    def borrowed(self) -> Iterator[tuple[IPv4Address, str]]:
        """Addresses allocated to a node other than their block's affine node."""
        for block in self.blocks.values():
            if block.cidr.version != 4:
                continue
            owner = block.node
            for ordinal, attr in block.allocated():
                holder = attr.attrs.get(ipam_model.ATTR_NODE)
                if holder and holder != owner:
                    addr = ip_address(block.address(ordinal))
                    assert isinstance(addr, IPv4Address)
                    yield addr, holder

    def local_workloads(self) -> Iterator[WorkloadEndpoint]:
        for wep in self.workloads.values():
            if wep.spec.node == self.local_node:
                yield wep
