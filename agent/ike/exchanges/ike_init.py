"""IKE_SA_INIT (RFC 7296 1.2), composed of the features listed in features/compose.py: COOKIE,
the key exchange, NAT detection, CERTREQ, signature hashes and fragmentation support. This
module only runs them: the initiator's task and the responder's answer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshsec.agent.ike.constants import ExchangeType
from meshsec.agent.ike.events import IkeSaFailed
from meshsec.agent.ike.failures import FailureReason
from meshsec.agent.ike.feature import (
    Refusal,
    build_request,
    build_response,
    process_request,
    process_response,
)
from meshsec.agent.ike.features.compose import ike_sa_init_features
from meshsec.agent.ike.payloads import Message, Payload
from meshsec.agent.ike.task import Outcome, Task

if TYPE_CHECKING:
    from meshsec.agent.ike.sa import IkeSa


class IkeInit(Task):
    exchange = ExchangeType.IKE_SA_INIT

    def __init__(self) -> None:
        self.features = ike_sa_init_features()

    def build(self, sa: IkeSa, now: float) -> list[Payload]:
        return build_request(self.features, sa)

    def process(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> Outcome:
        verdict = process_response(self.features, sa, msg, raw)
        if isinstance(verdict, Refusal):
            sa.fail(verdict.reason, verdict.code)
            return Outcome.DONE
        return verdict or Outcome.DONE

    def on_timeout(self, sa: IkeSa) -> None:
        sa.fail("IKE_SA_INIT: peer not responding (retransmit limit)", FailureReason.TIMEOUT)


def respond_ike_init(sa: IkeSa, msg: Message, now: float) -> list[Payload]:
    features = ike_sa_init_features()
    refusal = process_request(features, sa, msg)
    if refusal is not None:
        # Only IKE_AUTH features defer; an IKE_SA_INIT one doing so is a bug (fails the SA closed).
        assert isinstance(refusal, Refusal) and refusal.notify is not None
        sa.close_after_response(IkeSaFailed(refusal.reason, refusal.code))
        return [refusal.notify]
    return build_response(features, sa, [])
