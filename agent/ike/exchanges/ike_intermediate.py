"""IKE_INTERMEDIATE (RFC 9242) carrying the additional key exchanges of a new IKE SA (RFC 9370
2.2.1-2.2.2): one exchange per negotiated ADDKE transform, in order, between IKE_SA_INIT and
IKE_AUTH. The state (what is due, SK(n), IntAuth) is in intermediate.py; this module moves the
messages and re-keys the SA after each exchange: the initiator when it has the answer, the
responder once its answer is sealed with the keys the request came under."""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshsec.agent.ike.constants import ERROR_NOTIFY_LIMIT, ExchangeType, NotifyType, notify_name
from meshsec.agent.ike.events import IkeSaFailed
from meshsec.agent.ike.failures import FailureReason
from meshsec.agent.ike.intermediate import (
    AdditionalExchanges,
    Inner,
    IntermediateError,
    SaContext,
    encode_inner,
)
from meshsec.agent.ike.payloads import Message, NotifyPayload, Payload
from meshsec.agent.ike.task import Outcome, Task

if TYPE_CHECKING:
    from meshsec.agent.ike.sa import IkeSa


def _rekey(
    sa: IkeSa, add: AdditionalExchanges, shared: bytes, mid: int, request: Inner, response: Inner
) -> None:
    assert sa.prf is not None and sa.cipher is not None and sa.keys is not None
    ctx = SaContext(sa.prf, sa.cipher, sa.integ, sa.nonce_i, sa.nonce_r, sa.spi_i, sa.spi_r)
    sa.keys = add.complete(ctx, sa.keys, shared, mid, request, response)
    if not sa.initiator:
        # A retransmission of the request we just answered still comes under the old keys.
        sa.previous_protection = sa.protection
    sa.install_protection()


class IkeIntermediate(Task):
    exchange = ExchangeType.IKE_INTERMEDIATE

    def __init__(self) -> None:
        self._request: list[Payload] = []

    def build(self, sa: IkeSa, now: float) -> list[Payload]:
        add = sa.additional
        assert add is not None and not add.finished
        self._request = add.request(sa.dh_factory(add.next_method, sa.rnd))
        return self._request

    def process(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> Outcome:
        add = sa.additional
        assert add is not None
        errors = [n for n in msg.notifies() if n.notify_type < ERROR_NOTIFY_LIMIT]
        if errors:
            ntype = errors[0].notify_type
            sa.fail(f"IKE_INTERMEDIATE refused: {notify_name(ntype)}", FailureReason.from_notify(ntype))
            return Outcome.DONE
        try:
            shared = add.response(msg.payloads)
        except IntermediateError as exc:
            sa.fail(str(exc), FailureReason.INVALID_RESPONSE)
            return Outcome.DONE
        _rekey(
            sa, add, shared, msg.header.message_id, encode_inner(self._request), (msg.inner_first, msg.inner)
        )
        if not add.finished:
            sa.tasks.queue_first([IkeIntermediate()])
        return Outcome.DONE

    def on_timeout(self, sa: IkeSa) -> None:
        sa.fail("IKE_INTERMEDIATE: peer not responding (retransmit limit)", FailureReason.TIMEOUT)


def respond_ike_intermediate(sa: IkeSa, msg: Message, now: float) -> list[Payload]:
    add = sa.additional
    try:
        if add is None:
            raise IntermediateError("IKE_INTERMEDIATE without additional key exchanges negotiated")
        answer, shared = add.answer(msg.payloads, sa.dh_factory, sa.rnd)
    except IntermediateError as exc:
        sa.close_after_response(IkeSaFailed(str(exc), FailureReason.INVALID_SYNTAX))
        return [NotifyPayload(NotifyType.INVALID_SYNTAX)]
    mid, request, response = msg.header.message_id, (msg.inner_first, msg.inner), encode_inner(answer)
    sa.after_response = lambda: _rekey(sa, add, shared, mid, request, response)
    return answer
