"""The fault suite's harness (issue 17, "Evidence"): a lab to break, a clock, and numbers.

Each case builds a real lab with ``tortie lab up`` (a process, through
:class:`lab_e2e.LabCli`), breaks one thing the way an operator, a flaky link or the kernel
would, and checks that nothing was lost and that the repair happened, measuring how long it
took. Each prints one line, ``fault <case>: <what, with the numbers>``, so ``pytest -s
tests/e2e/faults`` shows the figures (docs/faults.md collects them). The bounds asserted are
generous (correctness, not speed: the machine is shared and may run CI meanwhile); speed lives
in ``bench/repair.py``.

What this module gives a case:

- :class:`FaultLab`: a lab brought up and converged, with commands "on" a node (``lab
  exec``'s environment, so ``tortie`` there acts as that node), the node's routing table read
  with a raw rtnetlink dump (about 0.1 ms, so repair times are polled every 2 ms), the agent's
  status file, CNI ADD/DEL of an extra pod through the real plugin, a kernel snapshot, and a
  ``down`` that checks the host is left clean;
- :class:`Pinger`: a continuous ping between two endpoints, counted per sequence number;
- :func:`wait_for`: poll until true, return the seconds it took.

Hygiene: every lab lives under a private, short lab root (:func:`lab_e2e.lab_cli`) with a
unique name; extra pods get
namespaces with the lab's prefix (``tl<id>-x<n>``), deleted by the case and, failing that, by
``lab down``'s sweep of the prefix. Processes are stopped by the PIDs the lab recorded or the
agent wrote, after checking they carry the lab's token.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from lab_e2e import LabCli, footprint, unique_name

from tortie.dataplane.routes import KernelRoute
from tortie.dataplane.rtnl import RtnlSocket
from tortie.lab import cni
from tortie.lab.errors import LabBuildError
from tortie.lab.naming import lab_prefix
from tortie.lab.ops import Lab
from tortie.lab.procs import has_token
from tortie.lab.runtime import node_runtime
from tortie.lab.state import PodRecord
from tortie.lab.topology import PodSpec

DEFAULT = IPv4Network("0.0.0.0/0")
OURS = 80  # the agent's route protocol
POLL = 0.002  # a rtnetlink dump of a lab node's table takes about 0.1 ms


def report(case: str, text: str) -> None:
    """The case's one-line result, for ``pytest -s`` and docs/faults.md."""
    print(f"\nfault {case}: {text}", flush=True)


def wait_for(
    what: str,
    ok: Callable[[], object],
    timeout: float,
    poll: float = 0.05,
    show: Callable[[], object] | None = None,
) -> float:
    """Seconds until ``ok()`` is true; AssertionError naming ``what`` (and what ``show()``
    says then) after ``timeout``."""
    t0 = time.monotonic()
    while True:
        if ok():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            seen = f"\n{show()}" if show is not None else ""
            raise AssertionError(f"not within {timeout:.0f} s: {what}{seen}")
        time.sleep(poll)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def cni_code(err: LabBuildError) -> int | None:
    """The CNI error code in a failed call's message (``... code 11: ...``)."""
    m = re.search(r": code (\d+): ", str(err))
    return int(m.group(1)) if m else None


