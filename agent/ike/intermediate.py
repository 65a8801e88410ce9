"""The additional key exchanges of a new IKE SA (RFC 9370 2.2.1-2.2.2) carried in IKE_INTERMEDIATE
exchanges (RFC 9242), as state of its own so the exchange code only moves messages.

After IKE_SA_INIT chose a proposal with ADDKE transforms, one IKE_INTERMEDIATE runs per
additional key exchange, in transform type order: HDR, SK {KEi(n)} -> <- HDR, SK {KEr(n)}. Both
messages of exchange n are protected with the keys of n-1 and folded into the IntAuth chains
with them; after the exchange both ends move to SK_*(n) = prf+(SKEYSEED(n), Ni | Nr | SPIi |
SPIr), SKEYSEED(n) = prf(SK_d(n-1), SK(n) | Ni | Nr). IKE_AUTH then signs IntAuth_iN | IntAuth_rN
| IKE_AUTH_MID (intauth.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meshsec.agent.ike.build import build_chain, build_header
from meshsec.agent.ike.constants import IKE_VERSION, ExchangeType, HeaderFlag, PayloadType
from meshsec.agent.ike.crypto import CryptoError, DhFactory, Integ, KeyExchange, Prf, SkCipher
from meshsec.agent.ike.intauth import intauth_octets, intauth_step
from meshsec.agent.ike.keys import IkeKeys, update_ike_keys
from meshsec.agent.ike.payloads import Header, KePayload, Payload
from meshsec.agent.ike.proposals import Chosen
from meshsec.agent.ike.random import Random

# A message's inner payload chain as IntAuth sees it: (first inner payload type, its bytes).
Inner = tuple[int, bytes]


def encode_inner(payloads: list[Payload]) -> Inner:
    """For messages we build; for received ones take the decrypted plaintext itself."""
    return (int(payloads[0].payload_type) if payloads else PayloadType.NONE, build_chain(payloads))


# RFC 9370 allows seven additional key exchanges; a peer's message ID beyond them is refused.
MAX_INTERMEDIATE = 7


class IntermediateError(Exception):
    """The peer's IKE_INTERMEDIATE message does not continue the negotiated key exchanges."""


@dataclass(frozen=True, slots=True)
class SaContext:
    """What the key update needs from the IKE SA (passed in, so this module holds no SA)."""

    prf: Prf
    cipher: SkCipher
    integ: Integ | None
    nonce_i: bytes
    nonce_r: bytes
    spi_i: bytes
    spi_r: bytes


@dataclass(slots=True)
class AdditionalExchanges:
    pending: list[tuple[int, int]]  # (ADDKE transform type, method) still to run
    done: list[tuple[int, int]] = field(default_factory=list)
    intauth_i: bytes = b""
    intauth_r: bytes = b""
    _ke: KeyExchange | None = None  # initiator: the exchange whose response we await

    @classmethod
    def for_chosen(cls, chosen: Chosen) -> AdditionalExchanges | None:
        return cls(list(chosen.addke)) if chosen.addke else None

    @property
    def finished(self) -> bool:
        return not self.pending

    def auth_octets(self) -> bytes:
        """Appended to both InitiatorSignedOctets and ResponderSignedOctets; IKE_AUTH's message
        ID follows IKE_SA_INIT (0) and the IKE_INTERMEDIATE exchanges (1..n)."""
        return intauth_octets(self.intauth_i, self.intauth_r, 1 + len(self.done))

    # ------------------------------------------------------------------ initiator

    def request(self, ke: KeyExchange) -> list[Payload]:
        """KEi(n) of the next exchange; `ke` comes from the SA's dh_factory for `next_method`."""
        if not self.pending or ke.group != self.pending[0][1]:
            raise ValueError("no additional key exchange of that method is due")
        self._ke = ke
        return [KePayload(ke.group, ke.public_bytes())]

    @property
    def next_method(self) -> int:
        return self.pending[0][1]

    def response(self, payloads: list[Payload]) -> bytes:
        """SK(n) from KEr(n); raises IntermediateError if it is not the one due."""
        if self._ke is None or not self.pending:
            raise IntermediateError("IKE_INTERMEDIATE response without a request")
        ke = _the_ke(payloads, self.pending[0][1])
        try:
            return self._ke.shared_secret(ke.data)
        except CryptoError as exc:
            raise IntermediateError(f"invalid KE in IKE_INTERMEDIATE response: {exc}") from exc

    # ------------------------------------------------------------------ responder

    def answer(
        self, payloads: list[Payload], dh_factory: DhFactory, rnd: Random
    ) -> tuple[list[Payload], bytes]:
        """KEr(n) and SK(n) for the initiator's KEi(n)."""
        if not self.pending:
            raise IntermediateError("IKE_INTERMEDIATE beyond the negotiated key exchanges")
        method = self.pending[0][1]
        ke_i = _the_ke(payloads, method)
        ke = dh_factory(method, rnd)
        try:
            shared = ke.shared_secret(ke_i.data)
        except CryptoError as exc:
            raise IntermediateError(f"invalid KE in IKE_INTERMEDIATE request: {exc}") from exc
        return [KePayload(method, ke.public_bytes())], shared

    # ------------------------------------------------------------------ both

    def complete(
        self,
        ctx: SaContext,
        keys: IkeKeys,
        shared: bytes,
        message_id: int,
        request: Inner,
        response: Inner,
    ) -> IkeKeys:
        """Folds exchange n's two messages into IntAuth with the keys that protected them and
        returns SK_*(n); the caller installs them for what follows."""
        self.intauth_i = _fold(ctx, keys.sk_pi.reveal(), self.intauth_i, message_id, False, request)
        self.intauth_r = _fold(ctx, keys.sk_pr.reveal(), self.intauth_r, message_id, True, response)
        self.done.append(self.pending.pop(0))
        self._ke = None
        return update_ike_keys(
            ctx.prf, ctx.cipher, ctx.integ, keys, shared, ctx.nonce_i, ctx.nonce_r, ctx.spi_i, ctx.spi_r
        )


def _the_ke(payloads: list[Payload], method: int) -> KePayload:
    kes = [p for p in payloads if isinstance(p, KePayload)]
    if len(kes) != 1:
        raise IntermediateError("IKE_INTERMEDIATE needs exactly one KE payload")
    if kes[0].group != method:
        raise IntermediateError(f"IKE_INTERMEDIATE KE carries method {kes[0].group}, expected {method}")
    return kes[0]


def _fold(
    ctx: SaContext, sk_p: bytes, previous: bytes, message_id: int, response: bool, inner: Inner
) -> bytes:
    """One message's IntAuth step, from the message as if sent whole (RFC 9242 3.3.2): the
    original initiator sends the requests (flag I), the original responder answers (flag R)."""
    flags = HeaderFlag.RESPONSE if response else HeaderFlag.INITIATOR
    header = build_header(
        Header(ctx.spi_i, ctx.spi_r, PayloadType.SK, ExchangeType.IKE_INTERMEDIATE, flags, message_id, 0,
               IKE_VERSION)
    )  # fmt: skip
    first, chain = inner
    return intauth_step(ctx.prf, sk_p, previous, header, b"", first, chain)
