"""The road warrior's side of EAP-MSCHAPv2 (draft-kamath-pppext-eap-mschapv2), sans-IO: the
mirror of mschapv2.MschapV2Authenticator, from the NT hash of the password.

`receive(request)` answers each EAP request (Identity, MSCHAPv2 Challenge, Success, Failure;
any other method gets a Nak naming MSCHAPv2) and checks the gateway's AuthenticatorResponse
before acknowledging its Success: a gateway that does not know the password cannot finish the
exchange. `receive` returns None for EAP-Success and EAP-Failure; then `msk` (or `reason`) says
how it ended."""

from __future__ import annotations

import enum
import hmac
from collections.abc import Callable

from meshsec.agent.ike.eap import mschapv2_crypto as crypto
from meshsec.agent.ike.eap.message import (
    Code,
    EapError,
    EapPacket,
    EapType,
    MsChallenge,
    MsResponse,
    MsResult,
    OpCode,
    decode,
    decode_mschapv2,
)
from meshsec.agent.ike.eap.users import EapClientConfig
from meshsec.common.secrets import Secret


class ClientState(enum.Enum):
    WAITING = "waiting"  # identity or challenge expected
    RESPONDED = "responded"  # our NT-Response went out
    ACKNOWLEDGED = "acknowledged"  # the gateway proved the password; EAP-Success expected
    DONE = "done"
    FAILED = "failed"


class MschapV2Peer:
    def __init__(self, config: EapClientConfig, random_bytes: Callable[[int], bytes]) -> None:
        self._cfg = config
        self._random = random_bytes
        self._challenge = b""
        self._peer_challenge = b""
        self._nt_response = b""
        self.state = ClientState.WAITING
        self.msk: Secret | None = None
        self.reason = ""

    def receive(self, raw: bytes) -> EapPacket | None:
        try:
            packet = decode(raw)
        except EapError as exc:
            return self._fail(f"malformed EAP packet from the gateway: {exc}")
        if packet.code == Code.SUCCESS:
            if self.state is not ClientState.ACKNOWLEDGED:
                return self._fail("EAP-Success before the gateway proved it knows the password")
            self.msk = Secret(crypto.authenticator_msk(self._cfg.nt_hash.reveal(), self._nt_response))
            self.state = ClientState.DONE
            return None
        if packet.code == Code.FAILURE:
            return self._fail(self.reason or "gateway sent EAP-Failure")
        if packet.code != Code.REQUEST:
            return self._fail(f"EAP code {packet.code} from the gateway")
        if packet.type == EapType.IDENTITY:
            return EapPacket(Code.RESPONSE, packet.identifier, EapType.IDENTITY, self._cfg.identity)
        if packet.type != EapType.MSCHAPV2:
            return EapPacket(Code.RESPONSE, packet.identifier, EapType.NAK, bytes([EapType.MSCHAPV2]))
        try:
            inner = decode_mschapv2(packet.data)
        except EapError as exc:
            return self._fail(f"malformed EAP-MSCHAPv2 request: {exc}")
        if isinstance(inner, MsChallenge) and self.state is ClientState.WAITING:
            return self._respond(packet.identifier, inner)
        if (
            isinstance(inner, MsResult)
            and inner.opcode == OpCode.SUCCESS
            and self.state is ClientState.RESPONDED
        ):
            return self._check_success(packet.identifier, inner.message)
        if isinstance(inner, MsResult) and inner.opcode == OpCode.FAILURE:
            self.reason = "the gateway refused the password (" + _printable(inner.message[:5]) + ")"
            self.state = ClientState.FAILED
            return EapPacket(
                Code.RESPONSE, packet.identifier, EapType.MSCHAPV2, MsResult(OpCode.FAILURE).encode()
            )
        return self._fail(f"unexpected EAP-MSCHAPv2 {type(inner).__name__} in state {self.state.value}")

    def _respond(self, identifier: int, challenge: MsChallenge) -> EapPacket:
        self._challenge = challenge.challenge
        self._peer_challenge = self._random(16)
        user = self._cfg.identity.split(b"\\")[-1]
        self._nt_response = crypto.nt_response(
            self._challenge, self._peer_challenge, user, self._cfg.nt_hash.reveal()
        )
        body = MsResponse(challenge.ms_id, self._peer_challenge, self._nt_response, 0, self._cfg.identity)
        self.state = ClientState.RESPONDED
        return EapPacket(Code.RESPONSE, identifier, EapType.MSCHAPV2, body.encode())

    def _check_success(self, identifier: int, message: bytes) -> EapPacket | None:
        user = self._cfg.identity.split(b"\\")[-1]
        expected = crypto.authenticator_response(
            self._cfg.nt_hash.reveal(), self._nt_response, self._peer_challenge, self._challenge, user
        )
        if not hmac.compare_digest(message[:42], expected):
            return self._fail("the gateway's MSCHAPv2 AuthenticatorResponse is wrong")
        self.state = ClientState.ACKNOWLEDGED
        return EapPacket(Code.RESPONSE, identifier, EapType.MSCHAPV2, MsResult(OpCode.SUCCESS).encode())

    def _fail(self, reason: str) -> EapPacket | None:
        """Nothing to answer: the IKE side gives up with `reason`."""
        self.state = ClientState.FAILED
        self.reason = reason
        return None


def _printable(data: bytes) -> str:
    return data.decode("ascii", "replace")
