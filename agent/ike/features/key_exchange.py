"""The key exchange of IKE_SA_INIT (RFC 7296 1.2, 2.14): the IKE proposal (SA), KE and the
nonces, INVALID_KE_PAYLOAD retries (1.3), and the SKEYSEED / SK_* derivation that installs the
SK payload's protection. After it the SA is AUTHENTICATING."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from meshsec.agent.ike.constants import (
    ERROR_NOTIFY_LIMIT,
    NONCE_SIZE,
    NotifyType,
    PayloadType,
    ProtocolId,
    notify_name,
)
from meshsec.agent.ike.crypto import INTEGS, PRFS, CryptoError, KeyExchange, make_cipher
from meshsec.agent.ike.failures import FailureReason
from meshsec.agent.ike.feature import Feature, Refusal
from meshsec.agent.ike.keys import derive_ike_keys
from meshsec.agent.ike.payloads import KePayload, Message, NoncePayload, Payload, Proposal, SaPayload
from meshsec.agent.ike.proposals import Chosen, accept_response, select_proposal
from meshsec.agent.ike.states import State
from meshsec.agent.ike.task import Outcome

if TYPE_CHECKING:
    from meshsec.agent.ike.sa import IkeSa

MAX_KE_RETRIES = 5


def setup_keys(sa: IkeSa, chosen: Chosen, shared: bytes, seed: bytes | None = None) -> None:
    """Derives SK_* from the nonces, SPIs and `shared` (or the rekey's `seed`) and installs the
    SK protection; also used by the IKE rekey for the successor SA."""
    use_transforms(sa, chosen)
    assert sa.prf is not None and sa.cipher is not None
    sa.keys = derive_ike_keys(
        sa.prf, sa.cipher, sa.integ, sa.nonce_i, sa.nonce_r, shared, sa.spi_i, sa.spi_r, seed
    )
    sa.install_protection()


def use_transforms(sa: IkeSa, chosen: Chosen) -> None:
    """The PRF, cipher and integrity of the negotiated (or restored, snapshot.py) proposal."""
    if chosen.prf is None or chosen.encr is None:
        raise CryptoError("IKE proposal without a PRF or an encryption transform")
    sa.chosen = chosen
    sa.prf = PRFS[chosen.prf]()
    sa.cipher = make_cipher(chosen.encr.id, chosen.encr.key_length)
    sa.integ = INTEGS[chosen.integ] if chosen.integ else None
    if not sa.cipher.aead and sa.integ is None:
        raise CryptoError("non-AEAD cipher negotiated without integrity")


def _answer(chosen: Chosen) -> Chosen:
    """The proposal as the responder returns it (no SPI in IKE_SA_INIT, no ESN)."""
    return Chosen(
        chosen.number,
        chosen.protocol,
        b"",
        chosen.encr,
        chosen.prf,
        chosen.integ,
        chosen.dh,
        None,
        chosen.addke,
    )


class InitialKeyExchange(Feature):
    def __init__(self) -> None:
        self._ke: KeyExchange | None = None
        self._group: int | None = None
        self._offered: tuple[Proposal, ...] = ()
        self._retries = 0
        self._chosen: Chosen | None = None  # responder

    # ------------------------------------------------------------------ initiator

    def build_request(self, sa: IkeSa, out: list[Payload]) -> None:
        specs = sa.config.specs
        if self._group is None:
            self._group = specs[0].dh_groups()[0]
        if self._ke is None or self._ke.group != self._group:
            self._ke = sa.dh_factory(self._group, sa.rnd)
        if not sa.nonce_i:
            sa.nonce_i = sa.rnd.bytes(NONCE_SIZE)
        self._offered = tuple(spec.to_proposal(i + 1, b"") for i, spec in enumerate(specs))
        out += [
            SaPayload(self._offered),
            KePayload(self._group, self._ke.public_bytes()),
            NoncePayload(sa.nonce_i),
        ]

    def process_response(self, sa: IkeSa, msg: Message, raw: bytes) -> Outcome | Refusal | None:
        invalid_ke = msg.notify(NotifyType.INVALID_KE_PAYLOAD)
        if invalid_ke is not None:
            return self._retry_group(sa, invalid_ke.data)
        errors = [n for n in msg.notifies() if n.notify_type < ERROR_NOTIFY_LIMIT]
        if errors:
            ntype = errors[0].notify_type
            return Refusal(f"IKE_SA_INIT refused: {notify_name(ntype)}", FailureReason.from_notify(ntype))
        sa_p, ke, nonce = msg.find(PayloadType.SA), msg.find(PayloadType.KE), msg.find(PayloadType.NONCE)
        invalid = FailureReason.INVALID_RESPONSE
        if (
            not isinstance(sa_p, SaPayload)
            or not isinstance(ke, KePayload)
            or not isinstance(nonce, NoncePayload)
        ):
            return Refusal("IKE_SA_INIT response lacks SA, KE or Nonce", invalid)
        if msg.header.spi_r == bytes(8) or len(sa_p.proposals) != 1:
            return Refusal("IKE_SA_INIT response has no responder SPI or not exactly one proposal", invalid)
        chosen = accept_response(self._offered, sa_p.proposals[0])
        if chosen is None or chosen.dh != ke.group or ke.group != self._group:
            return Refusal("IKE_SA_INIT response selected a proposal we did not offer", invalid)
        assert self._ke is not None
        try:
            shared = self._ke.shared_secret(ke.data)
        except CryptoError as exc:
            return Refusal(f"invalid KE from responder: {exc}", invalid)
        sa.spi_r = msg.header.spi_r
        sa.nonce_r = nonce.data
        sa.init_response = raw
        setup_keys(sa, chosen, shared)
        sa.move_to(State.AUTHENTICATING)
        return None

    def _retry_group(self, sa: IkeSa, data: bytes) -> Outcome | Refusal:
        if len(data) != 2:
            return Refusal("malformed INVALID_KE_PAYLOAD", FailureReason.INVALID_RESPONSE)
        (group,) = struct.unpack("!H", data)
        acceptable = {g for spec in sa.config.specs for g in spec.dh_groups()}
        if group not in acceptable or group == self._group or self._retries >= MAX_KE_RETRIES:
            return Refusal(
                f"responder asks for DH group {group} we cannot use", FailureReason.INVALID_KE_PAYLOAD
            )
        self._retries += 1
        self._group = group
        return Outcome.RETRY

    # ------------------------------------------------------------------ responder

    def process_request(self, sa: IkeSa, msg: Message) -> Refusal | None:
        sa_p, ke, nonce = msg.find(PayloadType.SA), msg.find(PayloadType.KE), msg.find(PayloadType.NONCE)
        if (
            not isinstance(sa_p, SaPayload)
            or not isinstance(ke, KePayload)
            or not isinstance(nonce, NoncePayload)
        ):
            return Refusal.answer(NotifyType.INVALID_SYNTAX, "IKE_SA_INIT rejected: INVALID_SYNTAX")
        chosen = None
        # A mesh node has a candidate per peer, nearly all with the same proposals: trying each
        # made one unauthenticated IKE_SA_INIT cost O(peers) selections (~100 ms at 10k).
        tried: set[tuple[str, bool]] = set()
        for cfg in sa.candidates:
            if (cfg.proposals, cfg.prefer_own_proposals) in tried:
                continue
            tried.add((cfg.proposals, cfg.prefer_own_proposals))
            chosen = select_proposal(cfg.specs, sa_p.proposals, prefer_ours=cfg.prefer_own_proposals)
            if chosen is not None:
                sa.config = cfg
                break
        if chosen is None or chosen.protocol != ProtocolId.IKE:
            return Refusal.answer(NotifyType.NO_PROPOSAL_CHOSEN, "IKE_SA_INIT rejected: NO_PROPOSAL_CHOSEN")
        if chosen.dh != ke.group:
            assert chosen.dh is not None
            return Refusal.answer(
                NotifyType.INVALID_KE_PAYLOAD,
                "IKE_SA_INIT rejected: INVALID_KE_PAYLOAD",
                struct.pack("!H", chosen.dh),
            )
        try:
            self._ke = sa.dh_factory(ke.group, sa.rnd)
            shared = self._ke.shared_secret(ke.data)
        except (CryptoError, ValueError):
            return Refusal.answer(NotifyType.INVALID_SYNTAX, "IKE_SA_INIT rejected: INVALID_SYNTAX")
        sa.nonce_i = nonce.data
        sa.nonce_r = sa.rnd.bytes(NONCE_SIZE)
        setup_keys(sa, chosen, shared)
        sa.move_to(State.AUTHENTICATING)
        self._chosen = chosen
        return None

    def build_response(self, sa: IkeSa, out: list[Payload]) -> None:
        assert self._chosen is not None and self._ke is not None
        out += [
            SaPayload((_answer(self._chosen).as_proposal(b""),)),
            KePayload(self._ke.group, self._ke.public_bytes()),
            NoncePayload(sa.nonce_r),
        ]
