"""IKE SA rekeying (RFC 7296 1.3.2, 2.8, 2.18) and its collisions (2.8.2, 2.25.2).

A CREATE_CHILD_SA without TS carries an IKE proposal with the sender's new SPI, a nonce and a
KE. Both ends derive SKEYSEED = prf_old(SK_d old, g^ir new | Ni | Nr) and the new keys with
the new PRF; the rekey initiator is the new SA's initiator. The new IKE SA is a separate IkeSa
object (own SPIs, message IDs from 0, keys); the CHILD_SAs and queued requests move to it,
the old SA says IkeSaRekeyed and is deleted by the rekey initiator.

Collisions: both peers rekey at once, both answer as usual. The exchange with the lowest nonce
made a redundant IKE SA, which its initiator deletes; the winner's new SA inherits the
CHILD_SAs and the winner deletes the old SA. A rekey request for an SA we are closing, or
while one of our CHILD_SA exchanges is half done, gets TEMPORARY_FAILURE and is retried after
a jittered back-off."""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshsec.agent.ike.constants import (
    ERROR_NOTIFY_LIMIT,
    NONCE_SIZE,
    ExchangeType,
    NotifyType,
    PayloadType,
    ProtocolId,
    notify_name,
)
from meshsec.agent.ike.crypto import CryptoError, KeyExchange
from meshsec.agent.ike.events import RekeyFailed
from meshsec.agent.ike.exchanges.ike_followup import FOLLOWUP_TIMEOUT, IkeFollowupKe, PeerFollowup
from meshsec.agent.ike.failures import FailureReason
from meshsec.agent.ike.features.key_exchange import setup_keys
from meshsec.agent.ike.keys import rekey_skeyseed
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
from meshsec.agent.ike.states import State
from meshsec.agent.ike.task import Outcome, Task

if TYPE_CHECKING:
    from meshsec.agent.ike.sa import IkeSa

log = logging.getLogger(__name__)

MAX_KE_RETRIES = 3


def spawn(
    sa: IkeSa, *, initiator: bool, spi_i: bytes, spi_r: bytes, ni: bytes, nr: bytes, chosen: Chosen,
    shared: bytes, now: float, additional: tuple[bytes, ...] = (),
) -> IkeSa:  # fmt: skip
    """The successor IKE SA, established, with keys from the rekey exchange; registered with
    the container (table) at once so the peer's first message on it is routed."""
    assert sa.prf is not None and sa.keys is not None
    new = sa.sibling(initiator=initiator)
    new.spi_i, new.spi_r = spi_i, spi_r
    new.spawned = True
    new.originator = sa.originator
    new.nonce_i, new.nonce_r = ni, nr
    # With additional key exchanges (IKE_FOLLOWUP_KE): prf(SK_d, SK(0) | Ni | Nr | SK(1) | ...).
    seed = rekey_skeyseed(sa.prf, sa.keys.sk_d.reveal(), ni, nr, shared, additional)
    setup_keys(new, chosen, shared, seed)
    new.remote_identity = sa.remote_identity
    new.eap_identity = sa.eap_identity
    new.nat_local, new.nat_remote = sa.nat_local, sa.nat_remote
    new.mobike, new.peer_additional = sa.mobike, sa.peer_additional  # negotiated once, in IKE_AUTH
    new.created_at = now
    new.move_to(State.ESTABLISHED)
    new.last_inbound = now
    new.lifetime.start(now)
    new.lifetime.reauth_at = (
        sa.lifetime.reauth_at
    )  # rekeying keys the SA; it does not postpone reauthentication
    if sa.on_new_sa is not None:
        sa.on_new_sa(new)
    return new


def _lower(a: bytes, b: bytes) -> bytes:
    return min(a, b)