@dataclass
class FaultLab:
    """A converged lab and what the cases do to and with it."""

    cli: LabCli
    name: str
    lab: Lab
    extra: dict[str, PodRecord] = field(default_factory=dict)

    @classmethod
    def up(
        cls, cli: LabCli, *args: str, env: dict[str, str] | None = None, stem: str = "f"
    ) -> FaultLab:
        """``tortie lab up`` (2 nodes unless ``args`` say otherwise), then every pod reaches
        every other pod."""
        name = unique_name(stem)
        cli.run("up", "--name", name, "-q", *args, env=env, timeout=180)
        fl = cls(cli, name, cli.open(name))
        pods = [p.name for p in fl.lab.topology.pods]
        for a in pods:
            for b in pods:
                if a != b:
                    wait_for(f"{a} -> {b}", lambda a=a, b=b: fl.pings(a, b), 30)
        return fl

    def reload(self) -> None:
        """Read the lab's state file again (``lab restart`` records a new agent)."""
        self.lab = self.cli.open(self.name)

    # -- commands "on" a node or pod -----------------------------------------------------
    def run(
        self, where: str, *argv: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        cmd, env = self.lab.exec_argv(where, list(argv))
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, check=False, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} on {where} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
            )
        return proc

    def on(self, where: str, *argv: str) -> str:
        return self.run(where, *argv).stdout

    def pings(self, src: str, dst: str, count: int = 1) -> bool:
        argv = self.lab.ping_argv(src, dst, count=count, interval=0.2, wait=1)
        return subprocess.run(argv, capture_output=True, check=False).returncode == 0

    # -- the node's kernel, the agent ----------------------------------------------------
    def routes(self, node: str) -> dict[IPv4Network, KernelRoute]:
        """The node's main table (metric 0), by destination, one rtnetlink dump."""
        sock = RtnlSocket(self.lab.netns_path(node))
        try:
            return {r.dst: r for r in sock.dump_routes(254) if r.metric == 0}
        finally:
            sock.close()

    def route_watch(self, node: str) -> RouteWatch:
        return RouteWatch(RtnlSocket(self.lab.netns_path(node)))

    def ours(self, node: str) -> dict[IPv4Network, KernelRoute]:
        return {d: r for d, r in self.routes(node).items() if r.proto == OURS}

    def block_of(self, pod: str) -> IPv4Network:
        return IPv4Network(f"{self.lab.address(pod)}/26", strict=False)

    def state_dir(self, node: str) -> Path:
        return Path(self.lab.state.nodes[node].state_dir)

    def agent_status(self, node: str) -> dict[str, object]:
        return dict(json.loads((self.state_dir(node) / "status.json").read_text()))

    def agent_pid(self, node: str) -> int:
        pid = self.agent_status(node)["pid"]
        assert isinstance(pid, int)
        return pid

    def lab_pid(self, pid: int) -> int:
        """``pid``, after checking it is a process of this lab (it carries the lab's token):
        the only processes a case may signal."""
        assert has_token(pid, self.lab.state.token), f"PID {pid} is not a process of this lab"
        return pid

    def node_status(self, node: str) -> dict[str, object]:
        """``tortie node status -o json`` run inside the node."""
        proc = self.run(node, "tortie", "node", "status", "-o", "json", check=False)
        return dict(json.loads(proc.stdout))

    def snapshot(self, node: str) -> dict[str, str]:
        """What the agent owns in the node's kernel, as text to compare: its routes
        (protocol 80, every table), its nftables table without counters (``nft -s``: traffic
        moves counters), what runs on the tc/tcx hooks (program and link ids: a re-attach
        changes them), links and addresses (no statistics)."""
        return {
            "routes": self.on(node, "ip", "-4", "route", "show", "table", "all", "proto", "80"),
            "nft": self.on(node, "nft", "-s", "list", "table", "inet", "tortie"),
            "bpf": self.on(node, "tortie", "node", "bpf", "-o", "json"),
            "links": self.on(node, "ip", "-o", "link", "show"),
            "addresses": self.on(node, "ip", "-o", "-4", "address", "show"),
        }

    # -- an extra pod, through the real CNI plugin ---------------------------------------
    def _extra_spec(self, node: str, name: str) -> PodSpec:
        return PodSpec(
            name=name,
            index=0,
            netns=f"{self.lab.topology.prefix}{name}",
            node=node,
            k8s_namespace="default",
            ifname="eth0",
            host_ifname="",  # the plugin names it
            manual_ip=IPv4Address("0.0.0.0"),
        )

    def add_pod(self, node: str, name: str) -> PodRecord:
        """CNI ADD of a new pod ``name`` on ``node`` (a new namespace ``tl<id>-<name>``), as a
        runtime makes it: the node's conflist, the plugin over its protocol. Raises
        LabBuildError (with the CNI code) when the plugin fails."""
        spec = self._extra_spec(node, name)
        if not Path(f"/run/netns/{spec.netns}").exists():
            subprocess.run(["ip", "netns", "add", spec.netns], check=True)
        runtime = node_runtime(self.lab.topology, self.lab.state, node)
        record = cni.add_pod(self.lab.topology, runtime, spec)
        self.extra[name] = record
        return record

    def del_pod(self, node: str, name: str) -> None:
        """CNI DEL of an extra pod, then its namespace."""
        spec = self._extra_spec(node, name)
        runtime = node_runtime(self.lab.topology, self.lab.state, node)
        cni.delete_pod(self.lab.topology, runtime, spec)
        self.extra.pop(name, None)
        subprocess.run(["ip", "netns", "del", spec.netns], check=False, capture_output=True)

    def pod_links(self, name: str) -> str:
        """``ip -o link`` in an extra pod's namespace."""
        netns = f"{self.lab.topology.prefix}{name}"
        return subprocess.run(
            ["ip", "-n", netns, "-o", "link", "show"], capture_output=True, text=True, check=True
        ).stdout

    # -- the end -------------------------------------------------------------------------
    def down(self) -> None:
        """``tortie lab down``, then nothing of the lab is left on the host: namespaces
        (extra pods' too, by the lab's prefix), links, mounts, processes (by the lab's
        token: agents, keepers, speakers), the lab directory, the id."""
        state = self.lab.state
        for name, record in list(self.extra.items()):
            try:
                self.del_pod(record.node, name)
            except LabBuildError as err:
                print(f"(extra pod {name}: {err}; lab down removes its namespace)")
        self.cli.run("down", "--name", self.name, "-q", timeout=120)
        left = footprint(Path(state.lab_dir), lab_prefix(state.lab_id or 0), state.token)
        assert left.empty, f"left behind: {left}"


