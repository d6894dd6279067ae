"""The CLI's start-up cost (issue 17, item 14): a command imports only what it uses.

Timings live in ``bench/cli.py``; these tests check the causes instead: which modules a
command loads (in a fresh interpreter), and that the lazy command table cannot drift from
what the subcommand modules register.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tortie.ctl.main import COMMANDS, MODULES, build_parser, command_of

POOL = """\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: p
spec:
  cidr: 10.9.0.0/16
"""


def _loaded_after(argv: list[str], stdin: str = "") -> set[str]:
    """The modules loaded by ``tortie argv`` in a fresh interpreter (its exit status 0)."""
    code = (
        "import json, sys\n"
        "from tortie.ctl.main import main\n"
        f"status = main({argv!r})\n"
        "print('\\n' + json.dumps(sorted(sys.modules)))\n"
        "sys.exit(status)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def _subcommands(parser: argparse.ArgumentParser) -> set[str]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(action.choices)


def test_the_command_table_matches_what_the_modules_register() -> None:
    assert _subcommands(build_parser()) == set(COMMANDS) | {"version"}
    assert set(COMMANDS.values()) == set(MODULES)
    for command, module in COMMANDS.items():
        assert command in _subcommands(build_parser([command])), (command, module)


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["version"], "version"),
        (["get", "ippools"], "get"),
        (["--datastore", "memory://", "ipam", "show"], "ipam"),
        (["--datastore=memory://", "lab", "status"], "lab"),
        (["--data", "memory://", "get", "x"], "get"),  # argparse's prefix of --datastore
        (["--help"], None),
        (["-h", "get"], None),
        (["--unknown", "get"], None),
        ([], None),
    ],
)
def test_command_of(argv: list[str], command: str | None) -> None:
    assert command_of(argv) == command


def test_an_unknown_command_still_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser(["frobnicate"]).parse_args(["frobnicate"])
    err = capsys.readouterr().err
    assert "invalid choice" in err and "'ipam'" in err and "'lab'" in err


HEAVY_EVERYWHERE = {"grpc", "pyetcd", "google.protobuf", "tortie.lab.topology", "tortie.agent"}


def test_version_loads_no_model_datastore_or_driver() -> None:
    loaded = _loaded_after(["version"])
    heavy = {"pydantic", "yaml", "tortie.model.resources", "tortie.ipam.client"}
    heavy |= {"tortie.datastore.api", "dataclasses"}  # --datastore is only a string
    assert not (HEAVY_EVERYWHERE | heavy) & loaded, (HEAVY_EVERYWHERE | heavy) & loaded


# What `tortie get` must not load for what tortie itself stored: pydantic and the models are
# ~0.1 s of a 0.15 s budget (issue 17, item 14); tortie.datastore.documents reads without them.
MODELS = {"pydantic", "pydantic_core", "tortie.model.resources", "tortie.datastore.resources"}

PEER = """\
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata:
  name: tor
spec:
  peerIP: 192.168.49.1
  asNumber: 64513
  password: s3cret
"""


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'ds.db'}"
    _loaded_after(["--datastore", url, "datastore", "init"])  # opening never creates one
    _loaded_after(["--datastore", url, "apply", "-f", "-"], stdin=POOL)
    _loaded_after(["--datastore", url, "apply", "-f", "-"], stdin=PEER)
    return url


@pytest.mark.parametrize(
    "argv",
    [
        ["get", "ippools"],
        ["get", "ippools", "-o", "wide"],
        ["get", "ippool", "p", "-o", "json"],
        ["get", "bgppeers", "-o", "json"],  # redacted without the models
        ["get", "nodes"],
    ],
)
def test_get_on_sqlite_loads_no_models_grpc_ipam_lab_or_yaml(
    sqlite_url: str, argv: list[str]
) -> None:
    loaded = _loaded_after(["--datastore", sqlite_url, *argv])
    heavy = HEAVY_EVERYWHERE | MODELS | {"yaml", "tortie.ipam.client", "tortie.ctl.ipam"}
    # Nor what only writers and watchers of a store need (~10 ms together).
    heavy |= {"logging", "secrets", "ctypes", "tortie.datastore.fswatch"}
    assert not heavy & loaded, heavy & loaded
    assert "tortie.datastore.sqlite" in loaded


def test_get_yaml_loads_yaml_but_no_models(sqlite_url: str) -> None:
    loaded = _loaded_after(["--datastore", sqlite_url, "get", "ippools", "-o", "yaml"])
    assert "yaml" in loaded
    assert not (HEAVY_EVERYWHERE | MODELS) & loaded, (HEAVY_EVERYWHERE | MODELS) & loaded


def test_get_leaves_what_tortie_did_not_write_to_the_models(sqlite_url: str) -> None:
    """A stored value not in tortie's own form (here: no defaults) is read by the models."""
    code = (
        "from tortie.datastore.api import Put\n"
        "from tortie.datastore.factory import open_datastore\n"
        f"store = open_datastore({sqlite_url!r})\n"
        'doc = \'{"apiVersion":"projectcalico.org/v3","kind":"IPPool",\'\n'
        'doc += \'"metadata":{"name":"hand"},"spec":{"cidr":"10.7.0.0/16"}}\'\n'
        "assert store.txn([], [Put('/tortie/v3/ippools/hand', doc)]).succeeded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    loaded = _loaded_after(["--datastore", sqlite_url, "get", "ippools"])
    assert "pydantic" in loaded and "tortie.model.resources" in loaded


def test_etcd_stubs_load_without_pyetcds_client_and_leave_no_stand_in() -> None:
    code = (
        "import sys\n"
        "from tortie.datastore.etcd_stubs import load_etcdrpc\n"
        "rpc = load_etcdrpc()\n"
        "assert 'pyetcd' not in sys.modules and 'pyetcd.client' not in sys.modules\n"
        "assert 'asyncio' not in sys.modules or 'grpc' in sys.modules\n"
        "assert hasattr(rpc, 'KVStub') and hasattr(rpc, 'Compare')\n"
        "assert load_etcdrpc() is rpc\n"
        "import pyetcd\n"
        "assert pyetcd.etcdrpc is rpc and hasattr(pyetcd, 'Etcd3Client')\n"
        "assert load_etcdrpc() is rpc\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
