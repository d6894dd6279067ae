"""Resource documents printed as calicoctl prints them: YAML or JSON, one or a list.

Problem: ``tortie get -o yaml|json`` prints what the datastore holds, and what it prints must
read back through ``tortie apply`` to equal resources. The reading commands work on documents
(:mod:`tortie.model.stored`), so this does not need, or import, the models; PyYAML is
imported only for YAML.

Invariants:
- One resource is one document; several (or ``single=False``) are a list document like
  ``calicoctl get -o yaml`` prints: ``kind: <Kind>List`` when all items are of one kind,
  otherwise ``kind: List``; always ``apiVersion: projectcalico.org/v3``.
- Keys keep the documents' order (``to_document()``'s: apiVersion, kind, metadata, spec);
  text is UTF-8, not escaped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from tortie.model.fields import API_VERSION
from tortie.model.kindinfo import kind_info

__all__ = ["format_documents"]


def format_documents(
    docs: Sequence[Mapping[str, Any]],
    fmt: Literal["yaml", "json"] = "yaml",
    *,
    single: bool | None = None,
    kind: str | None = None,
) -> str:
    """Serialise resource documents as calicoctl would print them.

    ``single``: ``None`` means a bare document for exactly one resource and a list document
    otherwise; ``False`` always writes a list (as ``calicoctl get <kind>`` does even for one
    result); ``True`` writes a bare document and requires exactly one. ``kind`` is the kind
    being listed (any spelling :func:`~tortie.model.kindinfo.kind_info` accepts): it names
    the list (``IPPoolList``) even when it is empty.
    """
    if single is None:
        single = len(docs) == 1
    payload: Mapping[str, Any]
    if not single:
        kinds = {str(d.get("kind")) for d in docs}
        if kind is not None:
            kinds.add(kind_info(kind).kind)
        list_kind = f"{next(iter(kinds))}List" if len(kinds) == 1 else "List"
        payload = {"apiVersion": API_VERSION, "kind": list_kind, "items": list(docs)}
    elif len(docs) == 1:
        payload = docs[0]
    else:
        raise ValueError(f"single=True needs exactly one resource, got {len(docs)}")
    if fmt == "json":
        return json.dumps(payload, indent=2, ensure_ascii=False) + "\n"
    if fmt == "yaml":
        import yaml  # only for YAML: `tortie get` in a table or JSON does not load it

        text: str = yaml.safe_dump(
            payload, sort_keys=False, default_flow_style=False, allow_unicode=True
        )
        return text
    raise ValueError(f"unknown format {fmt!r}; use 'yaml' or 'json'")