class IkeRekey(Task):
    exchange = ExchangeType.CREATE_CHILD_SA
    survives_ike_rekey = False  # the successor has its own lifetime

    def __init__(self) -> None:
        self._spi = b""
        self._nonce = b""
        self._group: int | None = None
        self._ke: KeyExchange | None = None
        self._offered: tuple[Proposal, ...] = ()
        self._retries = 0
        # With additional key exchanges, what IKE_FOLLOWUP_KE (ike_followup.py) completes.
        self.chosen: Chosen | None = None
        self.nonce_r = b""
        self.secrets: list[bytes] = []  # SK(0), SK(1), ...
        self.remaining: list[tuple[int, int]] = []

    def build(self, sa: IkeSa, now: float) -> list[Payload] | None:
        if sa.state is not State.ESTABLISHED or sa.successor is not None:
            sa.stats["ike_rekey_skipped"] += 1
            return None
        if sa.followup is not None:
            # The peer's CREATE_CHILD_SA still runs its IKE_FOLLOWUP_KE exchanges on this SA; what
            # they make must exist before the CHILD_SAs move to a successor. Try again later.
            sa.stats["ike_rekey_deferred_for_followup"] += 1
            sa.lifetime.retry_rekey(now)
            return None
        assert sa.chosen is not None
        if self._group is None:
            self._group = sa.chosen.dh or sa.config.specs[0].dh_groups()[0]
        self._spi = sa.rnd.bytes(8)
        self._nonce = sa.rnd.bytes(NONCE_SIZE)
        self._ke = sa.dh_factory(self._group, sa.rnd)
        self._offered = tuple(spec.to_proposal(i + 1, self._spi) for i, spec in enumerate(sa.config.specs))
        sa.ike_rekey_task = self
        return [
            SaPayload(self._offered),
            NoncePayload(self._nonce),
            KePayload(self._group, self._ke.public_bytes()),
        ]

    def process(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> Outcome:
        sa.ike_rekey_task = None
        invalid_ke = msg.notify(NotifyType.INVALID_KE_PAYLOAD)
        if invalid_ke is not None and len(invalid_ke.data) == 2 and sa.peer_ike_rekey is None:
            (group,) = struct.unpack("!H", invalid_ke.data)
            groups = {g for spec in sa.config.specs for g in spec.dh_groups()}
            if group in groups and group != self._group and self._retries < MAX_KE_RETRIES:
                self._retries += 1
                self._group = group
                return Outcome.REQUEUE
        errors = [n.notify_type for n in msg.notifies() if n.notify_type < ERROR_NOTIFY_LIMIT]
        sa_p, nonce, ke = msg.find(PayloadType.SA), msg.find(PayloadType.NONCE), msg.find(PayloadType.KE)
        problem = None
        chosen = None
        shared = b""
        if errors:
            problem = notify_name(errors[0])
        elif (
            not isinstance(sa_p, SaPayload)
            or not isinstance(nonce, NoncePayload)
            or not isinstance(ke, KePayload)
        ):
            problem = "response lacks SA, Nr or KEr"
        elif (
            len(sa_p.proposals) != 1 or (chosen := accept_response(self._offered, sa_p.proposals[0])) is None
        ):
            problem = "responder chose a proposal we did not offer"
        elif len(chosen.spi) != 8 or chosen.dh != self._group or ke.group != self._group:
            problem = "responder's SPI or DH group does not fit"
        elif chosen.addke and msg.notify(NotifyType.ADDITIONAL_KEY_EXCHANGE) is None:
            problem = "responder chose additional key exchanges but sent no ADDITIONAL_KEY_EXCHANGE"
        else:
            assert self._ke is not None
            try:
                shared = self._ke.shared_secret(ke.data)
            except CryptoError as exc:
                problem = f"invalid KE: {exc}"
        if problem is not None or chosen is None or not isinstance(nonce, NoncePayload):
            code = FailureReason.from_notify(errors[0]) if errors else FailureReason.INVALID_RESPONSE
            self._refused(sa, problem or "invalid response", code, now)
            return Outcome.DONE
        if chosen.addke:
            link = msg.notify(NotifyType.ADDITIONAL_KEY_EXCHANGE)
            assert link is not None
            self.chosen, self.nonce_r, self.secrets = chosen, nonce.data, [shared]
            self.remaining = list(chosen.addke)
            sa.ike_rekey_task = self  # still in progress: a crossing rekey is a collision
            sa.tasks.queue_first([IkeFollowupKe(self, link.data)])
            return Outcome.DONE
        self.finish(sa, chosen, nonce.data, [shared], now)
        return Outcome.DONE

    def finish(self, sa: IkeSa, chosen: Chosen, nonce_r: bytes, secrets: list[bytes], now: float) -> None:
        """All key exchanges done: the successor SA, and the collision rules."""
        sa.ike_rekey_task = None
        new = spawn(sa, initiator=True, spi_i=self._spi, spi_r=chosen.spi, ni=self._nonce, nr=nonce_r,
                    chosen=chosen, shared=secrets[0], additional=tuple(secrets[1:]), now=now)  # fmt: skip
        nonce_data = nonce_r
        if sa.peer_ike_rekey is not None:
            other, other_low = sa.peer_ike_rekey
            if _lower(self._nonce, nonce_data) < other_low:
                # Ours is redundant: the peer's new SA takes over, the peer deletes the old one.
                sa.stats["ike_rekey_collision_lost"] += 1
                sa.hand_over(other, now)
                new.delete(now)
                return
            sa.stats["ike_rekey_collision_won"] += 1
            # The peer deletes its redundant SA (the one we answered for).
        sa.hand_over(new, now)
        sa.delete(now)

    def refused(self, sa: IkeSa, problem: str, code: FailureReason, now: float) -> None:
        sa.ike_rekey_task = None
        self._refused(sa, problem, code, now)

    def _refused(self, sa: IkeSa, problem: str, code: FailureReason, now: float) -> None:
        if sa.peer_ike_rekey is not None:
            # We answered the peer's rekey: its new SA takes over and the peer deletes this one.
            sa.hand_over(sa.peer_ike_rekey[0], now)
            return
        if code is not FailureReason.TEMPORARY_FAILURE:  # that one is part of a collision, retried as planned
            sa.emit(RekeyFailed("ike", sa.config.name, problem, code))
        delay = sa.lifetime.retry_rekey(now)
        sa.stats["ike_rekey_retry_scheduled"] += 1
        log.info("IKE SA %s: rekey refused (%s); retrying in %.1f s", sa.local_spi.hex(), problem, delay)

    def on_timeout(self, sa: IkeSa) -> None:
        sa.ike_rekey_task = None
        sa.emit(
            RekeyFailed(
                "ike", sa.config.name, "peer not responding (retransmit limit)", FailureReason.TIMEOUT
            )
        )
        sa.fail("IKE SA rekey: peer not responding (retransmit limit)", FailureReason.TIMEOUT)


def respond_ike_rekey(sa: IkeSa, msg: Message, now: float) -> list[Payload]:
    def temporary(why: str) -> list[Payload]:
        sa.stats["ike_rekey_temporary_failure"] += 1
        log.info("IKE SA %s: peer's rekey refused for now: %s", sa.local_spi.hex(), why)
        return [NotifyPayload(NotifyType.TEMPORARY_FAILURE)]

    if sa.state is not State.ESTABLISHED or sa.successor is not None:
        return temporary("this IKE SA is being deleted or already replaced")
    if sa.child_exchange_in_flight():
        return temporary("a CHILD_SA exchange of ours is half done")
    sa_p, nonce, ke = msg.find(PayloadType.SA), msg.find(PayloadType.NONCE), msg.find(PayloadType.KE)
    if (
        not isinstance(sa_p, SaPayload)
        or not isinstance(nonce, NoncePayload)
        or not isinstance(ke, KePayload)
    ):
        return [NotifyPayload(NotifyType.INVALID_SYNTAX)]
    chosen = select_proposal(sa.config.specs, sa_p.proposals, prefer_ours=sa.config.prefer_own_proposals)
    if chosen is None or chosen.protocol != ProtocolId.IKE or len(chosen.spi) != 8:
        return [NotifyPayload(NotifyType.NO_PROPOSAL_CHOSEN)]
    if chosen.dh != ke.group:
        assert chosen.dh is not None
        return [NotifyPayload(NotifyType.INVALID_KE_PAYLOAD, struct.pack("!H", chosen.dh))]
    try:
        kex = sa.dh_factory(ke.group, sa.rnd)
        shared = kex.shared_secret(ke.data)
    except (CryptoError, ValueError):
        return [NotifyPayload(NotifyType.INVALID_SYNTAX)]
    nr = sa.rnd.bytes(NONCE_SIZE)
    spi_r = sa.rnd.bytes(8)
    answer = Chosen(
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
    out: list[Payload] = [
        SaPayload((answer.as_proposal(spi_r),)),
        NoncePayload(nr),
        KePayload(kex.group, kex.public_bytes()),
    ]
    if chosen.addke:
        # RFC 9370 2.2.4: the new SA exists once the IKE_FOLLOWUP_KE exchanges are done.
        sa.followup = IkeRekeyFollowup(sa.rnd.bytes(8), [shared], list(chosen.addke), now + FOLLOWUP_TIMEOUT,
                                       chosen, nonce.data, nr, spi_r)  # fmt: skip
        return [*out, NotifyPayload(NotifyType.ADDITIONAL_KEY_EXCHANGE, sa.followup.link)]
    adopt_peer_rekey(sa, chosen, nonce.data, nr, spi_r, [shared], now)
    return out


@dataclass(slots=True)
class IkeRekeyFollowup(PeerFollowup):
    """The peer's IKE SA rekey awaiting its IKE_FOLLOWUP_KE exchanges."""

    chosen: Chosen
    nonce_i: bytes
    nonce_r: bytes
    spi_r: bytes

    def complete(self, sa: IkeSa, now: float) -> None:
        adopt_peer_rekey(sa, self.chosen, self.nonce_i, self.nonce_r, self.spi_r, self.secrets, now)


def adopt_peer_rekey(
    sa: IkeSa, chosen: Chosen, ni: bytes, nr: bytes, spi_r: bytes, secrets: list[bytes], now: float
) -> None:
    """The peer's rekey is complete: its successor SA, kept aside if ours is in flight."""
    new = spawn(sa, initiator=False, spi_i=chosen.spi, spi_r=spi_r, ni=ni, nr=nr, chosen=chosen,
                shared=secrets[0], additional=tuple(secrets[1:]), now=now)  # fmt: skip
    if sa.ike_rekey_task is not None:
        sa.peer_ike_rekey = (new, _lower(ni, nr))  # decided when our answer arrives
    else:
        sa.hand_over(new, now)  # the old SA only waits for the initiator's DELETE now
