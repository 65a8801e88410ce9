"""IKE_SA_INIT (RFC 7296 1.2): proposals, KE, nonces, NAT detection (2.23), COOKIE (2.6) and
INVALID_KE_PAYLOAD (1.3) retries on the initiator side; selection and key derivation on both."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from meshsec.agent.ike.address import Address
from meshsec.agent.ike.constants import (
    ERROR_NOTIFY_LIMIT,
    ExchangeType,
    NotifyType,
    PayloadType,
    ProtocolId,
    notify_name,
)
from meshsec.agent.ike.crypto import INTEGS, PRFS, CryptoError, KeyExchange, make_cipher
from meshsec.agent.ike.exchanges.authenticate import certreq_payloads
from meshsec.agent.ike.keys import derive_ike_keys
from meshsec.agent.ike.natt import nat_detection_hash
from meshsec.agent.ike.payloads import (
    KePayload,
    Message,
    NoncePayload,
    NotifyPayload,
    Payload,
    Proposal,
    SaPayload,
)
from meshsec.agent.ike.proposals import Chosen, accept_response, select_proposal
from meshsec.agent.ike.sigauth import hash_notify_data, parse_hash_notify
from meshsec.agent.ike.task import Outcome

if TYPE_CHECKING:
    from meshsec.agent.ike.sa import IkeSa

NONCE_SIZE = 32
MAX_INIT_RETRIES = 5


def nat_notifies(sa: IkeSa, local: Address, remote: Address) -> list[Payload]:
    src = nat_detection_hash(sa.spi_i, sa.spi_r, local)
    if sa.config.force_encap:
        # Like strongSwan's encap=yes: a source hash nobody can match forces UDP encapsulation.
        src = sa.rnd.bytes(len(src))
    return [
        NotifyPayload(NotifyType.NAT_DETECTION_SOURCE_IP, src),
        NotifyPayload(
            NotifyType.NAT_DETECTION_DESTINATION_IP, nat_detection_hash(sa.spi_i, sa.spi_r, remote)
        ),
    ]


def signature_notifies(sa: IkeSa) -> list[Payload]:
    """RFC 7427 hash announcement, sent when certificates may be used on this SA."""
    if all(cfg.credentials is None for cfg in sa.candidates):
        return []
    return [NotifyPayload(NotifyType.SIGNATURE_HASH_ALGORITHMS, hash_notify_data())]


def learn_peer_support(sa: IkeSa, msg: Message) -> None:
    """What the peer's IKE_SA_INIT announced: RFC 7427 hashes, RFC 7383 fragmentation."""
    n = msg.notify(NotifyType.SIGNATURE_HASH_ALGORITHMS)
    if n is not None:
        sa.peer_hashes = parse_hash_notify(n.data)
    sa.frag_peer = (
        sa.config.fragmentation and msg.notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED) is not None
    )


def detect_nat(sa: IkeSa, msg: Message, spi_r: bytes, local: Address, remote: Address) -> bool:
    """Compares the peer's NAT_DETECTION hashes with what we see; returns whether the peer
    supports NAT-T at all (sent both notifies)."""
    srcs = [n.data for n in msg.notifies() if n.notify_type == NotifyType.NAT_DETECTION_SOURCE_IP]
    dsts = [n.data for n in msg.notifies() if n.notify_type == NotifyType.NAT_DETECTION_DESTINATION_IP]
    if not srcs or not dsts:
        return False
    sa.nat_remote = nat_detection_hash(sa.spi_i, spi_r, remote) not in srcs
    sa.nat_local = nat_detection_hash(sa.spi_i, spi_r, local) not in dsts
    if sa.config.force_encap:
        sa.nat_local = True
    return True


def setup_keys(sa: IkeSa, chosen: Chosen, shared: bytes, seed: bytes | None = None) -> None:
    assert chosen.prf is not None and chosen.encr is not None
    sa.chosen = chosen
    sa.prf = PRFS[chosen.prf]()
    sa.cipher = make_cipher(chosen.encr.id, chosen.encr.key_length)
    sa.integ = INTEGS[chosen.integ] if chosen.integ else None
    if not sa.cipher.aead and sa.integ is None:
        raise CryptoError("non-AEAD cipher negotiated without integrity")
    sa.keys = derive_ike_keys(
        sa.prf, sa.cipher, sa.integ, sa.nonce_i, sa.nonce_r, shared, sa.spi_i, sa.spi_r, seed
    )
    sa.install_protection()


