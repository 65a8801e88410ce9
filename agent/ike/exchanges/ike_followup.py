"""IKE_FOLLOWUP_KE (RFC 9370 2.2.4): the additional key exchanges of a CREATE_CHILD_SA, for an
IKE SA rekey and for a CHILD_SA (new or rekeyed) alike. The CREATE_CHILD_SA answer names them
with N(ADDITIONAL_KEY_EXCHANGE)(link); each follow-up carries KEi(n) and that link and is
answered with KEr(n) (and the next link while more are due). Only then does the new SA exist:
an IKE SA keyed with SKEYSEED = prf(SK_d, SK(0) | Ni | Nr | SK(1) | ... | SK(n)), a CHILD_SA
with KEYMAT = prf+(SK_d, SK(0) | Ni | Nr | SK(1) | ... | SK(n)).

Our side's task (`IkeFollowupKe`) serves any `RekeyInProgress` (IkeRekey, ChildCreate and its
subclasses). The peer's follow-ups are answered here from `sa.followup`, a `PeerFollowup` that
the CREATE_CHILD_SA responder left (ike_rekey.py, child_sa.py) and that ends with its
`complete` once the last key exchange is done, or with `abandon` when no follow-up came for
FOLLOWUP_TIMEOUT (the IKE SA's timer) or a bad one did."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from meshsec.agent.ike.constants import ERROR_NOTIFY_LIMIT, ExchangeType, NotifyType, PayloadType, notify_name
from meshsec.agent.ike.crypto import CryptoError, KeyExchange
from meshsec.agent.ike.failures import FailureReason
from meshsec.agent.ike.payloads import KePayload, Message, NotifyPayload, Payload
from meshsec.agent.ike.proposals import Chosen
from meshsec.agent.ike.task import Outcome, Task

if TYPE_CHECKING:
    from meshsec.agent.ike.sa import IkeSa

# RFC 9370 2.2.4: a responder drops the state of an abandoned follow-up after 5-20 s.
FOLLOWUP_TIMEOUT = 20.0


@dataclass(slots=True)
class PeerFollowup:
    """The responder's half-done CREATE_CHILD_SA: what the next IKE_FOLLOWUP_KE must continue.
    Subclasses say what the finished exchange makes (`complete`) and what an abandoned one
    leaves behind (`abandon`)."""

    link: bytes
    secrets: list[bytes]  # SK(0), SK(1), ...
    remaining: list[tuple[int, int]]  # (ADDKE transform type, method)
    deadline: float

    def expired(self, now: float) -> bool:
        return now >= self.deadline

    def complete(self, sa: IkeSa, now: float) -> None:
        raise NotImplementedError

    def abandon(self, sa: IkeSa) -> None:
        """The follow-ups stopped (timeout, a bad or unknown one): nothing was created."""


def drop_followup(sa: IkeSa) -> None:
    pending, sa.followup = sa.followup, None
    if pending is not None:
        pending.abandon(sa)


def respond_ike_followup_ke(sa: IkeSa, msg: Message, now: float) -> list[Payload]:
    """The peer's next additional key exchange of its CREATE_CHILD_SA (RFC 9370 2.2.4)."""
    pending = sa.followup
    link = msg.notify(NotifyType.ADDITIONAL_KEY_EXCHANGE)
    if pending is None or link is None or link.data != pending.link or pending.expired(now):
        drop_followup(sa)
        sa.stats["followup_state_not_found"] += 1
        return [NotifyPayload(NotifyType.STATE_NOT_FOUND)]
    method = pending.remaining[0][1]
    ke = msg.find(PayloadType.KE)
    if not isinstance(ke, KePayload) or ke.group != method:
        drop_followup(sa)
        return [NotifyPayload(NotifyType.INVALID_SYNTAX)]
    try:
        kex = sa.dh_factory(method, sa.rnd)
        pending.secrets.append(kex.shared_secret(ke.data))
    except (CryptoError, ValueError):
        drop_followup(sa)
        return [NotifyPayload(NotifyType.INVALID_SYNTAX)]
    pending.remaining.pop(0)
    out: list[Payload] = [KePayload(method, kex.public_bytes())]
    if pending.remaining:
        pending.link = sa.rnd.bytes(8)
        pending.deadline = now + FOLLOWUP_TIMEOUT
        return [*out, NotifyPayload(NotifyType.ADDITIONAL_KEY_EXCHANGE, pending.link)]
    sa.followup = None
    pending.complete(sa, now)
    return out


class RekeyInProgress(Protocol):
    chosen: Chosen | None
    nonce_r: bytes
    secrets: list[bytes]
    remaining: list[tuple[int, int]]

    def finish(self, sa: IkeSa, chosen: Chosen, nonce_r: bytes, secrets: list[bytes], now: float) -> None: ...

    def refused(self, sa: IkeSa, problem: str, code: FailureReason, now: float) -> None: ...

    def on_timeout(self, sa: IkeSa) -> None: ...


class IkeFollowupKe(Task):
    exchange = ExchangeType.IKE_FOLLOWUP_KE
    survives_ike_rekey = False

    def __init__(self, rekey: RekeyInProgress, link: bytes) -> None:
        self.rekey = rekey
        self._link = link
        self._ke: KeyExchange | None = None

    def build(self, sa: IkeSa, now: float) -> list[Payload]:
        method = self.rekey.remaining[0][1]
        self._ke = sa.dh_factory(method, sa.rnd)
        return [
            KePayload(method, self._ke.public_bytes()),
            NotifyPayload(NotifyType.ADDITIONAL_KEY_EXCHANGE, self._link),
        ]

    def process(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> Outcome:
        rekey = self.rekey
        assert self._ke is not None and rekey.chosen is not None
        errors = [n.notify_type for n in msg.notifies() if n.notify_type < ERROR_NOTIFY_LIMIT]
        ke = msg.find(PayloadType.KE)
        if errors:
            rekey.refused(
                sa,
                f"IKE_FOLLOWUP_KE refused: {notify_name(errors[0])}",
                FailureReason.from_notify(errors[0]),
                now,
            )
            return Outcome.DONE
        if not isinstance(ke, KePayload) or ke.group != self._ke.group:
            rekey.refused(sa, "IKE_FOLLOWUP_KE answer lacks the KE due", FailureReason.INVALID_RESPONSE, now)
            return Outcome.DONE
        try:
            rekey.secrets.append(self._ke.shared_secret(ke.data))
        except CryptoError as exc:
            rekey.refused(
                sa, f"invalid KE in IKE_FOLLOWUP_KE answer: {exc}", FailureReason.INVALID_RESPONSE, now
            )
            return Outcome.DONE
        rekey.remaining.pop(0)
        if rekey.remaining:
            link = msg.notify(NotifyType.ADDITIONAL_KEY_EXCHANGE)
            if link is None:
                rekey.refused(
                    sa, "IKE_FOLLOWUP_KE answer lacks the next link", FailureReason.INVALID_RESPONSE, now
                )
                return Outcome.DONE
            sa.tasks.queue_first([IkeFollowupKe(rekey, link.data)])
            return Outcome.DONE
        rekey.finish(sa, rekey.chosen, rekey.nonce_r, rekey.secrets, now)
        return Outcome.DONE

    def on_timeout(self, sa: IkeSa) -> None:
        self.rekey.on_timeout(sa)
