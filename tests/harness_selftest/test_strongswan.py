"""The strongSwan harness: config rendering, output parsing, and two real charons building a tunnel."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshsec.common.secrets import Secret
from tests.harness.netns import Host, Lab
from tests.harness.strongswan import (
    CertAuth,
    CharonFactory,
    CharonSettings,
    Child,
    Connection,
    IkeSa,
    Psk,
    SwanctlError,
    parse_list_sas,
    parse_pretty,
    render_conf,
    strongswan_conf,
    swanctl_conf,
)

PROPOSAL = "aes256gcm16-prfsha256-x25519"
A_UNDER, B_UNDER = "198.18.1.1", "198.18.1.2"
A_INNER, B_INNER = "198.19.0.1", "198.19.0.2"

# Captured from `swanctl --list-sas --pretty` (strongSwan 5.9.8), with an identity that holds
# spaces and '=' and a traffic-selector list of two.
PRETTY = """list-sa event {
  peer {
    uniqueid = 1
    version = 2
    state = ESTABLISHED
    local-host = 198.18.1.1
    local-port = 4500
    local-id = C=CH, O=x y, CN=a
    remote-host = 198.18.1.2
    remote-port = 4500
    remote-id = b.test
    initiator = yes
    initiator-spi = 48863e28c460a16d
    responder-spi = f071446b5033ea30
    nat-remote = yes
    nat-any = yes
    encr-alg = AES_GCM_16
    encr-keysize = 256
    prf-alg = PRF_HMAC_SHA2_256
    dh-group = CURVE_25519
    established = 0
    rekey-time = 14331
    child-sas {
      net-1 {
        name = net
        uniqueid = 1
        reqid = 1
        state = INSTALLED
        mode = TUNNEL
        protocol = ESP
        encap = yes
        spi-in = f628f8be
        spi-out = 1b28aa73
        encr-alg = AES_GCM_16
        encr-keysize = 256
        bytes-in = 252
        packets-in = 3
        bytes-out = 168
        packets-out = 2
        rekey-time = 3298
        life-time = 3960
        install-time = 0
        local-ts = [
          198.19.0.1/32
          198.19.1.1/32
        ]
        remote-ts = [
          198.19.0.2/32
        ]
      }
    }
  }
}
list-sas reply {
}
"""


def test_parse_list_sas_pretty() -> None:
    (sa,) = parse_list_sas(PRETTY)
    assert (sa.name, sa.state, sa.initiator) == ("peer", "ESTABLISHED", True)
    assert sa.local_id == "C=CH, O=x y, CN=a"
    assert (sa.initiator_spi, sa.responder_spi) == ("48863e28c460a16d", "f071446b5033ea30")
    assert (sa.local_port, sa.nat_local, sa.nat_remote) == (4500, False, True)
    assert (sa.encr_alg, sa.encr_keysize, sa.prf_alg, sa.dh_group) == (
        "AES_GCM_16", 256, "PRF_HMAC_SHA2_256", "CURVE_25519",
    )
    child = sa.child("net")
    assert child is not None and sa.child("other") is None
    assert (child.state, child.mode, child.encap, child.spi_in, child.spi_out) == (
        "INSTALLED", "TUNNEL", True, "f628f8be", "1b28aa73",
    )
    assert (child.bytes_in, child.packets_in, child.bytes_out, child.packets_out) == (252, 3, 168, 2)
    assert child.local_ts == ("198.19.0.1/32", "198.19.1.1/32")
    assert child.remote_ts == ("198.19.0.2/32",)
    assert parse_pretty("list-sas reply {\n}\n") == [{}]


@pytest.mark.parametrize("broken", [PRETTY[:400], PRETTY.replace("  peer {", "  peer {{"), "garbage\n"])
def test_parse_pretty_rejects_broken_output(broken: str) -> None:
    with pytest.raises(ValueError):
        parse_pretty(broken)


def test_render_conf_quotes_and_nests() -> None:
    text = render_conf({"a": {"id": "C=CH, O=x \"y\"", "n": 3, "on": True, "l": ["x", "y z"]}})
    assert text == 'a {\n  id = "C=CH, O=x \\"y\\""\n  n = 3\n  on = yes\n  l = x,"y z"\n}\n'
    with pytest.raises(ValueError, match="config key"):
        render_conf({"bad key": "x"})


def test_configs_carry_the_settings_tests_rely_on(tmp_path: Path) -> None:
    settings = CharonSettings(dos_protection=False, retransmit_tries=2, retransmit_timeout=0.5,
                              extra={"plugins.kernel-libipsec.allow_peer_ts": True})
    conf = strongswan_conf(settings, tmp_path / "v.sock", tmp_path / "c.log")
    load = next(line for line in conf.splitlines() if line.strip().startswith("load ="))
    assert load.index("kernel-libipsec") < load.index("kernel-netlink")
    for expected in ("load_modular = no", "dos_protection = no", "retransmit_tries = 2",
                     "retransmit_timeout = 0.5", f"socket = unix://{tmp_path}/v.sock",
                     f"path = {tmp_path}/c.log", "allow_peer_ts = yes"):
        assert expected in conf
    assert "charon-systemd {\n  journal {\n    default = -1" in conf
    with pytest.raises(ValueError, match="kernel-libipsec must come before"):
        CharonSettings(plugins=("kernel-netlink", "kernel-libipsec"))

    conn = _conn("peer", A_UNDER, B_UNDER, "a.test", "b.test", A_INNER, B_INNER, Psk(Secret("s3cret")))
    swan = swanctl_conf([conn])
    assert "s3cret" not in swan and "secret = 0x" + b"s3cret".hex() in swan
    assert f"proposals = {PROPOSAL}" in swan and "local_ts = 198.19.0.1/32" in swan
    with pytest.raises(ValueError, match="connection name"):
        swanctl_conf([_conn("bad name", A_UNDER, B_UNDER, "a", "b", A_INNER, B_INNER, Psk(Secret("x")))])


def _conn(name: str, local: str, remote: str, local_id: str, remote_id: str, local_inner: str,
          remote_inner: str, auth: Psk | CertAuth) -> Connection:
    return Connection(
        name=name, local_addrs=(local,), remote_addrs=(remote,), local_id=local_id, remote_id=remote_id,
        auth=auth, proposals=(PROPOSAL,),
        children=(Child("net", local_ts=(f"{local_inner}/32",), remote_ts=(f"{remote_inner}/32",)),),
    )


def _two_hosts(lab: Lab) -> tuple[Host, Host]:
    a, b = lab.host("a"), lab.host("b")
    lab.link(a, b, f"{A_UNDER}/24", f"{B_UNDER}/24")
    a.add_loopback_address(f"{A_INNER}/32")
    b.add_loopback_address(f"{B_INNER}/32")
    return a, b


def _established(sas: list[IkeSa]) -> IkeSa | None:
    return next((sa for sa in sas if sa.state == "ESTABLISHED" and sa.child("net")), None)


def _assert_tunnel(a_sa: IkeSa, b_sa: IkeSa) -> None:
    assert (a_sa.state, b_sa.state) == ("ESTABLISHED", "ESTABLISHED")
    assert a_sa.initiator and not b_sa.initiator
    assert (a_sa.initiator_spi, a_sa.responder_spi) == (b_sa.initiator_spi, b_sa.responder_spi)
    for sa in (a_sa, b_sa):
        assert (sa.encr_alg, sa.encr_keysize, sa.prf_alg, sa.dh_group) == (
            "AES_GCM_16", 256, "PRF_HMAC_SHA2_256", "CURVE_25519",
        )
        # libipsec fakes a NAT, so both ends float to 4500 (see notes/strongswan-peer.md).
        assert (sa.local_port, sa.remote_port) == (4500, 4500)
    a_child, b_child = a_sa.child("net"), b_sa.child("net")
    assert a_child is not None and b_child is not None
    assert (a_child.state, b_child.state) == ("INSTALLED", "INSTALLED")
    assert (a_child.spi_in, a_child.spi_out) == (b_child.spi_out, b_child.spi_in)
    assert a_child.encap and b_child.encap
    assert a_child.local_ts == b_child.remote_ts == (f"{A_INNER}/32",)


@pytest.mark.netns
@pytest.mark.strongswan
def test_psk_tunnel_between_two_charons(lab: Lab, charons: CharonFactory) -> None:
    a, b = _two_hosts(lab)
    psk = Psk(Secret(os.urandom(24)))
    sw_a = charons.start(a, [_conn("peer", A_UNDER, B_UNDER, "a.test", "b.test", A_INNER, B_INNER, psk)])
    sw_b = charons.start(b, [_conn("peer", B_UNDER, A_UNDER, "b.test", "a.test", B_INNER, A_INNER, psk)])
    assert a.ping(B_INNER, src=A_INNER, count=1, wait=0.3).received == 0  # no tunnel, no route yet

    sw_a.initiate("peer", "net", timeout=10)
    a_sa = sw_a.wait_for(_established)
    b_sa = sw_b.wait_for(_established)
    _assert_tunnel(a_sa, b_sa)
    assert "ipsec0" in a.interfaces() and "ipsec0" in b.interfaces()

    result = a.ping(B_INNER, src=A_INNER, count=5)
    assert result.ok, result.output
    a_ike, b_ike = sw_a.ike_sa("peer"), sw_b.ike_sa("peer")
    assert a_ike is not None and b_ike is not None
    a_net, b_net = a_ike.child("net"), b_ike.child("net")
    assert a_net is not None and b_net is not None
    assert a_net.packets_out >= 5 and a_net.packets_in >= 5
    assert b_net.packets_in >= 5 and b_net.bytes_in >= 5 * 84

    sw_a.terminate(ike="peer")
    sw_b.wait_for(lambda sas: not sas)
    assert sw_a.list_sas() == [] and sw_b.list_sas() == []
    assert a.ping(B_INNER, src=A_INNER, count=1, wait=0.3).received == 0

    pid = sw_a.pid
    assert sw_a.stop() is not None  # reaped, so its exit code is known
    assert pid is not None and not os.path.exists(f"/proc/{pid}")
    assert not sw_a.vici_socket.exists()
    assert "CHILD_SA net{1} established" in sw_a.log_text()


@pytest.mark.netns
@pytest.mark.strongswan
def test_retransmit_settings_take_effect(lab: Lab, charons: CharonFactory) -> None:
    a, _ = _two_hosts(lab)  # b runs no charon: every IKE_SA_INIT goes unanswered
    fast = CharonSettings(retransmit_tries=1, retransmit_timeout=0.2, retransmit_base=1.0)
    psk = Psk(Secret("unused-psk-0123456789"))
    conn = _conn("peer", A_UNDER, B_UNDER, "a.test", "b.test", A_INNER, B_INNER, psk)
    sw_a = charons.start(a, [conn], fast)
    with pytest.raises(SwanctlError, match=r"initiate failed|establishing"):
        sw_a.initiate("peer", "net", timeout=10)
    assert "giving up after 1 retransmits" in sw_a.log_text()


def _cert_files(tmp: Path) -> dict[str, CertAuth]:
    now = datetime.datetime.now(datetime.UTC)
    valid_from, valid_to = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshsec test CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(valid_from).not_valid_after(valid_to)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    (tmp / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    out: dict[str, CertAuth] = {}
    for fqdn in ("a.test", "b.test"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, fqdn)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(valid_from).not_valid_after(valid_to)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(fqdn)]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        (tmp / f"{fqdn}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (tmp / f"{fqdn}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        out[fqdn] = CertAuth(cert=tmp / f"{fqdn}.crt", key=tmp / f"{fqdn}.key", ca=tmp / "ca.pem")
    return out


@pytest.mark.netns
@pytest.mark.strongswan
def test_certificate_tunnel_between_two_charons(lab: Lab, charons: CharonFactory, tmp_path: Path) -> None:
    a, b = _two_hosts(lab)
    certs = _cert_files(tmp_path)
    sw_a = charons.start(a, [_conn("peer", A_UNDER, B_UNDER, "a.test", "b.test", A_INNER, B_INNER,
                                   certs["a.test"])])
    sw_b = charons.start(b, [_conn("peer", B_UNDER, A_UNDER, "b.test", "a.test", B_INNER, A_INNER,
                                   certs["b.test"])])
    sw_a.initiate("peer", "net", timeout=10)
    _assert_tunnel(sw_a.wait_for(_established), sw_b.wait_for(_established))
    assert a.ping(B_INNER, src=A_INNER).ok
    assert "authentication of 'b.test' with ECDSA" in sw_a.log_text()


@pytest.mark.netns
@pytest.mark.strongswan
def test_tunnel_through_nat_box(lab: Lab, charons: CharonFactory) -> None:
    """A node behind the lab's NAT box reaches a responder that accepts any address (NAT-T path)."""
    sw = lab.switch("sw")
    peer, node = lab.host("peer"), lab.host("node")
    sw.attach(peer, "198.18.0.2/24")
    lab.nat_box("nat", inside=node, inside_cidr="198.18.100.1/24", node_cidr="198.18.100.2/24",
                outside=sw, outside_cidr="198.18.0.1/24")
    node.add_loopback_address(f"{A_INNER}/32")
    peer.add_loopback_address(f"{B_INNER}/32")
    psk = Psk(Secret(os.urandom(16)))
    sw_node = charons.start(node, [_conn("peer", "198.18.100.2", "198.18.0.2", "node.test", "peer.test",
                                         A_INNER, B_INNER, psk)])
    sw_peer = charons.start(peer, [_conn("node", "198.18.0.2", "%any", "peer.test", "node.test",
                                         B_INNER, A_INNER, psk)])
    sw_node.initiate("peer", "net", timeout=10)
    node_sa, peer_sa = sw_node.wait_for(_established), sw_peer.wait_for(_established)
    assert node_sa.nat_local and peer_sa.nat_remote  # a real NAT, seen from both sides
    assert peer_sa.remote_host == "198.18.0.1"  # the NAT box's outside address
    assert node.ping(B_INNER, src=A_INNER).ok
