"""INTERMEDIATE_EXCHANGE_SUPPORTED (RFC 9242 3.1) and the decision, in IKE_SA_INIT, to run the
additional key exchanges of RFC 9370 in IKE_INTERMEDIATE exchanges before IKE_AUTH."""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshsec.agent.ike.constants import NotifyType
from meshsec.agent.ike.exchanges.ike_intermediate import IkeIntermediate
from meshsec.agent.ike.failures import FailureReason
from meshsec.agent.ike.feature import Feature, Refusal
from meshsec.agent.ike.intermediate import AdditionalExchanges
from meshsec.agent.ike.payloads import Message, NotifyPayload, Payload
from meshsec.agent.ike.task import Outcome

if TYPE_CHECKING:
    from meshsec.agent.ike.sa import IkeSa


class IntermediateExchange(Feature):
    """Runs after the key exchange feature: `sa.chosen` holds the negotiated ADDKE transforms."""

    def build_request(self, sa: IkeSa, out: list[Payload]) -> None:
        if any(spec.additional_key_exchanges() for spec in sa.config.specs):
            out.append(NotifyPayload(NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED))

    def process_response(self, sa: IkeSa, msg: Message, raw: bytes) -> Outcome | Refusal | None:
        assert sa.chosen is not None
        sa.additional = AdditionalExchanges.for_chosen(sa.chosen)
        if sa.additional is None:
            return None
        if msg.notify(NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED) is None:
            return Refusal(
                "responder chose additional key exchanges without IKE_INTERMEDIATE support",
                FailureReason.INVALID_RESPONSE,
            )
        sa.tasks.queue_first([IkeIntermediate()])  # before the IKE_AUTH already queued
        return None

    def process_request(self, sa: IkeSa, msg: Message) -> Refusal | None:
        assert sa.chosen is not None
        sa.additional = AdditionalExchanges.for_chosen(sa.chosen)
        if sa.additional is not None and msg.notify(NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED) is None:
            # RFC 9370 2.2.1: proposing ADDKE transforms means announcing IKE_INTERMEDIATE.
            return Refusal.answer(
                NotifyType.INVALID_SYNTAX, "IKE_SA_INIT rejected: ADDKE proposed without IKE_INTERMEDIATE"
            )
        return None

    def build_response(self, sa: IkeSa, out: list[Payload]) -> None:
        if sa.additional is not None:
            out.append(NotifyPayload(NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED))
