"""IPPool: defaults, validation messages, normalisation, properties."""

from __future__ import annotations

import ipaddress
from typing import Any

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tortie.model.errors import ValidationError
from tortie.model.resources import IPPool, IPPoolSpec, ObjectMeta
from tortie.model.selector import Selector

pytestmark = pytest.mark.unit


def pool_doc(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "projectcalico.org/v3",
        "kind": "IPPool",
        "metadata": {"name": "pool-a"},
        "spec": {"cidr": "10.244.0.0/16", **spec},
    }


def pool_error(**spec: Any) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        IPPool.from_document(pool_doc(**spec))
    return info.value


def test_ipv4_defaults() -> None:
    pool = IPPool.from_document(pool_doc())
    spec = pool.spec
    assert spec.cidr == "10.244.0.0/16"
    assert spec.block_size == 26
    assert spec.ipip_mode == "Never"
    assert spec.vxlan_mode == "Never"
    assert spec.nat_outgoing is False
    assert spec.disabled is False
    assert spec.node_selector == "all()"
    assert spec.allowed_uses == ["Workload", "Tunnel"]
    assert pool.ip_version == 4
    assert pool.network == ipaddress.ip_network("10.244.0.0/16")
    assert spec.selector == Selector.match_all()


def test_ipv6_defaults_and_normalisation() -> None:
    pool = IPPool.from_document(pool_doc(cidr="FD00:10:0:0::/48"))
    assert pool.spec.cidr == "fd00:10::/48"
    assert pool.spec.block_size == 122
    assert pool.ip_version == 6


def test_python_construction_uses_the_same_defaults() -> None:
    v4 = IPPool(metadata=ObjectMeta(name="a"), spec=IPPoolSpec(cidr="10.0.0.0/8"))
    v6 = IPPool(metadata=ObjectMeta(name="b"), spec=IPPoolSpec(cidr="fd00::/48"))
    assert (v4.spec.block_size, v6.spec.block_size) == (26, 122)
    assert v4.kind == "IPPool"
    assert v4.api_version == "projectcalico.org/v3"
    with pytest.raises(pydantic.ValidationError):
        IPPoolSpec(cidr="10.0.0.1/8")


def test_all_fields_round_trip() -> None:
    doc = pool_doc(
        blockSize=28,
        ipipMode="CrossSubnet",
        vxlanMode="Never",
        natOutgoing=True,
        disabled=True,
        nodeSelector="rack == 'r1'",
        allowedUses=["Tunnel"],
    )
    pool = IPPool.from_document(doc)
    assert pool.to_document() == doc
    assert list(pool.to_document()) == ["apiVersion", "kind", "metadata", "spec"]
    assert IPPool.from_document(pool.to_document()) == pool


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        ({"blockSize": 33}, "spec.blockSize", "33 is out of range: IPv4 block sizes are 20..32"),
        ({"blockSize": 19}, "spec.blockSize", "19 is out of range: IPv4 block sizes are 20..32"),
        (
            {"cidr": "fd00::/48", "blockSize": 115},
            "spec.blockSize",
            "115 is out of range: IPv6 block sizes are 116..128",
        ),
        (
            {"cidr": "fd00::/48", "blockSize": 26},
            "spec.blockSize",
            "26 is out of range: IPv6 block sizes are 116..128",
        ),
        (
            {"cidr": "10.0.0.0/28"},
            "spec.blockSize",
            "/26 blocks do not fit in the pool 10.0.0.0/28: use a blockSize of at least 28",
        ),
        (
            {"cidr": "10.244.0.1/16"},
            "spec.cidr",
            "10.244.0.1/16: host bits set, did you mean 10.244.0.0/16?",
        ),
        ({"cidr": "10.244.0.0"}, "spec.cidr", "'10.244.0.0' has no prefix length"),
        ({"cidr": "10.244.0.0/40"}, "spec.cidr", "'10.244.0.0/40' is not a valid CIDR"),
        (
            {"cidr": "169.254.0.0/16"},
            "spec.cidr",
            "169.254.0.0/16 overlaps the link-local range 169.254.0.0/16",
        ),
        ({"cidr": "169.254.10.0/24"}, "spec.cidr", "overlaps the link-local range"),
        ({"cidr": "169.0.0.0/8"}, "spec.cidr", "overlaps the link-local range"),
        ({"cidr": "fe80::/64", "blockSize": 122}, "spec.cidr", "link-local range fe80::/10"),
        (
            {"ipipMode": "Always", "vxlanMode": "CrossSubnet"},
            "spec.vxlanMode",
            "ipipMode and vxlanMode cannot both be enabled; set one of them to Never",
        ),
        (
            {"cidr": "fd00::/48", "ipipMode": "Always"},
            "spec.ipipMode",
            "IPIP is IPv4-only",
        ),
        (
            {"ipipMode": "always"},
            "spec.ipipMode",
            "'always' is not allowed; expected 'Never', 'CrossSubnet' or 'Always' "
            "(did you mean Always?)",
        ),
        ({"vxlanMode": "Sometimes"}, "spec.vxlanMode", "'Sometimes' is not allowed"),
        (
            {"ipipmode": "Always"},
            "spec.ipipmode",
            "unknown field (did you mean ipipMode?)",
        ),
        ({"natoutgoing": True}, "spec.natoutgoing", "unknown field (did you mean natOutgoing?)"),
        ({"blocksize": 26}, "spec.blocksize", "unknown field (did you mean blockSize?)"),
        ({"zzz": 1}, "spec.zzz", "unknown field (known fields: cidr, blockSize,"),
        (
            {"disableBGPExport": True},
            "spec.disableBGPExport",
            "this Calico field is not supported by tortie; remove it",
        ),
        (
            {"nodeSelector": "rack = 'r1'"},
            "spec.nodeSelector",
            "invalid selector \"rack = 'r1'\" at column 6: unexpected '='; did you mean '=='?",
        ),
        (
            {"allowedUses": ["Workload", "LoadBalancer"]},
            "spec.allowedUses[1]",
            "'LoadBalancer' is not allowed; expected 'Workload' or 'Tunnel'",
        ),
        (
            {"allowedUses": ["Tunnel", "Tunnel"]},
            "spec.allowedUses",
            "Tunnel, Tunnel lists a use twice",
        ),
        ({"blockSize": "26"}, "spec.blockSize", "expected an integer, got '26'"),
        ({"natOutgoing": "true"}, "spec.natOutgoing", "expected true or false, got 'true'"),
        ({"cidr": 10}, "spec.cidr", "expected a string, got 10; quote it if it is meant as text"),
        ({"allowedUses": "Workload"}, "spec.allowedUses", "expected a list, got 'Workload'"),
    ],
)
def test_invalid_specs(spec: dict[str, Any], field: str, message: str) -> None:
    err = pool_error(**spec)
    assert err.field == field
    assert message in err.message
    assert (err.kind, err.name) == ("IPPool", "pool-a")
    assert "\n" not in err.message


