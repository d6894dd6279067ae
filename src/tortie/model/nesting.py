"""How deep JSON text nests, found without parsing it (stdlib only, no ``re``).

Problem: Python's JSON and YAML parsers recurse once per nesting level, so a document nested
a thousand levels deep ends in a ``RecursionError`` (a 3,000-line traceback from ``tortie
apply``; no CNI error JSON at all from the plugin). Go's decoders, which Kubernetes and
calicoctl use, stop at 10,000 levels with an error; Python's stack does not reach that far,
so tortie stops at :data:`MAX_DEPTH` levels, far above any real manifest or CNI config (an
IPPool in a list document is 4 deep, a CNI ADD's ``prevResult`` routes 4), and checks
*before* parsing, so no parser recursion ever starts.

Invariants:
- :func:`json_too_deep` agrees with the JSON grammar on everything a JSON parser would read
  before failing: brackets inside strings do not count, escaped quotes (``\\"``) do not
  close a string, and escaped backslashes (``\\\\``) do not escape the quote after them.
  For invalid JSON it may answer either way: the parser then refuses the text anyway, at the
  first invalid character, before nesting deeper than what was checked.
- Linear time, and cheap: the bytes that are not ``[]{}"`` are dropped by ``bytes.translate``
  (C) before the loop, and UTF-8 never puts those ASCII bytes inside a multi-byte character.

Hazard: this module is imported by the per-pod CNI plugin process: stdlib only, no ``re``.

Facts (Go's and libyaml's limits): docs/limits.md.
"""

from __future__ import annotations

__all__ = ["MAX_DEPTH", "NestingError", "json_too_deep"]

MAX_DEPTH = 100

_OPEN = frozenset(b"[{")
_QUOTE = ord('"')
_DROP = bytes(b for b in range(256) if b not in b'[]{}"')


class NestingError(ValueError):
    """Text nested deeper than the limit (a ValueError: callers treat it as bad input)."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"nested more than {limit} levels deep (the limit is {limit}); flatten the document"
        )
        self.limit = limit


def json_too_deep(data: bytes | str, limit: int = MAX_DEPTH) -> bool:
    """Whether JSON ``data`` opens more than ``limit`` arrays/objects inside each other."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    # Left to right, as a parser reads escapes: first every escaped backslash, then every
    # escaped quote. What is left of each string is its quotes and its other characters.
    raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    depth = 0
    in_string = False
    for byte in raw.translate(None, _DROP):
        if byte == _QUOTE:
            in_string = not in_string
        elif in_string:
            continue
        elif byte in _OPEN:
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False
