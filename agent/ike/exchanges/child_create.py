"""CREATE_CHILD_SA for an additional CHILD_SA (RFC 7296 1.3.1), with PFS when the child's
proposals name DH groups, and RFC 9370 additional key exchanges (keN_) in IKE_FOLLOWUP_KE
exchanges right after it: the task then installs the pair from the last one (finish).
Rekeying builds on it (child_rekey.py, ike_rekey.py); this module's child_answer_payloads lays
out the responder's answer."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from meshsec.agent.ike.config import ChildConfig
from meshsec.agent.ike.constants import NONCE_SIZE, ExchangeType, NotifyType, PayloadType
from meshsec.agent.ike.crypto import CryptoError, KeyExchange
from meshsec.agent.ike.events import ChildSaFailed
from meshsec.agent.ike.exchanges.child_sa import (
    ChildAnswer,
    ChildRequest,
    Negotiated,
    Succession,
    build_child_request,
    check_child_response,
    install_child,
)
from meshsec.agent.ike.exchanges.ike_followup import IkeFollowupKe
from meshsec.agent.ike.failures import FailureReason
from meshsec.agent.ike.payloads import KePayload, Message, NoncePayload, Payload
from meshsec.agent.ike.proposals import Chosen
from meshsec.agent.ike.task import Outcome, Task

if TYPE_CHECKING:
    from meshsec.agent.ike.child import ChildSa
    from meshsec.agent.ike.sa import IkeSa

MAX_KE_RETRIES = 3


class ChildCreate(Task):
    exchange = ExchangeType.CREATE_CHILD_SA

    def __init__(self, config: ChildConfig) -> None:
        self.config = config
        self._req: ChildRequest | None = None
        self._nonce = b""
        self._groups = [g for spec in config.specs for g in spec.dh_groups()]
        self._group: int | None = self._groups[0] if self._groups else None
        self._ke: KeyExchange | None = None
        self._retries = 0
        self._succession = Succession()
        self._negotiated: Negotiated | None = None
        self.created: ChildSa | None = None
        # With additional key exchanges, what IKE_FOLLOWUP_KE (ike_followup.py) completes.
        self.chosen: Chosen | None = None
        self.nonce_r = b""
        self.secrets: list[bytes] = []  # SK(0), SK(1), ...
        self.remaining: list[tuple[int, int]] = []

    def build(self, sa: IkeSa, now: float) -> list[Payload] | None:
        self._nonce = sa.rnd.bytes(NONCE_SIZE)
        self._req, pre, body = build_child_request(sa, self.config, pfs=self._group is not None)
        ke: list[Payload] = []
        if self._group is not None:
            self._ke = sa.dh_factory(self._group, sa.rnd)
            ke.append(KePayload(self._group, self._ke.public_bytes()))
        # SA, Ni, [KE], TSi, TSr (RFC 7296 1.3.1)
        return [*pre, body[0], NoncePayload(self._nonce), *ke, *body[1:]]

    def process(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> Outcome:
        assert self._req is not None
        invalid_ke = msg.notify(NotifyType.INVALID_KE_PAYLOAD)
        if invalid_ke is not None and len(invalid_ke.data) == 2:
            (group,) = struct.unpack("!H", invalid_ke.data)
            if group in self._groups and group != self._group and self._retries < MAX_KE_RETRIES:
                self._retries += 1
                self._group = group
                return Outcome.REQUEUE
        nonce = msg.find(PayloadType.NONCE)
        if not isinstance(nonce, NoncePayload):
            # Error answers carry no nonce; check_child_response reports the notify.
            if msg.find(PayloadType.SA) is None:
                check_child_response(sa, self._req, msg, self._group)
            else:
                sa.emit(
                    ChildSaFailed(
                        self.config.name, "CREATE_CHILD_SA response lacks Nr", FailureReason.INVALID_RESPONSE
                    )
                )
            return Outcome.DONE
        shared = b""
        if self._ke is not None and msg.find(PayloadType.SA) is not None:
            ke = msg.find(PayloadType.KE)
            try:
                if not isinstance(ke, KePayload) or ke.group != self._group:
                    raise CryptoError("response lacks the KE payload of the negotiated group")
                shared = self._ke.shared_secret(ke.data)
            except CryptoError as exc:
                sa.emit(ChildSaFailed(self.config.name, f"PFS failed: {exc}", FailureReason.INVALID_RESPONSE))
                return Outcome.DONE
        negotiated = check_child_response(sa, self._req, msg, self._group)
        if negotiated is None:
            return Outcome.DONE
        self._negotiated = negotiated
        if negotiated.chosen.addke:
            link = msg.notify(NotifyType.ADDITIONAL_KEY_EXCHANGE)
            assert link is not None  # check_child_response refuses an answer without it
            self.chosen, self.nonce_r, self.secrets = negotiated.chosen, nonce.data, [shared]
            self.remaining = list(negotiated.chosen.addke)
            sa.tasks.queue_first([IkeFollowupKe(self, link.data)])
            return Outcome.DONE
        self.finish(sa, negotiated.chosen, nonce.data, [shared], now)
        return Outcome.DONE

    @property
    def awaiting_followup(self) -> bool:
        """The answer came; IKE_FOLLOWUP_KE exchanges are still due before the pair exists."""
        return bool(self.remaining) and self.created is None

    def finish(self, sa: IkeSa, chosen: Chosen, nonce_r: bytes, secrets: list[bytes], now: float) -> None:
        """Every key exchange is done: the pair, keyed from all of them."""
        assert self._negotiated is not None
        self.remaining = []
        self.created = install_child(
            sa, self._negotiated, self._nonce, nonce_r, True, secrets, now, self._succession
        )

    def refused(self, sa: IkeSa, problem: str, code: FailureReason, now: float) -> None:
        """An IKE_FOLLOWUP_KE was refused or answered wrongly: the responder made nothing."""
        self.remaining = []
        sa.emit(ChildSaFailed(self.config.name, problem, code))

    def on_timeout(self, sa: IkeSa) -> None:
        sa.fail("CREATE_CHILD_SA: peer not responding (retransmit limit)", FailureReason.TIMEOUT)


def child_answer_payloads(answer: ChildAnswer, nr: bytes) -> list[Payload]:
    """[N], SA, Nr, [KEr], TSi, TSr (RFC 7296 1.3.1), [N(ADDITIONAL_KEY_EXCHANGE)] (RFC 9370
    2.2.4); only the notifies on error."""
    if not answer.body:
        return answer.pre
    ke: list[Payload] = [answer.ke] if answer.ke is not None else []
    return [*answer.pre, answer.body[0], NoncePayload(nr), *ke, *answer.body[1:], *answer.post]
