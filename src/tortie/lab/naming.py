"""Names of a lab's kernel objects: one short prefix per lab, every name derived from it.

Problem: several labs (and the dataplane tests, whose namespaces start with ``tt``) share one
host. Namespace names live in one host-wide directory (``/run/netns``), and an interface name
has at most 15 bytes. So the user's lab name (which can be long and readable) never appears in
a kernel name: each lab gets a small integer id (allocated host-wide, :mod:`.registry`) and
every kernel name starts with ``tl<id>-``.

Invariants:
- ``tl<id>-`` with 1 <= id <= :data:`MAX_LAB_ID`: distinct from the tests' ``tt`` prefix, and
  two labs with different ids can never produce the same name (the ``-`` ends the id, so
  ``tl1-`` is not a prefix of ``tl12-``).
- Interface names made here are <= 15 bytes for every id, node and subnet number we allow
  (checked by :func:`check_ifname`, and by the unit tests at the limits).
- Inside a node or pod namespace the names are the ones a real host has (``eth0``,
  ``cali<11 hex>``): those namespaces are the lab's own, so nothing there can collide.
"""

from __future__ import annotations

import re

from tortie.lab.errors import LabOptionError

LAB_PREFIX = "tl"
MAX_LAB_ID = 999
MAX_NAME_LEN = 24
IFNAME_MAX = 15
# A lab name is a DNS label, short: it names a directory and appears in messages.
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


def check_lab_name(name: str) -> str:
    """Return ``name`` if it can name a lab, else raise :class:`LabOptionError`."""
    if len(name) > MAX_NAME_LEN:
        raise LabOptionError(
            f"lab name {name!r} is too long ({len(name)} characters; at most {MAX_NAME_LEN})"
        )
    if not _NAME_RE.match(name):
        raise LabOptionError(
            f"lab name {name!r} is not valid: use lowercase letters, digits and '-', "
            "starting and ending with a letter or digit (e.g. 'seed' or 'ipip-3')"
        )
    return name


def lab_prefix(lab_id: int) -> str:
    """``tl<id>-``: the start of every namespace and host-visible interface of the lab."""
    if not 1 <= lab_id <= MAX_LAB_ID:
        raise LabOptionError(f"lab id {lab_id} is out of range 1..{MAX_LAB_ID}")
    return f"{LAB_PREFIX}{lab_id}-"


def parse_lab_prefix(name: str) -> int | None:
    """The lab id of a kernel name made here (``tl12-n1`` -> 12), or None."""
    match = re.match(rf"^{LAB_PREFIX}([1-9][0-9]{{0,2}})-", name)
    return int(match.group(1)) if match else None


def check_ifname(name: str) -> str:
    """Return ``name`` if the kernel accepts it as an interface name."""
    if not 0 < len(name.encode()) <= IFNAME_MAX or "/" in name or any(c.isspace() for c in name):
        raise LabOptionError(f"interface name {name!r} is not valid (1..{IFNAME_MAX} bytes)")
    return name
