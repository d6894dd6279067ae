"""Checks and parsers for the scalar values that appear in Calico resources.

Problem: names, label maps, AS numbers, Go durations, CIDRs, interface addresses, MACs and
interface names are validated in several resources; each check must give the same precise,
actionable message everywhere.

Invariants:
- Every function here raises :class:`FieldError` (a ``ValueError``) with a message meant for
  the user, so it can run inside pydantic validators; :mod:`tortie.model.translate` turns it
  into a :class:`tortie.model.errors.ValidationError` with the field path.
- Parsers return normalised values (``10.244.0.0/16``, lowercase MACs, compressed IPv6) so
  that equal resources compare and serialise equally.

Hazards:
- ``ipaddress`` accepts integers and bytes as well as text: callers pass only ``str``.
- Strings come from YAML: leading/trailing whitespace is a user mistake, not something to
  strip silently.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from datetime import timedelta

API_VERSION = "projectcalico.org/v3"
# What 'tortie get' prints instead of a secret (and what apply reads as "keep the stored one").
REDACTED = "<redacted>"

AS_NUMBER_MIN = 1
AS_NUMBER_MAX = 4_294_967_295  # 32-bit AS numbers (RFC 6793)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

# DNS-1123 subdomain, as Kubernetes and Calico's CRD-backed resources require.
_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_NAME_MAX = 253
_LABEL_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_LABEL_MAX = 63
# Kubernetes label keys: optional DNS-subdomain prefix and '/', then a "qualified name".
_QUALIFIED_RE = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DURATION_PART_RE = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # Go accepts both micro signs
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_MAC_RE = re.compile(r"[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(\1[0-9A-Fa-f]{2}){4}")
_IFNAME_MAX = 15  # IFNAMSIZ - 1
_DURATION_MAX_SECONDS = 9_223_372_036  # Go's time.Duration is int64 nanoseconds


class FieldError(ValueError):
    """A user-facing validation failure, optionally for a sub-field of the value checked.

    ``field`` is a path relative to the model being validated, in the user's spelling
    (``"blockSize"`` or ``"bgp.asNumber"``); ``None`` means the value itself.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


def is_decimal(text: str) -> bool:
    """Only ASCII digits (``str.isdigit`` also accepts '²' and other scripts' digits)."""
    return text.isascii() and text.isdigit()


