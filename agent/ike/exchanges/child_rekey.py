"""CHILD_SA rekeying (RFC 7296 1.3.3, 2.8) with make-before-break and the collision rules of
2.8.1 and 2.25.1.

Initiator: CREATE_CHILD_SA with N(REKEY_SA) naming our inbound SPI, optional PFS KE. When the
answer arrives the new pair is installed with outbound traffic switched to it at once (the
responder installed its new inbound SA before answering), then the old pair is deleted.

Responder: the new inbound SA is announced (and, via the adapter, installed) in the answer;
outbound traffic stays on the old pair until the initiator's DELETE of it arrives, which
proves the initiator has its new inbound SA (strongSwan does the same since 5.5).

Collisions: both peers rekey the same CHILD_SA at once. Both answer as usual; whichever
exchange has the lowest nonce (the lower of its Ni/Nr, compared with the other exchange's)
created a redundant pair: its initiator deletes that pair, the winner's initiator deletes the
old one. A rekey request for a pair we are deleting gets TEMPORARY_FAILURE, one for a pair we
do not know CHILD_SA_NOT_FOUND; a refused rekey is retried after a jittered back-off."""

from __future__ import annotations

import dataclasses
import logging
import struct
from typing import TYPE_CHECKING

from meshsec.agent.ike.config import ChildConfig
from meshsec.agent.ike.constants import (
    ERROR_NOTIFY_LIMIT,
    NONCE_SIZE,
    NotifyType,
    PayloadType,
    ProtocolId,
    notify_name,
)
from meshsec.agent.ike.events import ChildSaFailed, ChildSaRekeyed, RekeyFailed
from meshsec.agent.ike.exchanges.child_create import ChildCreate, child_answer_payloads
from meshsec.agent.ike.exchanges.child_sa import (
    ChildAnswer,
    Succession,
    respond_child,
    succeeded_by_peer,
    supersede,
)
from meshsec.agent.ike.exchanges.informational import ChildDelete
from meshsec.agent.ike.failures import FailureReason
from meshsec.agent.ike.lifetime import backoff
from meshsec.agent.ike.payloads import Message, NoncePayload, NotifyPayload, Payload
from meshsec.agent.ike.proposals import Chosen
from meshsec.agent.ike.states import ChildState, State
from meshsec.agent.ike.task import Outcome

if TYPE_CHECKING:
    from meshsec.agent.ike.child import ChildSa
    from meshsec.agent.ike.sa import IkeSa

log = logging.getLogger(__name__)

MAX_REKEY_ATTEMPTS = 8  # then the pair runs into its hard lifetime and is deleted


def rekey_config(child: ChildSa) -> ChildConfig:
    """The request proposes the selectors the pair was narrowed to, so the responder accepts
    exactly what it already runs."""
    assert child.config is not None
    return dataclasses.replace(child.config, local_ts=child.ts_local, remote_ts=child.ts_remote)


