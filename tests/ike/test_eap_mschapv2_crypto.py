"""MD4 (RFC 1320 appendix A.5 test suite) and MS-CHAPv2 (RFC 2759 section 9.2 example, RFC 3079
section 3.5.3 key derivation example) against the published vectors."""

from __future__ import annotations

import pytest

from meshsec.agent.ike.eap import mschapv2_crypto as m
from meshsec.common.md4 import md4, nt_password_hash


@pytest.mark.parametrize(
    ("message", "digest"),
    [
        (b"", "31d6cfe0d16ae931b73c59d7e0c089c0"),
        (b"a", "bde52cb31de33e46245e05fbdbd6fb24"),
        (b"abc", "a448017aaf21d8525fc10ae87aa6729d"),
        (b"message digest", "d9130a8164549fe818874806e1c7014b"),
        (b"abcdefghijklmnopqrstuvwxyz", "d79e1c308aa5bbcdeea8ed63df412da9"),
        (
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
            "043f8582f241db351ce627e153e7f0e4",
        ),
        (b"1234567890" * 8, "e33b4ddc9c38f2199c3e7b164fcc0536"),
    ],
)
def test_md4_rfc1320_vectors(message: bytes, digest: str) -> None:
    assert md4(message).hex() == digest


USER = b"User"
AUTH_CHALLENGE = bytes.fromhex("5B5D7C7D7B3F2F3E3C2C602132262628")
PEER_CHALLENGE = bytes.fromhex("21402324255E262A28295F2B3A337C7E")


def test_mschapv2_rfc2759_example() -> None:
    password_hash = nt_password_hash("clientPass")
    assert password_hash.hex().upper() == "44EBBA8D5312B8D611474411F56989AE"
    assert m.challenge_hash(PEER_CHALLENGE, AUTH_CHALLENGE, USER).hex().upper() == "D02E4386BCE91226"
    response = m.nt_response(AUTH_CHALLENGE, PEER_CHALLENGE, USER, password_hash)
    assert response.hex().upper() == "82309ECD8D708B5EA08FAA3981CD83544233114A3D85D6DF"
    assert md4(password_hash).hex().upper() == "41C00C584BD2D91C4017A2A12FA59F3F"
    assert (
        m.authenticator_response(password_hash, response, PEER_CHALLENGE, AUTH_CHALLENGE, USER)
        == b"S=407A5589115FD0D6209F510FE9C04566932CDA56"
    )
    assert m.check_nt_response(AUTH_CHALLENGE, PEER_CHALLENGE, USER, password_hash, response)
    wrong = nt_password_hash("clientPasS")
    assert not m.check_nt_response(AUTH_CHALLENGE, PEER_CHALLENGE, USER, wrong, response)


def test_mppe_keys_rfc3079_example() -> None:
    password_hash = nt_password_hash("clientPass")
    response = m.nt_response(AUTH_CHALLENGE, PEER_CHALLENGE, USER, password_hash)
    master = m.master_key(password_hash, response)
    assert master.hex().upper() == "FDECE3717A8C838CB388E527AE3CDD31"
    # RFC 3079's sample start key is the server's send key, which is the client's receive key.
    server_send = m.asymmetric_start_key(master, send=True, server=True)
    assert server_send.hex().upper() == "8B7CDC149B993A1BA118CB153F56DCCB"
    assert server_send == m.asymmetric_start_key(master, send=False, server=False)
    server_receive = m.asymmetric_start_key(master, send=False, server=True)
    assert server_receive == m.asymmetric_start_key(master, send=True, server=False) != server_send
    assert m.authenticator_msk(password_hash, response) == server_receive + server_send + bytes(32)
