"""A kernel stand-in for builder/teardown unit tests that also checks write-ahead recording:
every namespace, link and mount must already be in the state file on disk when the call that
creates it arrives."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from tortie.lab.errors import LabBuildError

_LINK_ADD = re.compile(r"^link add (\S+)")


class FakeKernel:
    def __init__(self, lab_dir: Path, fail_on: str | None = None) -> None:
        self.lab_dir = lab_dir
        self.namespaces: set[str] = set()
        self.mounted: set[Path] = set()
        self.calls: list[tuple[str, str]] = []
        self.fail_on = fail_on

    def _recorded(self) -> dict[str, object]:
        data: dict[str, object] = json.loads((self.lab_dir / "state.json").read_text())
        return data

    def netns_add(self, name: str) -> None:
        assert name in self._recorded()["namespaces"], f"{name} created before it was recorded"  # type: ignore[operator]
        assert name not in self.namespaces
        self.namespaces.add(name)
        self.calls.append(("netns_add", name))

    def netns_delete(self, name: str) -> None:
        self.namespaces.discard(name)
        self.calls.append(("netns_delete", name))

    def netns_exists(self, name: str) -> bool:
        return name in self.namespaces

    def ip_batch(self, netns: str, commands: Sequence[str]) -> None:
        assert netns in self.namespaces, f"ip -n {netns}: no such namespace"
        recorded = {(x["netns"], x["name"]) for x in self._recorded()["links"]}  # type: ignore[attr-defined]
        for cmd in commands:
            if self.fail_on and self.fail_on in cmd:
                raise LabBuildError(f"in namespace {netns}: 'ip {cmd}': injected failure")
            m = _LINK_ADD.match(cmd)
            if m and netns != "lo":
                assert (netns, m.group(1)) in recorded, f"{cmd} before its link was recorded"
            self.calls.append((netns, cmd))

    def sysctls(self, netns: str, values: Mapping[str, str]) -> None:
        assert netns in self.namespaces
        for key, value in values.items():
            self.calls.append((netns, f"sysctl {key}={value}"))

    def mount_bpffs(self, path: Path) -> bool:
        assert str(path) in self._recorded()["mounts"]  # type: ignore[operator]
        path.mkdir(parents=True, exist_ok=True)
        self.mounted.add(path)
        return True

    def unmount(self, path: Path) -> None:
        self.mounted.discard(path)
