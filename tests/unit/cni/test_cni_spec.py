"""CNI spec rules: versions per verb, result shapes per version, names, CNI_ARGS."""

from __future__ import annotations

import json

import pytest
from cni_fakes import ADD_RESULT

from tortie.cni import spec
from tortie.model.cnierrors import CniError
from tortie.model.cniwire import Code


@pytest.mark.parametrize("version", spec.SUPPORTED_VERSIONS)
def test_supported_versions_accepted_for_add_and_del(version: str) -> None:
    assert spec.check_version(version, "ADD") == version
    assert spec.check_version(version, "DEL") == version


@pytest.mark.parametrize("version", ["0.1.0", "0.2.0", "0.3.0", "1.2.0", "2.0.0", "x", "1.0"])
def test_unknown_versions_are_code_1_naming_both(version: str) -> None:
    with pytest.raises(CniError) as err:
        spec.check_version(version, "ADD")
    assert err.value.code == Code.INCOMPATIBLE_VERSION
    assert version in err.value.details and "1.0.0" in err.value.details


@pytest.mark.parametrize("value", [None, "", 1, ["1.0.0"]])
def test_missing_or_non_string_version_is_code_1(value: object) -> None:
    with pytest.raises(CniError) as err:
        spec.check_version(value, "ADD")
    assert err.value.code == Code.INCOMPATIBLE_VERSION


@pytest.mark.parametrize(
    ("command", "too_old", "ok"),
    [("CHECK", "0.3.1", "0.4.0"), ("GC", "1.0.0", "1.1.0"), ("STATUS", "1.0.0", "1.1.0")],
)
def test_verbs_need_their_version(command: str, too_old: str, ok: str) -> None:
    assert spec.check_version(ok, command) == ok
    with pytest.raises(CniError) as err:
        spec.check_version(too_old, command)
    assert err.value.code == Code.INCOMPATIBLE_VERSION
    assert f"does not allow {command}" in err.value.msg


@pytest.mark.parametrize("cid", ["abc", "0a_b.c-d", "A" * 200])
def test_good_container_ids(cid: str) -> None:
    assert spec.check_container_id(cid) == cid


@pytest.mark.parametrize("cid", ["", "-abc", "_x", "a b", "a/b", "a;b", "é"])
def test_bad_container_ids_are_code_4(cid: str) -> None:
    with pytest.raises(CniError) as err:
        spec.check_container_id(cid)
    assert err.value.code == Code.INVALID_ENVIRONMENT


@pytest.mark.parametrize("name", ["", ".", "..", "a" * 16, "a/b", "a:b", "a b", "a\tb"])
def test_bad_ifnames_are_code_4(name: str) -> None:
    with pytest.raises(CniError) as err:
        spec.check_ifname(name)
    assert err.value.code == Code.INVALID_ENVIRONMENT


def test_good_ifnames() -> None:
    for name in ("eth0", "net1", "a" * 15, "e.1"):
        assert spec.check_ifname(name) == name


@pytest.mark.parametrize("name", [None, "", "-x", "a b", 7])
def test_bad_network_names_are_code_7(name: object) -> None:
    with pytest.raises(CniError) as err:
        spec.check_network_name(name)
    assert err.value.code == Code.INVALID_NETWORK_CONFIG


def test_cni_args() -> None:
    assert spec.parse_cni_args("") == {}
    assert spec.parse_cni_args("A=1;B=x=y;;C=") == {"A": "1", "B": "x=y", "C": ""}
    for bad in ("A", "A=1;B", "=1"):
        with pytest.raises(CniError) as err:
            spec.parse_cni_args(bad)
        assert err.value.code == Code.INVALID_ENVIRONMENT


def test_get_ci_matches_keys_case_insensitively() -> None:
    runtime = {"IPs": ["10.0.0.1"], "portMappings": []}
    assert spec.get_ci(runtime, "ips") == ["10.0.0.1"]
    assert spec.get_ci(runtime, "PortMappings") == []
    assert spec.get_ci(runtime, "mac") is None


def test_result_1_0_0_is_canonical_minus_1_1_fields() -> None:
    out = spec.shape_result(ADD_RESULT, "1.0.0")
    assert out["cniVersion"] == "1.0.0"
    assert all("mtu" not in i for i in out["interfaces"])
    assert out["ips"] == ADD_RESULT["ips"]
    assert out["routes"] == ADD_RESULT["routes"]
    assert out["dns"] == {}


def test_result_1_1_0_keeps_interface_mtu() -> None:
    out = spec.shape_result(ADD_RESULT, "1.1.0")
    assert out["interfaces"][1]["mtu"] == 1480
    assert "version" not in out["ips"][0]


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0"])
def test_legacy_results_carry_ip_version(version: str) -> None:
    out = spec.shape_result(ADD_RESULT, version)
    assert out["cniVersion"] == version
    assert out["ips"][0]["version"] == "4"
    assert out["ips"][0]["interface"] == 1
    v6 = spec.shape_result({"ips": [{"address": "fd00::1/128"}]}, version)
    assert v6["ips"][0]["version"] == "6"


def test_canonical_result_reads_every_version() -> None:
    for version in spec.SUPPORTED_VERSIONS:
        shaped = spec.shape_result(ADD_RESULT, version)
        back = spec.canonical_result(shaped)
        assert back["ips"] == ADD_RESULT["ips"]
        assert [i["name"] for i in back["interfaces"]] == ["cali1234567890a", "eth0"]


def test_canonical_result_refuses_garbage_and_0_2_0() -> None:
    for bad in ([], "x", {"ips": "nope"}, {"interfaces": [1]}):
        with pytest.raises(CniError) as err:
            spec.canonical_result(bad)
        assert err.value.code == Code.DECODE_FAILURE
    with pytest.raises(CniError) as err:
        spec.canonical_result({"ip4": {"ip": "10.0.0.1/24"}})
    assert err.value.code == Code.INCOMPATIBLE_VERSION


def test_merge_keeps_previous_and_shifts_our_indexes() -> None:
    prev = {
        "interfaces": [{"name": "br0"}, {"name": "net1", "sandbox": "/x"}],
        "ips": [{"address": "192.168.0.2/24", "interface": 1}],
        "dns": {"nameservers": ["10.0.0.10"]},
    }
    merged = spec.merge_results(prev, ADD_RESULT)
    assert [i["name"] for i in merged["interfaces"]] == ["br0", "net1", "cali1234567890a", "eth0"]
    assert merged["ips"][0] == prev["ips"][0]
    assert merged["ips"][1]["interface"] == 3
    assert merged["dns"] == prev["dns"]
    assert spec.merge_results(None, ADD_RESULT) is ADD_RESULT


def test_error_json_shape() -> None:
    doc = json.loads(CniError(7, "bad", "why").to_json("1.0.0"))
    assert doc == {"cniVersion": "1.0.0", "code": 7, "msg": "bad", "details": "why"}
    assert "details" not in json.loads(CniError(7, "bad").to_json("1.0.0"))
