"""Faults of the datastore under running agents (issue 17, item 1 and the etcd outage):
nothing committed is lost, no address is handed out twice, the dataplane fails static.

- SQLite: the lab's ``datastore.db`` moved aside for a moment (an operator's ``mv``, a backup
  script), then back. Meanwhile a read command (``tortie get``, ``ipam check``) fails cleanly
  and creates nothing: no new ``datastore.db``, the journal (``-wal``, ``-shm``) untouched; a
  CNI ADD fails with code 11 (try again later) and wires nothing; pods keep talking. Moved
  back, the runtime's retry of the ADD succeeds with a fresh address; what was committed just
  before the move (a pool) is there, the pods keep their addresses and routes, ``ipam check``
  is clean. Before issue 17 the read created an empty store over the live one and deleted its
  WAL, and the ADD succeeded into the deleted WAL.
- etcd: the lab's etcd stopped under a continuous ping, then started again (same data). Pods
  keep talking throughout (fail static); a read fails cleanly, a CNI ADD fails with code 11;
  etcd back, the agents are in sync again, the retried ADD gets a fresh, unique address, and
  ``ipam check`` is clean.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from faults_e2e import FaultLab, Pinger, cni_code, ms, report, wait_for
from lab_e2e import LabCli, lab_cli

from conftest import EtcdProcess
from tortie.lab.errors import LabBuildError
from tortie.lab.state import PodRecord

POOL = IPv4Network("10.244.0.0/16")
OUTAGE = 6.0  # seconds etcd stays down
MARKER = """apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: committed-before-the-fault}
spec: {cidr: 10.99.0.0/24, disabled: true, nodeSelector: all()}
"""


@pytest.fixture
def cli() -> Iterator[LabCli]:
    with lab_cli() as c:
        yield c


def tortie_json(fl: FaultLab, *argv: str) -> object:
    return json.loads(fl.on("node1", "tortie", *argv, "-o", "json"))


def committed(fl: FaultLab) -> dict[str, object]:
    """What the datastore holds that a fault must not lose: pools, nodes, endpoints with
    their addresses."""
    pools = tortie_json(fl, "get", "ippools")
    nodes = tortie_json(fl, "get", "nodes")
    weps = tortie_json(fl, "get", "workloadendpoints", "-A")

    def items(doc: object) -> list[dict[str, object]]:
        assert isinstance(doc, dict | list), doc
        got = doc.get("items", [doc]) if isinstance(doc, dict) else doc
        return list(got)

    return {
        "pools": sorted((p["metadata"]["name"], p["spec"]["cidr"]) for p in items(pools)),
        "nodes": sorted(n["metadata"]["name"] for n in items(nodes)),
        "endpoints": sorted(
            (w["metadata"]["name"], tuple(w["spec"]["ipNetworks"])) for w in items(weps)
        ),
    }


def ipam_check_clean(fl: FaultLab) -> str:
    proc = fl.run("node1", "tortie", "ipam", "check")
    assert "found 0 problems" in proc.stdout, proc.stdout
    return proc.stdout


def add_until_it_works(fl: FaultLab, node: str, name: str, timeout: float) -> PodRecord:
    """A runtime's retry of an ADD that said "try again later" (code 11)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fl.add_pod(node, name)
        except LabBuildError as err:
            if cni_code(err) != 11 or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def assert_add_refused(fl: FaultLab, node: str, name: str) -> str:
    """A CNI ADD now: code 11, and nothing wired (no eth0 in the pod, no new route)."""
    routes = fl.ours(node)
    with pytest.raises(LabBuildError) as err:
        fl.add_pod(node, name)
    assert cni_code(err.value) == 11, err.value
    assert "eth0" not in fl.pod_links(name)
    assert fl.ours(node) == routes
    return str(err.value)


# The CNI server answers as soon as the store is back; the agent's loop programs the new pod's
# anti-spoofing entry when its syncer has re-listed, which after an outage can take the
# syncer's longest retry backoff (5 s, datastore/syncer.py). So the new pod is pinged until it
# answers, within that backoff plus a margin.
REACHABLE_WITHIN = 10.0


def extra_pings(fl: FaultLab, name: str, dst: str) -> bool:
    netns = f"/run/netns/{fl.lab.topology.prefix}{name}"
    argv = ["nsenter", f"--net={netns}", "--", "ping", "-n", "-c", "1", "-W", "1", dst]
    started = time.monotonic()
    while time.monotonic() - started < REACHABLE_WITHIN:
        if subprocess.run(argv, capture_output=True, check=False).returncode == 0:
            report("new-pod", f"{name} answers {ms(time.monotonic() - started)} after its ADD")
            return True
        time.sleep(0.1)
    return False


