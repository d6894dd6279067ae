"""The resource kinds as names: spelling, aliases, plural, scope; without the models.

Problem: ``tortie get ippools`` must know which kind ``ippools`` names, its datastore key
prefix and whether it is namespaced before it reads anything, and a short-lived command
should not pay for the pydantic models (about 0.1 s to import and build) just to learn that.
:mod:`tortie.model.kinds` maps the same names to the model classes.

Invariants:
- :data:`KINDS` holds, per Calico kind spelling (``IPPool``), the lowercase plural used in
  datastore keys, whether the kind is namespaced, and calicoctl's case-insensitive aliases;
  the model classes' ``KIND``, ``PLURAL`` and ``NAMESPACED`` say the same (a unit test
  checks it).
- :func:`kind_info` accepts the exact kind, the plural and calicoctl's abbreviations, case
  insensitively, and raises :class:`~tortie.model.errors.ModelError` for anything else.
- Importing this module imports neither pydantic nor the models.

Hazards:
- Aliases must not collide between kinds; a unit test checks this.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

from tortie.model.errors import ModelError

__all__ = ["KINDS", "KindInfo", "kind_info", "kind_names", "suggest_kind"]


class KindInfo(NamedTuple):
    kind: str  # Calico's spelling, as in manifests
    plural: str  # lowercase, as in datastore keys (tortie.model.keys)
    namespaced: bool
    aliases: tuple[str, ...]  # calicoctl's names for the kind (resourcemgr), lowercase


KINDS: Mapping[str, KindInfo] = MappingProxyType(
    {
        info.kind: info
        for info in (
            KindInfo(
                "IPPool", "ippools", False, ("ippool", "ippools", "ipp", "ipps", "pool", "pools")
            ),
            KindInfo(
                "IPAMConfiguration",
                "ipamconfigurations",
                False,
                ("ipamconfiguration", "ipamconfigurations", "ipamconfig", "ipamconfigs"),
            ),
            KindInfo("Node", "nodes", False, ("node", "nodes", "no", "nos")),
            KindInfo(
                "BGPConfiguration",
                "bgpconfigurations",
                False,
                ("bgpconfiguration", "bgpconfigurations", "bgpconfig", "bgpconfigs"),
            ),
            KindInfo(
                "BGPPeer", "bgppeers", False, ("bgppeer", "bgppeers", "bgpp", "bgpps", "bp", "bps")
            ),
            KindInfo(
                "WorkloadEndpoint",
                "workloadendpoints",
                True,
                ("workloadendpoint", "workloadendpoints", "wep", "weps"),
            ),
        )
    }
)


def kind_names() -> list[str]:
    """The exact kind names, sorted (for messages)."""
    return sorted(KINDS)


def kind_info(user_text: str) -> KindInfo:
    """The kind a user typed (``IPPool``, ``ippools``, ``ipp``, ``wep``...)."""
    wanted = user_text.strip().lower()
    for info in KINDS.values():
        if wanted == info.kind.lower() or wanted in info.aliases:
            return info
    close = suggest_kind(user_text)
    hint = f"; did you mean {close}?" if close else ""
    raise ModelError(
        f"unknown resource kind {user_text!r}; known kinds: {', '.join(kind_names())}{hint}"
    )


def suggest_kind(user_text: str) -> str | None:
    """The kind a user probably meant (exact spelling), or ``None``."""
    import difflib  # only for mistakes: not paid by every command

    wanted = user_text.strip().lower()
    names = {kind.lower(): kind for kind in KINDS}
    names.update({a: info.kind for info in KINDS.values() for a in info.aliases})
    close = difflib.get_close_matches(wanted, list(names), n=1, cutoff=0.7)
    return names[close[0]] if close else None
