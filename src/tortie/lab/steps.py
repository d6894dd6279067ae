"""Kernel work as data: ``ip`` commands per namespace and sysctls, printable and runnable.

Problem: the same wiring is built by the lab, shown by ``--dry-run`` and the docs, and used as
the benchmark's hand-made reference ("the same wiring done by hand with ``ip``"). Describing it
as data once keeps the three identical.

Invariant: :func:`shell_lines` prints commands a person can paste into a root shell and get
the same result as :func:`run_steps`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tortie.lab.kernel import Kernel


@dataclass(frozen=True)
class IpStep:
    """``ip -n <netns> <command>`` for each command, in order (one ``ip -batch`` process)."""

    netns: str
    commands: tuple[str, ...]


@dataclass(frozen=True)
class SysctlStep:
    """Sysctls in path form (``net/ipv4/ip_forward``) set inside ``netns``."""

    netns: str
    values: tuple[tuple[str, str], ...]


Step = IpStep | SysctlStep


def run_steps(kernel: Kernel, steps: Iterable[Step]) -> None:
    for step in steps:
        if isinstance(step, IpStep):
            kernel.ip_batch(step.netns, step.commands)
        else:
            kernel.sysctls(step.netns, dict(step.values))


def shell_lines(steps: Iterable[Step]) -> list[str]:
    out: list[str] = []
    for step in steps:
        if isinstance(step, IpStep):
            out += [f"ip -n {step.netns} {cmd}" for cmd in step.commands]
        else:
            out += [
                f"nsenter --net=/run/netns/{step.netns} sysctl -qw {key}={val}"
                for key, val in step.values
            ]
    return out
