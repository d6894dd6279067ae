"""Generated ExaBGP and BIRD configs: content, and accepted by the real parsers."""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from tortie.bgp import bird, exabgp
from tortie.bgp.types import BGPConfigError, BGPPeerSpec, SpeakerConfig

A = IPv4Address
EXABGP = Path(sys.executable).with_name("exabgp")


def mesh_config(password: str = 'p a;s"s{x}', **kw: object) -> SpeakerConfig:
    peers = (
        BGPPeerSpec(A("10.0.0.2"), 64512, "node-to-node mesh", passive=True, node_name="n2"),
        BGPPeerSpec(A("10.0.0.3"), 65001, "global", password=password, port=1179, hold_time=9),
        BGPPeerSpec(A("10.0.0.4"), 64512, "node specific", hold_time=0),
    )
    return SpeakerConfig("n1", A("10.0.0.1"), A("10.0.0.1"), 64512, peers=peers, **kw)  # type: ignore[arg-type]


def rr_config() -> SpeakerConfig:
    peers = (
        BGPPeerSpec(
            A("10.0.0.2"),
            64512,
            "node specific",
            route_reflector_client=True,
            hold_time=6,
            keepalive=2,
        ),
        BGPPeerSpec(A("10.0.0.5"), 64512, "route reflector", passive=True),
        BGPPeerSpec(A("192.168.1.1"), 65001, "global", password="s3cret"),
    )
    return SpeakerConfig(
        "rr1", A("10.0.0.1"), A("10.0.0.1"), 64512, peers=peers, rr_cluster_id=A("244.0.0.1")
    )


# -- ExaBGP --------------------------------------------------------------------------------------


def test_exabgp_config_content(tmp_path: Path) -> None:
    text = exabgp.render_config(mesh_config(), exabgp.helper_argv(tmp_path, sys.executable))
    assert (
        f"run {sys.executable} -m tortie.bgp.exabgp_helper --socket {tmp_path}/exabgp.sock" in text
    )
    assert text.count("neighbor 10.0.0.") == 3
    assert "passive true;" in text and "passive false;" in text
    assert "connect 1179;" in text and "hold-time 9;" in text and "hold-time 0;" in text
    assert "local-address 10.0.0.1;" in text and "router-id 10.0.0.1;" in text
    assert "peer-as 65001;" in text and "manual-eor true;" in text
    assert "graceful-restart 120;" in text
    # The password never appears raw (the tokeniser would split it): base64 only.
    assert 'p a;s"s{x}' not in text
    assert base64.b64encode(b'p a;s"s{x}').decode() in text and "md5-base64 true;" in text
    assert "graceful-restart disable;" in exabgp.render_config(
        mesh_config(graceful_restart=0), ["/bin/true"]
    )


def test_exabgp_env_binds_and_runs_as_root() -> None:
    env = exabgp.exabgp_env(mesh_config(listen_port=1790))
    assert env["exabgp_tcp_bind"] == "10.0.0.1" and env["exabgp_tcp_port"] == "1790"
    assert env["exabgp_daemon_user"] == "root" and env["exabgp_api_cli"] == "false"


def test_exabgp_refuses_reflectors_and_unsafe_paths(tmp_path: Path) -> None:
    with pytest.raises(BGPConfigError, match="route reflector"):
        exabgp.render_config(rr_config(), ["/bin/true"])
    with pytest.raises(BGPConfigError, match="spaces"):
        exabgp.helper_argv(tmp_path / "a b", sys.executable)


@pytest.mark.skipif(not EXABGP.exists(), reason="exabgp is not installed in the venv")
@pytest.mark.parametrize("gr", [120, 0])
def test_exabgp_accepts_the_generated_config(tmp_path: Path, gr: int) -> None:
    conf = tmp_path / "exabgp.conf"
    conf.write_text(
        exabgp.render_config(
            mesh_config(graceful_restart=gr), exabgp.helper_argv(tmp_path, sys.executable)
        )
    )
    proc = subprocess.run(
        [str(EXABGP), "validate", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- BIRD ------------------------------------------------------------------------------------


def test_bird_config_content() -> None:
    text = bird.render_config(rr_config(), [IPv4Network("10.244.1.0/26")])
    assert "router id 10.0.0.1;" in text
    assert "route 10.244.1.0/26 blackhole;" in text
    assert "protocol bgp Node_10_0_0_2 from tortie_peer {" in text
    assert "rr client;" in text and "rr cluster id 244.0.0.1;" in text
    assert text.count("rr client;") == 1  # neither the other reflector nor the eBGP peer
    assert "hold time 6;" in text and "keepalive time 2;" in text
    assert "passive on;" in text and 'password "s3cret";' in text
    assert "error wait time 1, 10;" in text and "graceful restart on;" in text
    # BIRD never writes the kernel: the only kernel protocol exports nothing.
    assert "export none;" in text.split("protocol kernel", 1)[1].split("}", 1)[0]
    assert "export where source ~ [ RTS_STATIC, RTS_BGP ];" in text


def test_bird_protocol_names_round_trip() -> None:
    for peer in rr_config().peers:
        name = bird.protocol_name(peer)
        assert bird.peer_of_protocol(name) == (peer.peer_type, peer.address)
    assert bird.peer_of_protocol("device1") is None
    assert bird.peer_of_protocol("Node_not_an_ip") is None


def test_bird_refuses_unwritable_passwords() -> None:
    cfg = SpeakerConfig(
        "n1",
        A("10.0.0.1"),
        A("10.0.0.1"),
        1,
        peers=(BGPPeerSpec(A("10.0.0.2"), 1, "global", password='a"b'),),
    )
    with pytest.raises(BGPConfigError, match="BIRD cannot use it"):
        bird.render_config(cfg, [])


@pytest.mark.skipif(shutil.which("bird") is None, reason="bird2 is not installed")
@pytest.mark.parametrize(
    "config", [rr_config(), mesh_config(password="p a;s{x}'", graceful_restart=0)]
)
def test_bird_accepts_the_generated_config(tmp_path: Path, config: SpeakerConfig) -> None:
    conf = tmp_path / "bird.conf"
    conf.write_text(bird.render_config(config, [IPv4Network("10.244.1.0/26")]))
    proc = subprocess.run(
        ["bird", "-p", "-c", str(conf)], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- SpeakerConfig validation ---------------------------------------------------------------


def test_speaker_config_rejects_impossible_setups() -> None:
    me = A("10.0.0.1")
    with pytest.raises(BGPConfigError, match="own address"):
        SpeakerConfig("n", me, me, 1, peers=(BGPPeerSpec(me, 1, "global"),))
    with pytest.raises(BGPConfigError, match="twice"):
        peer = BGPPeerSpec(A("10.0.0.2"), 1, "global")
        SpeakerConfig("n", me, me, 1, peers=(peer, peer))
    with pytest.raises(BGPConfigError, match="hold time"):
        BGPPeerSpec(A("10.0.0.2"), 1, "global", hold_time=2)
    with pytest.raises(BGPConfigError, match="keepalive"):
        BGPPeerSpec(A("10.0.0.2"), 1, "global", hold_time=9, keepalive=9)
    with pytest.raises(BGPConfigError, match="peer type"):
        BGPPeerSpec(A("10.0.0.2"), 1, "friend")  # type: ignore[arg-type]
    with pytest.raises(BGPConfigError, match="graceful restart"):
        SpeakerConfig("n", me, me, 1, graceful_restart=5000)