class ChildRekey(ChildCreate):
    def __init__(self, spi_in: int, config: ChildConfig) -> None:
        super().__init__(config)
        self.spi_in = spi_in

    def build(self, sa: IkeSa, now: float) -> list[Payload] | None:
        old = sa.children.get(self.spi_in)
        if old is None or old.state not in (ChildState.INSTALLED, ChildState.REKEYING):
            sa.stats["rekey_skipped"] += 1  # deleted or already replaced meanwhile
            return None
        if old.state is ChildState.INSTALLED:
            old.move_to(ChildState.REKEYING)
        payloads = super().build(sa, now)
        if payloads is None:
            return None
        return [*self.announce(old), *payloads]

    def announce(self, old: ChildSa) -> list[Payload]:
        """What tells the responder which pair this replaces: N(REKEY_SA) with its SPI."""
        return [NotifyPayload(NotifyType.REKEY_SA, b"", old.protocol, struct.pack("!I", self.spi_in))]

    def _moved(self, sa: IkeSa) -> tuple[IkeSa, ChildSa] | None:
        """The pair and the successor IKE SA it moved to while our request was out. The peer's
        IKE SA rekey we answered completes only with its last IKE_FOLLOWUP_KE (RFC 9370 2.2.4),
        so our request, sent on this SA meanwhile, is answered after the hand-over."""
        found = sa.find_child(self.spi_in)
        return found if found is not None and found[0] is not sa else None

    def process(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> Outcome:
        old = sa.children.get(self.spi_in)
        errors = [n.notify_type for n in msg.notifies() if n.notify_type < ERROR_NOTIFY_LIMIT]
        created = msg.find(PayloadType.SA) is not None and not errors
        moved = self._moved(sa) if old is None else None
        if moved is not None:
            # Left REKEYING the pair would never be rekeyed again: it goes back to INSTALLED on
            # the successor, which retries after the back-off. A pair the peer made anyway on
            # this SA stands on its own and goes with it.
            holder, pair = moved
            sa.stats["rekey_answered_after_ike_rekey"] += 1
            self._refused(holder, pair, [NotifyType.TEMPORARY_FAILURE] if created else errors, now)
        if old is None:
            # The pair was deleted while we rekeyed it (a DELETE crossed our request). A new
            # pair the peer created anyway stands on its own (finish).
            return super().process(sa, msg, raw, now) if created else Outcome.DONE
        if not created:
            outcome = super().process(sa, msg, raw, now)  # INVALID_KE requeue or ChildSaFailed
            if outcome is Outcome.REQUEUE:
                return outcome
            self._refused(sa, old, errors, now)
            return Outcome.DONE
        outcome = super().process(sa, msg, raw, now)  # finish() now, or after IKE_FOLLOWUP_KE
        if self.created is None and not self.awaiting_followup:
            self._refused(sa, old, [], now)
        return outcome

    def finish(self, sa: IkeSa, chosen: Chosen, nonce_r: bytes, secrets: list[bytes], now: float) -> None:
        """All key exchanges done: the new pair and the collision rules (RFC 7296 2.8.1), decided
        only now when IKE_FOLLOWUP_KE exchanges ran (the peer's crossing rekey was recorded in
        `peer_rekey` when we answered it)."""
        old = sa.children.get(self.spi_in)
        if old is None:
            sa.stats["rekey_of_deleted_child"] += 1
            self._succession = Succession()
            super().finish(sa, chosen, nonce_r, secrets, now)
            return
        lost = False
        if old.peer_rekey is not None:
            lost = min(self._nonce, nonce_r) < old.peer_rekey[1]
            sa.stats["rekey_collision_lost" if lost else "rekey_collision_won"] += 1
        self._succession = Succession(self.spi_in, outbound_active=not lost)
        super().finish(sa, chosen, nonce_r, secrets, now)
        new = self.created
        assert new is not None
        if lost:
            # Ours is the redundant pair: delete it; the peer deletes the old one, which then
            # hands outbound traffic to the peer's new pair.
            assert old.peer_rekey is not None
            supersede(old, old.peer_rekey[0])
            new.move_to(ChildState.DELETING)
            sa.queue(ChildDelete(new.spi_in))
        else:
            deleting = old.state is ChildState.DELETING  # our DELETE of it is already queued
            supersede(old, new.spi_in)
            sa.emit(ChildSaRekeyed(old.name, old.spi_in, new.spi_in, old.protocol))
            if not deleting:
                old.move_to(ChildState.DELETING)
                sa.queue(ChildDelete(old.spi_in))

    def refused(self, sa: IkeSa, problem: str, code: FailureReason, now: float) -> None:
        super().refused(sa, problem, code, now)
        old = sa.children.get(self.spi_in)
        holder, pair = (sa, old) if old is not None else (self._moved(sa) or (sa, None))
        if pair is not None:
            notify = code.notify_type
            self._refused(holder, pair, [notify] if notify is not None else [], now)

    def on_timeout(self, sa: IkeSa) -> None:
        old = sa.children.get(self.spi_in)
        sa.emit(
            RekeyFailed(
                "child", old.name if old else self.config.name, "peer not responding", FailureReason.TIMEOUT
            )
        )
        super().on_timeout(sa)

    def _refused(self, sa: IkeSa, old: ChildSa, errors: list[int], now: float) -> None:
        if old.peer_rekey is not None:
            # We answered the peer's rekey of this pair: its new pair takes over and the peer
            # deletes the old one.
            supersede(old, old.peer_rekey[0])
            return
        if NotifyType.TEMPORARY_FAILURE not in errors:  # a collision's answer, retried as planned
            reason = notify_name(errors[0]) if errors else "invalid response"
            code = FailureReason.from_notify(errors[0]) if errors else FailureReason.INVALID_RESPONSE
            sa.emit(RekeyFailed("child", old.name, reason, code))
        if NotifyType.CHILD_SA_NOT_FOUND in errors:
            # The peer lost the pair: forget it and negotiate a fresh one.
            sa.stats["rekey_child_not_found"] += 1
            sa.remove_child(old, by_peer=True)
            sa.queue(ChildCreate(old.config or self.config))
            return
        if old.state is not ChildState.REKEYING:
            return  # deleted meanwhile (hard lifetime, or the adapter asked): no retry
        old.move_to(ChildState.INSTALLED)
        old.rekey_attempts += 1
        if old.rekey_attempts >= MAX_REKEY_ATTEMPTS:
            log.warning("CHILD_SA %s: giving up rekeying after %d attempts", old.name, old.rekey_attempts)
            old.rekey_at = None
            return
        old.rekey_at = now + backoff(old.rekey_attempts, sa.rnd)
        sa.stats["rekey_retry_scheduled"] += 1


def answer_code(answer: ChildAnswer) -> FailureReason:
    """The reason for a CHILD_SA we refused: the error notify we answered with."""
    errors = [
        p.notify_type
        for p in answer.pre
        if isinstance(p, NotifyPayload) and p.notify_type < ERROR_NOTIFY_LIMIT
    ]
    return FailureReason.from_notify(errors[0]) if errors else FailureReason.INVALID_SYNTAX


def respond_child_rekey(sa: IkeSa, msg: Message, rekey: NotifyPayload, now: float) -> list[Payload]:
    if rekey.protocol not in (ProtocolId.ESP, ProtocolId.AH) or len(rekey.spi) != 4:
        return [NotifyPayload(NotifyType.INVALID_SYNTAX)]
    old = sa.find_child_by_out(rekey.protocol, struct.unpack("!I", rekey.spi)[0])
    if old is None or old.config is None:
        sa.stats["rekey_child_not_found"] += 1
        return [NotifyPayload(NotifyType.CHILD_SA_NOT_FOUND, b"", rekey.protocol, rekey.spi)]
    if old.state in (ChildState.REKEYED, ChildState.DELETING) or sa.state is not State.ESTABLISHED:
        sa.stats["rekey_temporary_failure"] += 1
        return [NotifyPayload(NotifyType.TEMPORARY_FAILURE)]
    nonce = msg.find(PayloadType.NONCE)
    if not isinstance(nonce, NoncePayload):
        return [NotifyPayload(NotifyType.INVALID_SYNTAX)]
    nr = sa.rnd.bytes(NONCE_SIZE)
    answer = respond_child(
        sa, msg, nonce.data, nr, now=now, pfs_allowed=True, configs=(old.config,),
        succession=Succession(old.spi_in, outbound_active=False),
    )  # fmt: skip
    if answer.spi_in is not None:
        succeeded_by_peer(old, answer.spi_in, min(nonce.data, nr))
    else:
        code = answer_code(answer)
        sa.emit(ChildSaFailed(old.name, "peer's rekey could not be accepted", code))
        sa.emit(RekeyFailed("child", old.name, "peer's rekey could not be accepted", code))
    return child_answer_payloads(answer, nr)