def assert_fresh_address(fl: FaultLab, record: PodRecord, before: dict[str, object]) -> str:
    assert record.ip is not None
    address = IPv4Address(record.ip)
    taken = {IPv4Address(fl.lab.address(p.name)) for p in fl.lab.topology.pods}
    assert address in POOL and address not in taken, (address, taken)
    endpoints = before["endpoints"]
    assert isinstance(endpoints, list)
    assert all(f"{address}/32" not in nets for _, nets in endpoints)
    assert extra_pings(fl, record.name, fl.lab.address("pod2"))  # wired end to end
    return str(address)


def file_ids(*paths: Path) -> dict[str, tuple[int, int, int] | None]:
    """(inode, size, mtime ns) per path, None if absent: "untouched" means all equal."""
    out: dict[str, tuple[int, int, int] | None] = {}
    for p in paths:
        try:
            st = p.stat()
        except FileNotFoundError:
            out[p.name] = None
            continue
        out[p.name] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return out


def test_sqlite_store_moved_away_and_back_loses_nothing(cli: LabCli, tmp_path: Path) -> None:
    fl = FaultLab.up(cli, "--nodes", "2", stem="dsmv")
    url = fl.lab.state.datastore or ""
    assert url.startswith("sqlite://"), url
    db = Path(url.removeprefix("sqlite://"))
    aside = db.with_name(db.name + ".aside")
    marker = tmp_path / "marker.yaml"
    marker.write_text(MARKER)
    fl.on("node1", "tortie", "apply", "-f", str(marker))  # committed just before the fault
    before = committed(fl)
    assert ("committed-before-the-fault", "10.99.0.0/24") in before["pools"]
    info = tortie_json(fl, "datastore", "info")
    routes = {n: fl.ours(n) for n in ("node1", "node2")}
    journal = [db.with_name(db.name + s) for s in ("-wal", "-shm", "-notify")]
    files = file_ids(*journal)
    assert files[db.name + "-wal"] is not None  # a live store in WAL mode
    lab_files = sorted(os.listdir(db.parent))

    os.rename(db, aside)
    t_away = time.monotonic()
    try:
        for argv in (("get", "ippools"), ("ipam", "check"), ("datastore", "info")):
            proc = fl.run("node1", "tortie", *argv, check=False)
            assert proc.returncode == 1, (argv, proc.stdout, proc.stderr)
            assert "moved away" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        refusal = assert_add_refused(fl, "node1", "x1")
        assert "moved away" in refusal, refusal
        assert fl.pings("pod1", "pod2") and fl.pings("pod2", "pod1")
        time.sleep(1.0)  # the agents' syncers retry meanwhile
        assert not db.exists(), "something created a new datastore.db"
        assert file_ids(*journal) == files, "the journal of the moved store was touched"
        assert sorted(os.listdir(db.parent)) == sorted(
            [f for f in lab_files if f != db.name] + [aside.name]
        )
    finally:
        if not db.exists():
            os.rename(aside, db)
    away = time.monotonic() - t_away
    t_back = time.monotonic()
    record = add_until_it_works(fl, "node1", "x1", 30)
    added = time.monotonic() - t_back
    address = assert_fresh_address(fl, record, before)

    after = committed(fl)
    assert after["pools"] == before["pools"] and after["nodes"] == before["nodes"]
    endpoints = after["endpoints"]
    assert isinstance(endpoints, list)
    assert set(before["endpoints"]) <= set(endpoints)  # type: ignore[arg-type]
    assert len(endpoints) == len(before["endpoints"]) + 1  # type: ignore[arg-type]
    info_after = tortie_json(fl, "datastore", "info")
    assert isinstance(info, dict) and isinstance(info_after, dict)
    assert info_after["id"] == info["id"] and info_after["revision"] > info["revision"]
    new_route = IPv4Network(f"{address}/32")
    assert {d: r for d, r in fl.ours("node1").items() if d != new_route} == routes["node1"]
    assert fl.ours("node2") == routes["node2"]
    assert fl.pings("pod1", "pod2") and fl.pings("pod2", "pod1")
    ipam_check_clean(fl)
    report(
        "datastore-moved",
        f"datastore.db moved aside for {away:.1f} s under running agents: get/ipam check/"
        "datastore info exit 1 naming the move, nothing created, journal untouched; CNI ADD: "
        f"code 11, nothing wired; pods kept talking. Moved back: the retried ADD succeeded "
        f"{ms(added)} later with a fresh address ({address}); pools, nodes, endpoints and "
        "routes as before, ipam check clean",
    )
    fl.down()


