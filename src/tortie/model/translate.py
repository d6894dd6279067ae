"""Turn pydantic's validation errors into one-line, user-spelled :class:`ValidationError`.

Problem: pydantic reports errors as a list of dicts with internal locations and generic
wording ("Extra inputs are not permitted"). Users need ``spec.ipipmode: unknown field (did you
mean ipipMode?)``.

Invariants:
- Locations are rendered in the user's spelling: models validate by alias, so pydantic's
  ``loc`` already holds the camelCase names; list indices become ``[i]``.
- A :class:`~tortie.model.fields.FieldError` raised in a model validator carries a path
  relative to that model; it is appended to the location pydantic reports.
- The first problem becomes the message; the others are summarised (see ``errors.py``).

Hazards:
- Pydantic's error ``type`` strings are its API; unknown types fall back to pydantic's own
  one-line ``msg`` rather than failing.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Sequence
from typing import Any

import pydantic
from pydantic import BaseModel

from tortie.model.errors import Problem, ValidationError
from tortie.model.fields import FieldError, show

_QUOTED_RE = re.compile(r"'([^']*)'")


def translate(
    exc: pydantic.ValidationError,
    root: type[BaseModel],
    *,
    kind: str | None = None,
    name: str | None = None,
) -> ValidationError:
    """One :class:`ValidationError` for all of ``exc``'s problems in a ``root`` document."""
    problems = [_problem(err, root) for err in exc.errors()]
    if not problems:  # pragma: no cover - pydantic never raises without errors
        problems = [Problem(None, str(exc).splitlines()[0])]
    first, *rest = problems
    return ValidationError(first.message, field=first.field, kind=kind, name=name, more=rest)


def format_path(loc: Sequence[str | int]) -> str | None:
    """``("spec", "allowedUses", 1)`` -> ``spec.allowedUses[1]``; empty -> ``None``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text or None


def _problem(err: Any, root: type[BaseModel]) -> Problem:
    loc: list[str | int] = list(err.get("loc", ()))
    typ: str = err.get("type", "")
    ctx: dict[str, Any] = err.get("ctx") or {}
    value = err.get("input")
    message: str
    if typ in ("value_error", "assertion_error"):
        cause = ctx.get("error")
        if isinstance(cause, FieldError):
            if cause.field:
                loc.extend(_split_field(cause.field))
            message = cause.message
        else:
            message = str(cause) if cause is not None else err.get("msg", "invalid value")
    elif typ == "extra_forbidden":
        message = _unknown_field(root, loc)
    elif typ == "missing":
        message = "required field is missing"
    elif typ == "literal_error":
        message = _bad_choice(value, str(ctx.get("expected", "")))
    elif typ == "string_type":
        message = f"expected a string, got {show(value)}"
        if isinstance(value, bool | int | float):
            message += "; quote it if it is meant as text"
    elif typ == "int_type":
        message = f"expected an integer, got {show(value)}"
    elif typ == "bool_type":
        message = f"expected true or false, got {show(value)}"
    elif typ == "list_type":
        message = f"expected a list, got {show(value)}"
    elif typ in ("dict_type", "model_type", "model_attributes_type"):
        message = f"expected a mapping, got {show(value)}"
    elif typ in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        bound = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt")}.get(
            typ, ("<=", "le") if typ == "less_than_equal" else ("<", "lt")
        )
        message = f"{show(value)} is out of range: must be {bound[0]} {ctx.get(bound[1])}"
    else:
        message = str(err.get("msg", "invalid value")).splitlines()[0]
    return Problem(format_path(loc), message)


def _split_field(field: str) -> list[str | int]:
    """``"spec.ipNetworks[1]"`` -> ``["spec", "ipNetworks", 1]``."""
    out: list[str | int] = []
    for part in field.split("."):
        name, _, rest = part.partition("[")
        if name:
            out.append(name)
        for index in rest.replace("]", "").split("[") if rest else ():
            out.append(int(index))
    return out


def _bad_choice(value: object, expected: str) -> str:
    message = f"{show(value)} is not allowed; expected {expected}"
    if isinstance(value, str):
        options = _QUOTED_RE.findall(expected)
        same = [o for o in options if o.lower() == value.lower()]
        if same:
            message += f" (did you mean {same[0]}?)"
    return message


def _unknown_field(root: type[BaseModel], loc: Sequence[str | int]) -> str:
    key = str(loc[-1]) if loc else ""
    model = model_at(root, loc[:-1])
    if model is None:
        return "unknown field"
    unsupported: frozenset[str] = getattr(model, "CALICO_UNSUPPORTED", frozenset())
    if key in unsupported:
        return "this Calico field is not supported by tortie; remove it"
    names = [info.alias or name for name, info in model.model_fields.items()]
    same = [n for n in names if n.lower() == key.lower()]
    close = same or difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else f" (known fields: {', '.join(names)})"
    return "unknown field" + hint


def model_at(root: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The model class found by following ``loc`` (user spelling) from ``root``, if any."""
    current: Any = root
    for part in loc:
        current = _strip(current)
        origin = typing.get_origin(current)
        if isinstance(part, int):
            if origin is not list:
                return None
            current = typing.get_args(current)[0]
        elif origin is dict:
            current = typing.get_args(current)[1]
        elif isinstance(current, type) and issubclass(current, BaseModel):
            field = next(
                (info for name, info in current.model_fields.items() if part in (name, info.alias)),
                None,
            )
            if field is None:
                return None
            current = field.annotation
        else:
            return None
    current = _strip(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return current
    return None


def _strip(annotation: Any) -> Any:
    """Strip ``Annotated`` and ``X | None`` wrappers."""
    while True:
        origin = typing.get_origin(annotation)
        args = typing.get_args(annotation)
        if origin is typing.Annotated:
            annotation = args[0]
        elif origin in (typing.Union, types.UnionType):
            real = [a for a in args if a is not type(None)]
            if len(real) != 1:
                return None
            annotation = real[0]
        else:
            return annotation
