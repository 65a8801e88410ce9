"""EAP and EAP-MSCHAPv2 packets, and the authenticator driven through a whole exchange with the
RFC 2759 example (user "User", password "clientPass", its challenges): it accepts the RFC's
NT-Response, answers the RFC's AuthenticatorResponse, derives the MSK; a wrong password, an
unknown user, a renamed user and malformed packets end in EAP-Failure."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshsec.agent.ike.eap import message as m
from meshsec.agent.ike.eap import mschapv2_crypto as crypto
from meshsec.agent.ike.eap.mschapv2 import MschapV2Authenticator, State
from meshsec.common.md4 import nt_password_hash
from meshsec.common.secrets import Secret

AUTH_CHALLENGE = bytes.fromhex("5B5D7C7D7B3F2F3E3C2C602132262628")
PEER_CHALLENGE = bytes.fromhex("21402324255E262A28295F2B3A337C7E")
NT_RESPONSE = bytes.fromhex("82309ECD8D708B5EA08FAA3981CD83544233114A3D85D6DF")
USERS = {b"User": Secret(nt_password_hash("clientPass"))}


def _authenticator(identity: bytes = b"User") -> MschapV2Authenticator:
    return MschapV2Authenticator(identity, USERS.get, lambda n: AUTH_CHALLENGE[:n])


def _response(ms_id: int, nt_response: bytes = NT_RESPONSE, name: bytes = b"User") -> m.EapPacket:
    body = m.MsResponse(ms_id, PEER_CHALLENGE, nt_response, 0, name).encode()
    return m.EapPacket(m.Code.RESPONSE, ms_id, m.EapType.MSCHAPV2, body)


def _ack(opcode: int, identifier: int) -> m.EapPacket:
    return m.EapPacket(m.Code.RESPONSE, identifier, m.EapType.MSCHAPV2, m.MsResult(opcode).encode())


def test_rfc2759_example_end_to_end() -> None:
    auth = _authenticator()
    challenge = m.decode(auth.start().encode())
    assert (challenge.code, challenge.type) == (m.Code.REQUEST, m.EapType.MSCHAPV2)
    inner = m.decode_mschapv2(challenge.data)
    assert isinstance(inner, m.MsChallenge) and inner.challenge == AUTH_CHALLENGE and inner.name == b"meshsec"
    success = auth.receive(m.decode(_response(inner.ms_id).encode()))
    result = m.decode_mschapv2(success.data)
    assert isinstance(result, m.MsResult) and result.opcode == m.OpCode.SUCCESS
    assert result.message == b"S=407A5589115FD0D6209F510FE9C04566932CDA56 M=Welcome"
    assert auth.state is State.SUCCESS_SENT
    done = auth.receive(_ack(m.OpCode.SUCCESS, success.identifier))
    assert done.code == m.Code.SUCCESS and done.encode() == bytes([3, done.identifier, 0, 4])
    assert auth.state is State.DONE
    expected = crypto.authenticator_msk(nt_password_hash("clientPass"), NT_RESPONSE)
    assert auth.msk is not None and auth.msk.reveal() == expected and len(expected) == 64


@pytest.mark.parametrize(
    ("identity", "response", "reason"),
    [
        (b"User", NT_RESPONSE[:-1] + b"\x00", "wrong password"),
        (b"Nobody", NT_RESPONSE, "unknown user"),
    ],
)
def test_wrong_password_and_unknown_user_fail_the_same_way(
    identity: bytes, response: bytes, reason: str
) -> None:
    auth = _authenticator(identity)
    auth.start()
    failure = auth.receive(_response(1, response, name=identity))
    result = m.decode_mschapv2(failure.data)
    assert isinstance(result, m.MsResult) and result.opcode == m.OpCode.FAILURE
    assert result.message.startswith(b"E=691 R=0 C=" + AUTH_CHALLENGE.hex().upper().encode())
    assert auth.state is State.FAILED and auth.reason == reason and auth.msk is None
    final = auth.receive(_ack(m.OpCode.FAILURE, failure.identifier))
    assert final.code == m.Code.FAILURE and auth.reason == reason


def test_a_response_naming_another_user_or_out_of_order_fails() -> None:
    auth = _authenticator()
    auth.start()
    assert auth.receive(_response(1, name=b"Admin")).code == m.Code.FAILURE
    assert auth.reason == "the MSCHAPv2 user name differs from the EAP identity"
    auth = _authenticator()
    auth.start()
    assert auth.receive(_ack(m.OpCode.SUCCESS, 1)).code == m.Code.FAILURE  # Success before any Response
    assert auth.msk is None


def test_codec_round_trips_and_refuses_bad_lengths() -> None:
    packet = m.EapPacket(m.Code.RESPONSE, 7, m.EapType.IDENTITY, b"alice@example.test")
    assert m.decode(packet.encode()) == packet
    assert m.decode(bytes([3, 9, 0, 4])) == m.EapPacket(m.Code.SUCCESS, 9)
    for raw, error in [
        (b"\x01\x01\x00", "EAP header needs 4 bytes"),
        (b"\x01\x01\x00\x09\x01", "EAP length field says 9, payload holds 5"),
        (b"\x03\x01\x00\x05\x00", "EAP Success/Failure carries no data"),
        (b"\x07\x01\x00\x04", "unknown EAP code 7"),
    ]:
        with pytest.raises(m.EapError, match=error):
            m.decode(raw)
    response = _response(3).data
    assert m.decode_mschapv2(response) == m.MsResponse(3, PEER_CHALLENGE, NT_RESPONSE, 0, b"User")
    with pytest.raises(m.EapError, match="reserved bytes must be zero"):
        m.decode_mschapv2(response[:25] + b"\x01" + response[26:])
    with pytest.raises(m.EapError, match="MS-Length says"):
        m.decode_mschapv2(response + b"x")


@given(st.binary(max_size=300))
def test_decoders_raise_only_eap_errors_and_what_decodes_encodes_back(raw: bytes) -> None:
    with contextlib.suppress(m.EapError):
        assert m.decode(raw).encode() == raw
    with contextlib.suppress(m.EapError):
        m.decode_mschapv2(raw)
