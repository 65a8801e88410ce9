"""The gateway's EAP conversation, method-independent (RFC 3748 as used by RFC 7296 2.16):
EAP-Identity (or the IDi as identity), the choice of a method for that user (a Nak may name
another one, once), the method itself (mschapv2.py, tls.py), and the verdict with the MSK.

Packets in, packets out; the IKE side (exchanges/eap_auth.py) carries them in IKE_AUTH and
retransmits nothing itself: the peer, as IKE initiator, retransmits and the task manager's
response cache answers. States and their edges are declared in states.py (EapState). Every
way to fail leaves `reason` (for the log and the IkeSaFailed event; never a secret) and answers
EAP-Failure."""

from __future__ import annotations

from collections.abc import Callable

from meshsec.agent.ike.certs import Credentials
from meshsec.agent.ike.constants import IdType
from meshsec.agent.ike.eap.message import Code, EapError, EapPacket, EapType, decode
from meshsec.agent.ike.eap.mschapv2 import MschapV2Authenticator
from meshsec.agent.ike.eap.tls import TlsAuthenticator
from meshsec.agent.ike.eap.users import MAX_EAP_PACKET, EapServerConfig, EapUser, UserPending
from meshsec.agent.ike.identity import Identity
from meshsec.agent.ike.states import EAP_TRANSITIONS, EapState, check
from meshsec.common.secrets import Secret

METHOD_TYPES = {"mschapv2": EapType.MSCHAPV2, "tls": EapType.TLS}
NAME_IDS = (IdType.FQDN, IdType.RFC822_ADDR, IdType.KEY_ID)


class EapServer:
    def __init__(
        self, config: EapServerConfig, idi: Identity, credentials: Credentials,
        random_bytes: Callable[[int], bytes],
    ) -> None:  # fmt: skip
        self._cfg = config
        self._creds = credentials
        self._random = random_bytes
        self._idi = idi
        self._state = EapState.IDENTITY
        self._id = random_bytes(1)[0]
        self._method: MschapV2Authenticator | TlsAuthenticator | None = None
        self._user: EapUser | None = None
        self._nak_used = False
        self._answered_method = False  # the peer's first method response came (a Nak is too late)
        self.rounds = 0
        self.identity = b""
        self.method = ""
        self.reason = ""
        self.msk: Secret | None = None

    @property
    def state(self) -> EapState:
        return self._state

    def _move(self, new: EapState) -> None:
        check(EAP_TRANSITIONS, self._state, new, "EAP")
        self._state = new

    def start(self) -> EapPacket | None:
        """The first request, for the IKE_AUTH answer that also carries our AUTH; None while the
        user lookup is pending (call again)."""
        if self._cfg.identity == "idi" and self._idi.id_type in NAME_IDS:
            return self._choose(self._idi.data)
        return self._emit(EapPacket(Code.REQUEST, self._id, EapType.IDENTITY))

    def receive(self, raw: bytes) -> EapPacket | None:
        """The answer to the peer's EAP packet: a request, EAP-Success or EAP-Failure; None while
        the user lookup is pending (the same packet is given again later)."""
        if self._state not in (EapState.IDENTITY, EapState.METHOD):
            return self._fail(f"EAP packet in state {self._state.value}")
        if self.rounds >= self._cfg.max_rounds:
            return self._fail(f"EAP took more than {self._cfg.max_rounds} round trips")
        answer = self._receive(raw)
        if answer is not None:  # a pending lookup sees the same packet again: not a new round
            self.rounds += 1
        return answer

    def _receive(self, raw: bytes) -> EapPacket | None:
        if len(raw) > MAX_EAP_PACKET:
            return self._fail(f"EAP packet of {len(raw)} bytes")
        try:
            packet = decode(raw)
        except EapError as exc:
            return self._fail(f"malformed EAP packet: {exc}")
        if packet.code != Code.RESPONSE or packet.identifier != self._id:
            return self._fail(
                f"expected EAP response {self._id}, got code {packet.code} id {packet.identifier}"
            )
        if self._state is EapState.IDENTITY:
            if packet.type != EapType.IDENTITY or not 0 < len(packet.data) <= 253:
                return self._fail("expected an EAP-Identity response with a 1..253 byte identity")
            return self._choose(packet.data)
        assert self._method is not None
        if packet.type == EapType.NAK:
            return self._nak(packet.data)
        self._answered_method = True
        answer = self._method.receive(packet)
        # MSCHAPv2 knows a password is wrong one round before it ends (the peer's acknowledgement
        # of its Failure); a peer that gives up instead leaves this reason for the log.
        self.reason = self._method.reason
        if answer.code == Code.SUCCESS:
            return self._succeed(answer)
        if answer.code == Code.FAILURE:
            return self._fail(self._method.reason or "EAP method failed", answer)
        return self._emit(answer)

    def _choose(self, identity: bytes) -> EapPacket | None:
        found = self._cfg.users(identity)
        if isinstance(found, UserPending):
            return None
        self.identity = identity
        self._user = found
        allowed = [m for m in self._cfg.methods if self._user is not None and self._user.allows(m)]
        # An unknown user runs the first method all the same and fails where a wrong password
        # would: the answer does not tell who exists.
        return self._begin(allowed[0] if allowed else self._cfg.methods[0])

    def _begin(self, method: str) -> EapPacket:
        self.method = method
        self._move(EapState.METHOD)
        user = self._user
        ident = (self._id + 1) & 0xFF
        if method == "mschapv2":
            nt_hash = user.nt_hash if user is not None and user.allows("mschapv2") else None
            self._method = MschapV2Authenticator(
                self.identity, lambda _: nt_hash, self._random, name=self._cfg.server_name, identifier=ident
            )
        else:
            self._method = TlsAuthenticator(self.identity, self._creds, identifier=ident)
        return self._emit(self._method.start())

    def _nak(self, data: bytes) -> EapPacket:
        if self._nak_used or self._answered_method:
            return self._fail("EAP Nak after the method started")
        self._nak_used = True
        wanted = {METHOD_TYPES[m]: m for m in self._cfg.methods}
        user = self._user
        for desired in data:
            method = wanted.get(desired)  # type: ignore[call-overload]
            if method is not None and method != self.method and user is not None and user.allows(method):
                return self._begin(method)
        return self._fail(f"the peer wants EAP types {list(data)}, none offered to {self._shown()}")

    def _succeed(self, answer: EapPacket) -> EapPacket:
        assert self._method is not None
        if self.method == "tls" and (self._user is None or not self._user.allows("tls")):
            return self._fail("unknown user")  # a valid certificate, but not a user of ours
        self.msk = self._method.msk
        self._move(EapState.SUCCEEDED)
        return answer

    def _fail(self, reason: str, answer: EapPacket | None = None) -> EapPacket:
        self.reason = reason
        if self._state is not EapState.FAILED:
            self._move(EapState.FAILED)
        self._id = (self._id + 1) & 0xFF
        return answer or EapPacket(Code.FAILURE, self._id)

    def verified(self) -> None:
        """The peer's AUTH from the MSK checked out."""
        self._move(EapState.DONE)

    def auth_failed(self, reason: str) -> None:
        self.reason = reason
        self._move(EapState.FAILED)

    def _emit(self, packet: EapPacket) -> EapPacket:
        self._id = packet.identifier
        return packet

    def _shown(self) -> str:
        return self.identity.decode("utf-8", "replace")