class RouteWatch:
    """One rtnetlink socket in a node's namespace, polled every 2 ms: repair times with
    about 2 ms of resolution (a ``tortie lab exec ip route`` costs 20-50 ms a look)."""

    def __init__(self, sock: RtnlSocket) -> None:
        self.sock = sock

    def __enter__(self) -> RouteWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def table(self) -> dict[IPv4Network, KernelRoute]:
        return {r.dst: r for r in self.sock.dump_routes(254) if r.metric == 0}

    def until(self, what: str, ok: Callable[[dict[IPv4Network, KernelRoute]], bool], t: float):
        """Seconds until ``ok(table)``, polled every 2 ms; AssertionError after ``t`` s."""
        return wait_for(what, lambda: ok(self.table()), t, poll=POLL)


@dataclass(frozen=True)
class PingResult:
    sent: int  # ping's own count of echo requests
    replied: int  # distinct sequence numbers answered
    lost: tuple[int, ...]  # sequence numbers not answered, before the last one answered
    tail: int  # sent after the last answered one (in flight when ping was stopped)

    def __str__(self) -> str:
        return f"{len(self.lost)}/{self.sent} lost"


class Pinger:
    """``ping -i INTERVAL`` from ``src`` to ``dst`` in the background until :meth:`stop`.

    Counted per sequence number from ping's per-reply lines, not from its summary: stopping
    ping (SIGINT) counts the request in flight at that moment as lost. So ``lost`` is every
    sequence number up to the last answered one that got no answer, and ``tail`` what was
    sent after it (a loss at the very end shows there: a case asserts it is small)."""

    def __init__(self, lab: Lab, src: str, dst: str, interval: float = 0.01) -> None:
        self.interval = interval
        address = lab.address(dst)
        argv = lab.nsenter(src, ["ping", "-n", "-i", str(interval), "-W", "1", address])
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def __enter__(self) -> Pinger:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> PingResult:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=30)
        replied = {int(s) for s in re.findall(r"icmp_seq=(\d+) ttl=", out)}
        m = re.search(r"(\d+) packets transmitted", out)
        assert m, f"no summary from ping:\n{out[-2000:]}"
        sent = int(m.group(1))
        last = max(replied, default=0)
        lost = tuple(s for s in range(1, last + 1) if s not in replied)
        return PingResult(sent=sent, replied=len(replied), lost=lost, tail=sent - last)
