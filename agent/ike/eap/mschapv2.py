"""The EAP-MSCHAPv2 authenticator, sans-IO: the gateway's side of RFC 7296 2.16 with
MSCHAPv2 inside (draft-kamath-pppext-eap-mschapv2).

Driven with EAP packets in, EAP packets out: `start()` after EAP-Identity gives the Challenge;
`receive(response)` checks the peer's NT-Response against the NT hash of the identity it names
(the only secret it ever sees) and answers Success with the AuthenticatorResponse, or Failure
(E=691, no retry: a wrong password fails cleanly); the peer's Success acknowledgement finishes
with EAP-Success and the MSK that both ends sign their IKEv2 AUTH payloads with.
"""

from __future__ import annotations

import enum
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
    decode_mschapv2,
)
from meshsec.common.secrets import Secret


class State(enum.Enum):
    CHALLENGE_SENT = "challenge-sent"
    SUCCESS_SENT = "success-sent"
    DONE = "done"
    FAILED = "failed"


class MschapV2Authenticator:
    def __init__(
        self,
        identity: bytes,
        lookup: Callable[[bytes], Secret | None],
        random_bytes: Callable[[int], bytes],
        *,
        name: bytes = b"meshsec",
        identifier: int = 1,
    ) -> None:
        self._identity = identity  # from EAP-Identity; the Response must name the same user
        self._lookup = lookup  # identity -> NT hash, or None for an unknown user
        self._random = random_bytes
        self._name = name
        self._id = identifier
        self._challenge = b""
        self._msk: Secret | None = None
        self.state = State.CHALLENGE_SENT
        self.reason = ""  # why it failed, for the gateway's log and event (never a secret)

    @property
    def msk(self) -> Secret | None:
        return self._msk

    def start(self) -> EapPacket:
        self._challenge = self._random(16)
        body = MsChallenge(self._id & 0xFF, self._challenge, self._name).encode()
        return EapPacket(Code.REQUEST, self._id & 0xFF, EapType.MSCHAPV2, body)

    def receive(self, packet: EapPacket) -> EapPacket:
        if packet.code != Code.RESPONSE or packet.type != EapType.MSCHAPV2:
            return self._fail(f"expected an EAP-MSCHAPv2 response, got code {packet.code} type {packet.type}")
        try:
            inner = decode_mschapv2(packet.data)
        except EapError as exc:
            return self._fail(str(exc))
        if self.state is State.CHALLENGE_SENT and isinstance(inner, MsResponse):
            return self._check(inner)
        if (
            self.state is State.SUCCESS_SENT
            and isinstance(inner, MsResult)
            and inner.opcode == OpCode.SUCCESS
        ):
            self.state = State.DONE
            return EapPacket(Code.SUCCESS, self._next_id())
        if self.state is State.FAILED and isinstance(inner, MsResult) and inner.opcode == OpCode.FAILURE:
            return EapPacket(Code.FAILURE, self._next_id())  # the peer acknowledged our Failure
        return self._fail(f"unexpected {type(inner).__name__} in state {self.state.value}")

    def _check(self, response: MsResponse) -> EapPacket:
        user = response.name.split(b"\\")[-1]  # DOMAIN\user: MSCHAPv2 hashes the user part only
        if response.name != self._identity and user != self._identity:
            return self._fail("the MSCHAPv2 user name differs from the EAP identity")
        nt_hash = self._lookup(self._identity)
        if nt_hash is None or not crypto.check_nt_response(
            self._challenge, response.peer_challenge, user, nt_hash.reveal(), response.nt_response
        ):
            # The same answer for an unknown user and a wrong password: no user enumeration.
            reason = "unknown user" if nt_hash is None else "wrong password"
            self.state = State.FAILED
            self.reason = reason
            message = (
                b"E=691 R=0 C=" + self._challenge.hex().upper().encode() + b" V=3 M=Authentication failed"
            )
            body = MsResult(OpCode.FAILURE, response.ms_id, message).encode()
            return EapPacket(Code.REQUEST, self._next_id(), EapType.MSCHAPV2, body)
        proof = crypto.authenticator_response(
            nt_hash.reveal(), response.nt_response, response.peer_challenge, self._challenge, user
        )
        self._msk = Secret(crypto.authenticator_msk(nt_hash.reveal(), response.nt_response))
        self.state = State.SUCCESS_SENT
        body = MsResult(OpCode.SUCCESS, response.ms_id, proof + b" M=Welcome").encode()
        return EapPacket(Code.REQUEST, self._next_id(), EapType.MSCHAPV2, body)

    def _fail(self, reason: str) -> EapPacket:
        self.state = State.FAILED
        self.reason = reason
        return EapPacket(Code.FAILURE, self._next_id())

    def _next_id(self) -> int:
        self._id = (self._id + 1) & 0xFF
        return self._id
