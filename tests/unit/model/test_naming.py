"""The ownership markers (model/naming.py): Calico's rules, and defined nowhere else.

Calico's host-side veth name is ``VethNameForWorkload`` in projectcalico/calico,
``libcalico-go/lib/backend/k8s/conversion/workload_endpoint_default.go``: sha1 of
``fmt.Sprintf("%s.%s", namespace, podname)``, hex-encoded, the first 11 characters after the
prefix ``cali`` (``FELIX_INTERFACEPREFIX``'s default).
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tortie.lab.topology import LabOptions, build_topology
from tortie.model import naming
from tortie.model.naming import host_ifname, is_workload_interface, pod_handle

SRC = Path(naming.__file__).resolve().parents[1]  # src/tortie


def _calico(namespace: str, pod: str) -> str:
    """Calico's VethNameForWorkload, transcribed."""
    return "cali" + hashlib.sha1(f"{namespace}.{pod}".encode()).hexdigest()[:11]


@pytest.mark.parametrize(
    ("namespace", "pod"),
    [("default", "nginx"), ("kube-system", "coredns-5d78c9869d-x2x9q"), ("web", "web-0")],
)
def test_the_host_side_name_is_calicos(namespace: str, pod: str) -> None:
    name = host_ifname("0123abcd", "eth0", namespace, pod)
    assert name == _calico(namespace, pod)
    assert len(name) == 15 and name.startswith("cali")
    assert int(name[4:], 16) >= 0  # 11 hex digits


def test_a_known_name() -> None:
    """Pinned, so a change of the rule (hash, length, separator) cannot go unnoticed."""
    assert host_ifname("c1", "eth0", "default", "nginx") == "calic440f455693"


def test_names_recorded_by_an_older_lab_are_what_the_lab_computes_now() -> None:
    """tests/unit/trace/test_trace_recordings.py holds a real two-node lab's kernel: pod1 and pod2
    (namespace ``default``) had host sides calice0906292e2 and calibd2348b4f67, named by the
    lab's own copy of the rule (lab/naming.calico_ifname, now gone). The topology names them by
    the CNI server's rule now: the same names, so a lab's state files and kernels from before
    still match (the lab stores the names, and recomputes them from the same rule)."""
    topology = build_topology(LabOptions(name="x", nodes=2, wire_pods="manual"), 1)
    names = {p.name: p.host_ifname for p in topology.pods}
    assert names["pod1"] == "calice0906292e2" and names["pod2"] == "calibd2348b4f67"
    assert all(p.ifname == "eth0" for p in topology.pods)


def test_other_interfaces_and_unnamed_pods() -> None:
    eth0 = host_ifname("c1", "eth0", "web", "web-0")
    net1 = host_ifname("c1", "net1", "web", "web-0")
    assert net1 != eth0 and net1 == _calico("web", "web-0.net1")  # tortie's suffix
    assert host_ifname("abc123", "eth0", None, None) == (
        "cali" + hashlib.sha1(b"abc123").hexdigest()[:11]
    )
    assert host_ifname("c1", "eth0", None, "p") == _calico("default", "p")


def test_workload_interfaces_and_handles() -> None:
    assert is_workload_interface("cali0123456789a")
    for name in ("cali", "eth0", "tunl0", "vxlan.calico", "lo"):
        assert not is_workload_interface(name)
    assert pod_handle("c1", "k8s-pod-network") == "k8s-pod-network.c1"
    assert pod_handle("c1") == "k8s-pod-network.c1"


def test_the_markers_are_what_calico_uses() -> None:
    assert naming.TUNNEL_DEVICE == "tunl0"
    assert naming.VXLAN_DEVICE == "vxlan.calico"
    assert naming.VXLAN_V6_DEVICE == "vxlan-v6.calico"
    assert naming.GATEWAY == "169.254.1.1"
    assert naming.HOST_MAC == "ee:ee:ee:ee:ee:ee"
    assert naming.ROUTE_PROTOCOL == 80
    assert naming.IPIP_TUNNEL_HANDLE_PREFIX == "ipip-tunnel-addr-"
    assert naming.VXLAN_TUNNEL_HANDLE_PREFIX == "vxlan-tunnel-addr-"


# -- defined nowhere else -------------------------------------------------------------------------

# String markers: a module other than naming.py that spells one of these as a constant defines
# it again. (Docstrings and comments may mention them.)
STRING_MARKERS = {
    naming.WORKLOAD_PREFIX,
    naming.TUNNEL_DEVICE,
    naming.VXLAN_DEVICE,
    naming.VXLAN_V6_DEVICE,
    naming.GATEWAY,
    naming.HOST_MAC,
    naming.RUN_DIR,
    naming.TCX_LINK_PREFIX,
    naming.BPF_PROGRAM_DIR_PREFIX,
    naming.IPIP_TUNNEL_HANDLE_PREFIX,
    naming.VXLAN_TUNNEL_HANDLE_PREFIX,
    naming.DEFAULT_POD_NETWORK,
}


def _modules() -> Iterator[Path]:
    for path in sorted(SRC.rglob("*.py")):
        if path != Path(naming.__file__).resolve():
            yield path


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _redefinitions(path: Path, root: Path = SRC.parent) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    docs = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(root)}:{getattr(node, 'lineno', '?')}"
        if (
            isinstance(node, ast.Constant)
            and id(node) not in docs
            and isinstance(node.value, str)
            and node.value in STRING_MARKERS
        ):
            found.append(f"{where}: {node.value!r}")
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "sha1":
            found.append(f"{where}: sha1 (the host-side name rule)")
        # Numbers: the route protocol, bound to a name that says it is one.
        targets: list[tuple[str, ast.expr | None]] = []
        if isinstance(node, ast.Assign):
            targets = [(ast.unparse(t), node.value) for t in node.targets]
        elif isinstance(node, ast.AnnAssign):
            targets = [(ast.unparse(node.target), node.value)]
        elif isinstance(node, ast.keyword) and node.arg:
            targets = [(node.arg, node.value)]
        elif isinstance(node, ast.arguments):
            args = node.args[len(node.args) - len(node.defaults) :] + node.kwonlyargs
            defaults = [*node.defaults, *(d for d in node.kw_defaults if d is not None)]
            targets = list(zip((a.arg for a in args), defaults, strict=False))
        for name, value in targets:
            constant = value.value if isinstance(value, ast.Constant) else None
            if "proto" in name.lower() and constant == naming.ROUTE_PROTOCOL:
                found.append(f"{where}: {name} = {constant}")
            if "table" in name.lower() and constant == naming.NFT_TABLE:
                found.append(f"{where}: {name} = {constant!r}")
    return found


def test_no_other_module_defines_a_marker_again() -> None:
    found = [hit for path in _modules() for hit in _redefinitions(path)]
    assert found == [], "use tortie.model.naming instead:\n" + "\n".join(found)


def test_the_scan_finds_a_redefinition(tmp_path: Path) -> None:
    """The scan above can fail: each kind of redefinition is caught, docstrings are not."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        '"""A docstring mentioning tunl0 and 169.254.1.1 is fine."""\n'
        'import hashlib\nPREFIX = "cali"\nGW = "169.254.1.1"\nROUTE_PROTO = 80\n'
        'TABLE = "tortie"\n'
        "def f(proto: int = 80) -> str:\n"
        "    return hashlib.sha1(b'x').hexdigest()\n"
    )
    hits = _redefinitions(probe, tmp_path)
    assert len(hits) == 6, hits