def agents_in_sync_after(fl: FaultLab, since: float) -> bool:
    """Every agent's syncer delivered a listing taken after ``since`` (the agent's status)."""
    for node in ("node1", "node2"):
        ds = fl.agent_status(node).get("datastore")
        if not isinstance(ds, dict) or ds.get("status") != "in-sync":
            return False
        if float(ds.get("since") or 0) < since:
            return False
    return True


def since_of(fl: FaultLab, node: str) -> float:
    ds = fl.agent_status(node).get("datastore")
    assert isinstance(ds, dict), ds
    return float(ds["since"])


def agents_waiting(fl: FaultLab) -> bool:
    for node in ("node1", "node2"):
        ds = fl.agent_status(node).get("datastore")
        if not isinstance(ds, dict) or ds.get("status") != "wait-for-datastore":
            return False
    return True


def test_etcd_restart_under_running_agents_loses_nothing(
    start_etcd: EtcdProcess, cli: LabCli
) -> None:
    # start_etcd first: fixtures are torn down in reverse, so the lab is brought down while
    # its etcd still runs (its resources leave etcd, its agents stop cleanly).
    start_etcd.start()
    fl = FaultLab.up(cli, "--nodes", "2", "--datastore", start_etcd.url, stem="etcd")
    before = committed(fl)
    routes = {n: fl.ours(n) for n in ("node1", "node2")}
    with Pinger(fl.lab, "pod1", "pod2", interval=0.02) as pinger:
        time.sleep(0.5)
        t_down = time.monotonic()
        start_etcd.stop()
        try:
            noticed = wait_for(
                "both agents say they wait for the datastore",
                lambda: agents_waiting(fl),
                20,
                show=lambda: [fl.agent_status(n).get("datastore") for n in ("node1", "node2")],
            )
            proc = fl.run("node1", "tortie", "get", "ippools", check=False)
            assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
            assert "unavailable" in proc.stderr, proc.stderr
            assert_add_refused(fl, "node1", "x1")
            assert fl.pings("pod2", "pod1")
            # Long enough for the syncers' backoff to grow (0.1 s doubling to 5 s): the time
            # to resync below is then the one an operator would see.
            time.sleep(max(0.0, OUTAGE - (time.monotonic() - t_down)))
            assert fl.ours("node1") == routes["node1"] and fl.ours("node2") == routes["node2"]
        finally:
            down_for = time.monotonic() - t_down
            wall_start = time.time()
            if start_etcd.proc is None:
                start_etcd.start()  # returns once etcd answers /health
        t_up, wall_up = time.monotonic(), time.time()
        wait_for(
            "both agents in sync again",
            lambda: agents_in_sync_after(fl, wall_start),
            30,
            show=lambda: [fl.agent_status(n).get("datastore") for n in ("node1", "node2")],
        )
        insync = max(since_of(fl, n) for n in ("node1", "node2")) - wall_up
        record = add_until_it_works(fl, "node1", "x1", 30)
        added = time.monotonic() - t_up
        time.sleep(0.5)
        result = pinger.stop()
    assert not result.lost, f"lost {len(result.lost)} of {result.sent}: {result.lost[:20]}"
    assert result.tail <= 25, result
    address = assert_fresh_address(fl, record, before)
    after = committed(fl)
    assert after["pools"] == before["pools"] and after["nodes"] == before["nodes"]
    endpoints = after["endpoints"]
    assert isinstance(endpoints, list)
    assert set(before["endpoints"]) <= set(endpoints)  # type: ignore[arg-type]
    new_route = IPv4Network(f"{address}/32")
    assert {d: r for d, r in fl.ours("node1").items() if d != new_route} == routes["node1"]
    assert fl.ours("node2") == routes["node2"]
    ipam_check_clean(fl)
    report(
        "etcd-restart",
        f"etcd stopped for {down_for:.1f} s under running agents: both agents said so after "
        f"{noticed:.1f} s; get exits 1, CNI ADD code 11, nothing wired; ping -i 0.02 pod1 -> "
        f"pod2 across the outage: {result}. etcd up again (it took {wall_up - wall_start:.1f} s "
        f"to answer): both agents in sync {ms(max(insync, 0.0))} after, the retried ADD "
        f"succeeded after {ms(added)} with a fresh address ({address}); "
        "routes as before, ipam check clean",
    )
    fl.down()