def test_missing_cidr_and_spec() -> None:
    doc = pool_doc()
    del doc["spec"]["cidr"]
    with pytest.raises(ValidationError) as info:
        IPPool.from_document(doc)
    assert (info.value.field, info.value.message) == ("spec.cidr", "required field is missing")
    del doc["spec"]
    with pytest.raises(ValidationError) as info:
        IPPool.from_document(doc)
    assert (info.value.field, info.value.message) == ("spec", "required field is missing")


def test_several_problems_are_summarised() -> None:
    err = pool_error(blockSize="26", ipipMode="always", natOutgoing="yes")
    assert err.field == "spec.blockSize"
    assert [p.field for p in err.more] == ["spec.ipipMode", "spec.natOutgoing"]
    assert len(str(err).splitlines()) == 2


def test_empty_selector_and_empty_uses_mean_the_defaults() -> None:
    pool = IPPool.from_document(pool_doc(nodeSelector="", allowedUses=[]))
    assert pool.spec.node_selector == "all()"
    assert pool.spec.allowed_uses == ["Workload", "Tunnel"]


def test_block_size_equal_to_pool_prefix_is_fine() -> None:
    assert IPPool.from_document(pool_doc(cidr="10.0.0.0/26")).spec.block_size == 26
    assert IPPool.from_document(pool_doc(cidr="10.0.0.0/32", blockSize=32)).spec.block_size == 32


def test_vxlan_on_ipv6_is_allowed() -> None:
    pool = IPPool.from_document(pool_doc(cidr="fd00::/48", vxlanMode="Always"))
    assert pool.spec.vxlan_mode == "Always"


def test_with_spec_and_with_metadata_validate() -> None:
    pool = IPPool.from_document(pool_doc())
    disabled = pool.with_spec(disabled=True)
    assert disabled.spec.disabled and not pool.spec.disabled
    versioned = pool.with_metadata(resource_version="42")
    assert versioned.metadata.resource_version == "42"
    assert versioned.spec == pool.spec
    with pytest.raises(ValidationError) as info:
        pool.with_spec(block_size=40)
    assert info.value.field == "spec.blockSize"
    with pytest.raises(ValidationError) as info:
        pool.with_metadata(name="Bad_Name")
    assert info.value.field == "metadata.name"


# --------------------------------------------------------------------------------------------
# Property test: CIDR and blockSize validation agree with the rules


@given(
    version=st.sampled_from([4, 6]),
    address=st.integers(min_value=0, max_value=2**128 - 1),
    prefix=st.integers(min_value=0, max_value=128),
    block=st.integers(min_value=0, max_value=130),
    masked=st.booleans(),
)
@settings(max_examples=500)
def test_cidr_and_block_size_rules(
    version: int, address: int, prefix: int, block: int, masked: bool
) -> None:
    bits = 32 if version == 4 else 128
    address %= 2**bits
    prefix %= bits + 1
    if masked:  # half the cases without host bits, so valid pools are common
        address &= ((1 << prefix) - 1) << (bits - prefix)
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address = (
        ipaddress.IPv4Address(address) if version == 4 else ipaddress.IPv6Address(address)
    )
    text = f"{addr}/{prefix}"
    network = ipaddress.ip_network(text, strict=False)
    lo, hi = (20, 32) if version == 4 else (116, 128)
    link_local = ipaddress.ip_network("169.254.0.0/16" if version == 4 else "fe80::/10")

    expected_field: str | None = None
    if network.network_address != addr or network.overlaps(link_local):
        expected_field = "spec.cidr"
    elif not lo <= block <= hi or block < prefix:
        expected_field = "spec.blockSize"

    try:
        pool = IPPool.from_document(pool_doc(cidr=text, blockSize=block))
    except ValidationError as err:
        assert err.field == expected_field, str(err)
        if network.network_address != addr:
            assert f"did you mean {network}?" in err.message
    else:
        assert expected_field is None
        assert pool.spec.cidr == str(network)
        assert pool.network == network
        assert pool.spec.block_size == block
        assert IPPool.from_document(pool.to_document()) == pool