class IkeInit:
    exchange = ExchangeType.IKE_SA_INIT
    name = "ike_init"

    def __init__(self) -> None:
        self._ke: KeyExchange | None = None
        self._group: int | None = None
        self._cookie: bytes | None = None
        self._offered: tuple[Proposal, ...] = ()
        self._retries = 0

    def build(self, sa: IkeSa, now: float) -> list[Payload]:
        specs = sa.config.specs
        if self._group is None:
            self._group = specs[0].dh_groups()[0]
        if self._ke is None or self._ke.group != self._group:
            self._ke = sa.dh_factory(self._group, sa.rnd)
        if not sa.nonce_i:
            sa.nonce_i = sa.rnd.bytes(NONCE_SIZE)
        self._offered = tuple(spec.to_proposal(i + 1, b"") for i, spec in enumerate(specs))
        payloads: list[Payload] = []
        if self._cookie is not None:
            payloads.append(NotifyPayload(NotifyType.COOKIE, self._cookie))
        payloads += [
            SaPayload(self._offered),
            KePayload(self._group, self._ke.public_bytes()),
            NoncePayload(sa.nonce_i),
        ]
        payloads += nat_notifies(sa, sa.local, sa.remote)
        payloads += signature_notifies(sa)
        if sa.config.fragmentation:
            payloads.append(NotifyPayload(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))
        return payloads

    def process(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> Outcome:
        cookie = msg.notify(NotifyType.COOKIE)
        if cookie is not None and msg.find(PayloadType.SA) is None:
            if self._retries >= MAX_INIT_RETRIES or not 1 <= len(cookie.data) <= 64:
                sa.fail("responder keeps demanding a COOKIE")
                return Outcome.DONE
            self._retries += 1
            self._cookie = cookie.data
            return Outcome.RETRY
        invalid_ke = msg.notify(NotifyType.INVALID_KE_PAYLOAD)
        if invalid_ke is not None:
            return self._retry_group(sa, invalid_ke)
        errors = [n for n in msg.notifies() if n.notify_type < ERROR_NOTIFY_LIMIT]
        if errors:
            sa.fail(f"IKE_SA_INIT refused: {notify_name(errors[0].notify_type)}")
            return Outcome.DONE
        sa_p, ke, nonce = msg.find(PayloadType.SA), msg.find(PayloadType.KE), msg.find(PayloadType.NONCE)
        if (
            not isinstance(sa_p, SaPayload)
            or not isinstance(ke, KePayload)
            or not isinstance(nonce, NoncePayload)
        ):
            sa.fail("IKE_SA_INIT response lacks SA, KE or Nonce")
            return Outcome.DONE
        if msg.header.spi_r == bytes(8) or len(sa_p.proposals) != 1:
            sa.fail("IKE_SA_INIT response has no responder SPI or not exactly one proposal")
            return Outcome.DONE
        chosen = accept_response(self._offered, sa_p.proposals[0])
        if chosen is None or chosen.dh != ke.group or ke.group != self._group:
            sa.fail("IKE_SA_INIT response selected a proposal we did not offer")
            return Outcome.DONE
        assert self._ke is not None
        try:
            shared = self._ke.shared_secret(ke.data)
        except CryptoError as exc:
            sa.fail(f"invalid KE from responder: {exc}")
            return Outcome.DONE
        sa.spi_r = msg.header.spi_r
        sa.nonce_r = nonce.data
        learn_peer_support(sa, msg)
        sa.init_response = raw
        setup_keys(sa, chosen, shared)
        from meshsec.agent.ike.sa import State

        sa.state = State.AUTHENTICATING
        if detect_nat(sa, msg, sa.spi_r, sa.local, sa.remote) and sa.udp_encap:
            sa.float_ports()
        return Outcome.DONE

    def _retry_group(self, sa: IkeSa, n: NotifyPayload) -> Outcome:
        if len(n.data) != 2:
            sa.fail("malformed INVALID_KE_PAYLOAD")
            return Outcome.DONE
        (group,) = struct.unpack("!H", n.data)
        acceptable = {g for spec in sa.config.specs for g in spec.dh_groups()}
        if group not in acceptable or group == self._group or self._retries >= MAX_INIT_RETRIES:
            sa.fail(f"responder asks for DH group {group} we cannot use")
            return Outcome.DONE
        self._retries += 1
        self._group = group
        return Outcome.RETRY

    def on_timeout(self, sa: IkeSa) -> None:
        sa.fail("IKE_SA_INIT: peer not responding (retransmit limit)")


def respond_ike_init(sa: IkeSa, msg: Message, now: float) -> list[Payload]:
    from meshsec.agent.ike.events import IkeSaFailed
    from meshsec.agent.ike.sa import State

    def reject(ntype: NotifyType, data: bytes = b"") -> list[Payload]:
        sa.close_after_response(IkeSaFailed(f"IKE_SA_INIT rejected: {ntype.name}"))
        return [NotifyPayload(ntype, data)]

    sa_p, ke, nonce = msg.find(PayloadType.SA), msg.find(PayloadType.KE), msg.find(PayloadType.NONCE)
    if (
        not isinstance(sa_p, SaPayload)
        or not isinstance(ke, KePayload)
        or not isinstance(nonce, NoncePayload)
    ):
        return reject(NotifyType.INVALID_SYNTAX)
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
        return reject(NotifyType.NO_PROPOSAL_CHOSEN)
    if chosen.dh != ke.group:
        assert chosen.dh is not None
        return reject(NotifyType.INVALID_KE_PAYLOAD, struct.pack("!H", chosen.dh))
    try:
        kex = sa.dh_factory(ke.group, sa.rnd)
        shared = kex.shared_secret(ke.data)
    except (CryptoError, ValueError):
        return reject(NotifyType.INVALID_SYNTAX)
    sa.nonce_i = nonce.data
    sa.nonce_r = sa.rnd.bytes(NONCE_SIZE)
    learn_peer_support(sa, msg)
    frag = [NotifyPayload(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED)] if sa.frag_peer else []
    setup_keys(sa, chosen, shared)
    sa.state = State.AUTHENTICATING
    if detect_nat(sa, msg, bytes(8), sa.local, sa.remote):
        out_nat = nat_notifies(sa, sa.local, sa.remote)
    else:
        out_nat = []
    answer = Chosen(
        chosen.number, chosen.protocol, b"", chosen.encr, chosen.prf, chosen.integ, chosen.dh, None
    )
    return [
        SaPayload((answer.as_proposal(b""),)),
        KePayload(kex.group, kex.public_bytes()),
        NoncePayload(sa.nonce_r),
        *out_nat,
        *certreq_payloads(sa.config),
        *signature_notifies(sa),
        *frag,
    ]
