"""Fixtures of the vm tier: a qemu guest with Debian's cloud kernel (it has the ipip module).

Problem: this host's kernel has no ipip module, so the ``kernel`` IPIP backend can only be
proven in a guest. ``scripts/vm/vmguest.py`` builds one (cached under ``$TORTIE_VM_CACHE`` or
``/var/cache/tortie-vm``; fetching the kernel package once takes ~30 s) and runs commands in
it over the host's files, read-only; see docs/vm-tests.md.

- ``vm_guest`` (session): the built guest, or a skip naming what is missing (qemu, virtiofsd,
  busybox-static, a kernel that could not be fetched). The tier plugin makes that skip a
  failure under ``TORTIE_REQUIRE_ALL=1``, so CI cannot pass without running the tier.
- ``run_vm`` (session): ``run_vm(cmd, timeout) -> RunResult`` (exit_code, output, console,
  seconds) in a fresh guest; each call boots one guest and stops exactly the processes it started.
- ``vm_guest_backports`` / ``run_vm_backports``: the same with the release's backports kernel
  (6.12 on Debian 12), new enough for ``bpf/build/ipip.o``'s kfuncs, which 6.1 lacks.

Hazard: guests run under TCG (software emulation; ``/dev/kvm`` here is KVM-PVM, which hangs
stock kernels): a boot takes ~5-10 s and Python runs 20-30x slower inside, more when the host
is loaded. Give every run a timeout below pytest's (300 s).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts" / "vm"))

import vmguest  # noqa: E402  (lives in scripts/vm, tortie-independent)

RunVM = Callable[..., vmguest.RunResult]


def _build(source: str) -> vmguest.Guest:
    try:
        return vmguest.build_guest(source=source)
    except vmguest.VMUnavailableError as exc:
        pytest.skip(f"the vm tier cannot run here ({source} kernel): {exc} (see docs/vm-tests.md)")


def _runner(guest: vmguest.Guest) -> RunVM:
    def run(cmd: str | list[str], timeout: float = 240.0, **kwargs: Any) -> vmguest.RunResult:
        return vmguest.run_guest(cmd, timeout, guest=guest, cwd=str(REPO), **kwargs)

    return run


@pytest.fixture(scope="session")
def vm_guest() -> vmguest.Guest:
    return _build("stable")


@pytest.fixture(scope="session")
def run_vm(vm_guest: vmguest.Guest) -> RunVM:
    return _runner(vm_guest)


@pytest.fixture(scope="session")
def vm_guest_backports() -> vmguest.Guest:
    return _build("backports")


@pytest.fixture(scope="session")
def run_vm_backports(vm_guest_backports: vmguest.Guest) -> RunVM:
    return _runner(vm_guest_backports)