def show(value: object) -> str:
    """A short rendering of a user value for messages (YAML/JSON-like, truncated)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, str):
        text = repr(value)
    elif isinstance(value, int | float):
        text = str(value)
    elif isinstance(value, Mapping):
        text = "a mapping"
    elif isinstance(value, Sequence):
        text = "a list"
    else:
        text = type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------------------------
# Names and labels


def check_name(name: str, what: str = "name") -> str:
    """A resource name: a DNS-1123 subdomain (lowercase alnum, '-', '.'; at most 253)."""
    if len(name) > _NAME_MAX:
        raise FieldError(f"{what} is {len(name)} characters long; the limit is {_NAME_MAX}")
    if not _NAME_RE.fullmatch(name):
        hint = ""
        guess = re.sub(r"[^a-z0-9.-]+", "-", name.lower()).strip("-.")
        if guess and _NAME_RE.fullmatch(guess):
            hint = f" (did you mean {guess!r}?)"
        raise FieldError(
            f"{show(name)} is not a valid {what}: use lowercase letters, digits, '-' and '.', "
            f"starting and ending with a letter or digit{hint}"
        )
    return name


def check_namespace(namespace: str) -> str:
    """A namespace: a DNS-1123 label (lowercase alnum and '-'; at most 63)."""
    if len(namespace) > _LABEL_MAX or not _LABEL_RE.fullmatch(namespace):
        raise FieldError(
            f"{show(namespace)} is not a valid namespace: use at most 63 lowercase letters, "
            "digits and '-', starting and ending with a letter or digit"
        )
    return namespace


def _check_qualified(text: str) -> bool:
    return len(text) <= _LABEL_MAX and bool(_QUALIFIED_RE.fullmatch(text))


def check_label_key(key: str) -> str:
    """A Kubernetes-style label (or annotation) key: ``[prefix/]name``."""
    prefix, slash, name = key.rpartition("/")
    ok = _check_qualified(name) and (
        not slash or (len(prefix) <= _NAME_MAX and bool(_NAME_RE.fullmatch(prefix)))
    )
    if not ok:
        raise FieldError(
            f"label key {show(key)} is not valid: use [prefix/]name where name is at most 63 "
            "letters, digits, '-', '_' or '.' starting and ending with a letter or digit"
        )
    return key


def check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """Label keys as above; values empty or at most 63 of [A-Za-z0-9-_.] (alnum at ends)."""
    for key, value in labels.items():
        check_label_key(key)
        if value and not _check_qualified(value):
            raise FieldError(
                f"value {show(value)} of label {key!r} is not valid: use at most 63 letters, "
                "digits, '-', '_' or '.', starting and ending with a letter or digit"
            )
    return dict(labels)


# --------------------------------------------------------------------------------------------
# BGP numbers and durations


def check_as_number(number: int) -> int:
    """An AS number in 1..4294967295."""
    if not AS_NUMBER_MIN <= number <= AS_NUMBER_MAX:
        raise FieldError(
            f"{number} is out of range: AS numbers are {AS_NUMBER_MIN}..{AS_NUMBER_MAX}"
        )
    return number


def parse_as_number(value: object) -> int:
    """An AS number given as an integer or in asdot notation (``"1.10"`` = 65546)."""
    if isinstance(value, bool):
        raise FieldError(f"expected an AS number, got {show(value)}")
    if isinstance(value, int):
        return check_as_number(value)
    if isinstance(value, str):
        text = value
        if is_decimal(text):
            return check_as_number(int(text))
        high, dot, low = text.partition(".")
        if dot and is_decimal(high) and is_decimal(low):
            hi, lo = int(high), int(low)
            if hi > 0xFFFF or lo > 0xFFFF:
                raise FieldError(
                    f"{show(value)} is not a valid asdot AS number: each part is 0..65535"
                )
            return check_as_number(hi * 65536 + lo)
        raise FieldError(f"{show(value)} is not an AS number: use e.g. 64512 or '1.10'")
    if isinstance(value, float):
        raise FieldError(f"{show(value)} is not an AS number: quote asdot AS numbers (e.g. '1.10')")
    raise FieldError(f"expected an AS number, got {show(value)}")


def parse_go_duration(text: str) -> timedelta:
    """A Go ``time.Duration`` string such as ``"20s"``, ``"1m30s"``, ``"1.5h"`` or ``"0"``."""
    body = text[1:] if text[:1] in "+-" else text
    negative = text.startswith("-")
    if body == "0":
        return timedelta(0)
    pos = 0
    seconds = 0.0
    while pos < len(body):
        m = _DURATION_PART_RE.match(body, pos)
        if not m or m.group(1) in ("", "."):
            raise FieldError(
                f"{show(text)} is not a duration: use a number and a unit (ns, us, ms, s, m, "
                "h), e.g. '20s' or '1m30s'"
            )
        seconds += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if not body:
        raise FieldError("empty duration: use e.g. '20s' or '1m30s'")
    if seconds > _DURATION_MAX_SECONDS:
        raise FieldError(f"{show(text)} is out of range for a duration")
    return timedelta(seconds=-seconds if negative else seconds)


# --------------------------------------------------------------------------------------------
# Addresses


def parse_cidr(text: str) -> IPNetwork:
    """A masked network with an explicit prefix: ``10.244.0.0/16``, ``fd00:10::/48``."""
    if "/" not in text:
        raise FieldError(
            f"{show(text)} has no prefix length: write a network such as 10.244.0.0/16"
        )
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise FieldError(
            f"{show(text)} is not a valid CIDR: write a network such as 10.244.0.0/16"
        ) from None
    if loose.network_address != ipaddress.ip_interface(text).ip:
        raise FieldError(f"{text}: host bits set, did you mean {loose}?")
    return loose


def parse_cidr_or_ip(text: str) -> IPNetwork:
    """Like :func:`parse_cidr`, but a bare address means a single-address network."""
    if "/" in text:
        return parse_cidr(text)
    return ipaddress.ip_network(parse_ip(text))


def parse_ip(text: str, version: int | None = None) -> IPAddress:
    """An IPv4 or IPv6 address without prefix; ``version`` restricts the family."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        family = f"IPv{version} " if version else "IP "
        raise FieldError(f"{show(text)} is not a valid {family}address") from None
    if version is not None and addr.version != version:
        raise FieldError(f"{show(text)} is an IPv{addr.version} address; expected IPv{version}")
    return addr


def parse_interface(text: str, version: int | None = None) -> IPInterface:
    """An interface address with prefix (``192.168.49.2/24``); a bare address means /32, /128."""
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise FieldError(
            f"{show(text)} is not a valid address: write address/prefix such as 192.168.49.2/24"
        ) from None
    if version is not None and iface.version != version:
        raise FieldError(f"{show(text)} is an IPv{iface.version} address; expected IPv{version}")
    return iface


def parse_mac(text: str) -> str:
    """A 48-bit MAC with ':' or '-' separators, normalised to lowercase ``aa:bb:...``."""
    if not _MAC_RE.fullmatch(text):
        raise FieldError(f"{show(text)} is not a MAC address: use e.g. ee:ee:ee:ee:ee:ee")
    return text.replace("-", ":").lower()


def check_ifname(name: str) -> str:
    """A Linux interface name: 1..15 bytes, no '/', ':' or whitespace."""
    if (
        not name
        or len(name.encode()) > _IFNAME_MAX
        or name in (".", "..")
        or any(c in name for c in "/: \t\n")
    ):
        raise FieldError(
            f"{show(name)} is not a valid interface name: use 1..15 characters without '/', "
            "':' or spaces"
        )
    return name
