"""Scalar checks: names, labels, AS numbers, durations, addresses."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tortie.model.fields import (
    FieldError,
    check_ifname,
    check_labels,
    check_name,
    check_namespace,
    parse_as_number,
    parse_cidr,
    parse_cidr_or_ip,
    parse_go_duration,
    parse_interface,
    parse_ip,
    parse_mac,
    show,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name", ["a", "default-ipv4-ippool", "my.ippool-1", "0", "a" * 253])
def test_valid_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "-a", "a-", "A", "a_b", "a..b", ".a", "a/b", "a b"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(FieldError, match="is not a valid name"):
        check_name(name)


def test_name_hint_and_length() -> None:
    with pytest.raises(FieldError, match=r"did you mean 'pool-a'\?"):
        check_name("Pool_A")
    with pytest.raises(FieldError, match="254 characters long; the limit is 253"):
        check_name("a" * 254)


def test_namespace() -> None:
    assert check_namespace("kube-system") == "kube-system"
    for bad in ("a.b", "A", "a" * 64, ""):
        with pytest.raises(FieldError, match="not a valid namespace"):
            check_namespace(bad)


def test_labels() -> None:
    ok = {"kubernetes.io/hostname": "node-1", "rack": "", "a_b.c-d": "X_y.z"}
    assert check_labels(ok) == ok
    with pytest.raises(FieldError, match="label key 'bad key'"):
        check_labels({"bad key": "v"})
    with pytest.raises(FieldError, match="label key 'Bad_Prefix/x'"):
        check_labels({"Bad_Prefix/x": "v"})
    with pytest.raises(FieldError, match="value 'a b' of label 'k'"):
        check_labels({"k": "a b"})
    with pytest.raises(FieldError, match="value"):
        check_labels({"k": "v" * 64})


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1, 1), (64512, 64512), (4294967295, 4294967295), ("63400", 63400), ("1.10", 65546)],
)
def test_as_numbers(value: object, expected: int) -> None:
    assert parse_as_number(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "0 is out of range: AS numbers are 1..4294967295"),
        (4294967296, "out of range"),
        (-1, "out of range"),
        ("0.0", "out of range"),
        ("1.65536", "each part is 0..65535"),
        ("abc", "is not an AS number"),
        (1.5, "quote asdot AS numbers"),
        (True, "expected an AS number, got true"),
        (None, "expected an AS number, got null"),
    ],
)
def test_bad_as_numbers(value: object, message: str) -> None:
    with pytest.raises(FieldError, match=message):
        parse_as_number(value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0),
        ("20s", 20),
        ("1m30s", 90),
        ("1.5h", 5400),
        ("300ms", 0.3),
        ("1h2m3s", 3723),
        ("-5s", -5),
        ("+5s", 5),
        ("2us", 2e-6),
        ("2µs", 2e-6),
        (".5s", 0.5),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "5", "s", "1.5.5s", "5 s", "5d", "-", ".s", "1m-2s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(FieldError, match="duration"):
        parse_go_duration(text)


def test_cidr() -> None:
    assert str(parse_cidr("10.244.0.0/16")) == "10.244.0.0/16"
    assert str(parse_cidr("fd00:0:0::/48")) == "fd00::/48"
    assert str(parse_cidr("10.0.0.0/255.255.0.0")) == "10.0.0.0/16"
    with pytest.raises(
        FieldError, match=r"^10.244.0.1/16: host bits set, did you mean 10.244.0.0/16\?$"
    ):
        parse_cidr("10.244.0.1/16")
    with pytest.raises(FieldError, match="has no prefix length"):
        parse_cidr("10.0.0.0")
    with pytest.raises(FieldError, match="not a valid CIDR"):
        parse_cidr("10.0.0.0/33")
    with pytest.raises(FieldError, match="not a valid CIDR"):
        parse_cidr("banana/8")
    assert str(parse_cidr_or_ip("10.0.0.5")) == "10.0.0.5/32"
    assert str(parse_cidr_or_ip("fd00::5")) == "fd00::5/128"


def test_ip_and_interface() -> None:
    assert str(parse_ip("10.0.0.1", 4)) == "10.0.0.1"
    with pytest.raises(FieldError, match="is an IPv6 address; expected IPv4"):
        parse_ip("fd00::1", 4)
    with pytest.raises(FieldError, match="not a valid IPv4 address"):
        parse_ip("10.0.0.256", 4)
    assert str(parse_interface("192.168.49.2/24", 4)) == "192.168.49.2/24"
    assert str(parse_interface("192.168.49.2")) == "192.168.49.2/32"
    with pytest.raises(FieldError, match="expected IPv6"):
        parse_interface("192.168.49.2/24", 6)
    with pytest.raises(FieldError, match="not a valid address"):
        parse_interface("192.168.49.2/40")


def test_mac_and_ifname() -> None:
    assert parse_mac("EE:EE:ee:ee:ee:ee") == "ee:ee:ee:ee:ee:ee"
    assert parse_mac("aa-bb-cc-dd-ee-ff") == "aa:bb:cc:dd:ee:ff"
    for bad in ("aa:bb:cc:dd:ee", "aa:bb-cc:dd:ee:ff", "gg:bb:cc:dd:ee:ff"):
        with pytest.raises(FieldError, match="not a MAC address"):
            parse_mac(bad)
    assert check_ifname("cali1234567890a") == "cali1234567890a"
    for bad in ("", "cali1234567890ab", "a/b", "a b", "a:b", "."):
        with pytest.raises(FieldError, match="not a valid interface name"):
            check_ifname(bad)


def test_show() -> None:
    assert show(True) == "true"
    assert show(None) == "null"
    assert show("x") == "'x'"
    assert show(3) == "3"
    assert show({}) == "a mapping"
    assert show([]) == "a list"
    assert show("x" * 100).endswith("...")
