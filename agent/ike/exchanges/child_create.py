"""CREATE_CHILD_SA for an additional CHILD_SA (RFC 7296 1.3.1), without PFS. Rekeying (with
REKEY_SA and collision handling) arrives in part 2 as its own task units."""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshsec.agent.ike.config import ChildConfig
from meshsec.agent.ike.constants import ExchangeType, NotifyType, PayloadType
from meshsec.agent.ike.events import ChildSaFailed
from meshsec.agent.ike.exchanges.child_sa import (
    ChildRequest,
    build_child_request,
    complete_child_initiator,
    respond_child,
)
from meshsec.agent.ike.exchanges.ike_init import NONCE_SIZE
from meshsec.agent.ike.payloads import Message, NoncePayload, NotifyPayload, Payload
from meshsec.agent.ike.task import Outcome

if TYPE_CHECKING:
    from meshsec.agent.ike.sa import IkeSa


class ChildCreate:
    exchange = ExchangeType.CREATE_CHILD_SA
    name = "child_create"

    def __init__(self, config: ChildConfig) -> None:
        self.config = config
        self._req: ChildRequest | None = None
        self._nonce = b""

    def build(self, sa: IkeSa, now: float) -> list[Payload]:
        self._nonce = sa.rnd.bytes(NONCE_SIZE)
        self._req, pre, body = build_child_request(sa, self.config)
        # SA, Ni, [KE], TSi, TSr (RFC 7296 1.3.1)
        return [*pre, body[0], NoncePayload(self._nonce), *body[1:]]

    def process(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> Outcome:
        assert self._req is not None
        nonce = msg.find(PayloadType.NONCE)
        if not isinstance(nonce, NoncePayload):
            if msg.find(PayloadType.SA) is None:
                complete_child_initiator(sa, self._req, msg, b"", b"")  # reports the error notify
            else:
                sa.emit(ChildSaFailed(self.config.name, "CREATE_CHILD_SA response lacks Nr"))
            return Outcome.DONE
        complete_child_initiator(sa, self._req, msg, self._nonce, nonce.data)
        return Outcome.DONE

    def on_timeout(self, sa: IkeSa) -> None:
        sa.fail("CREATE_CHILD_SA: peer not responding (retransmit limit)")


def respond_create_child(sa: IkeSa, msg: Message, now: float) -> list[Payload]:
    if msg.notify(NotifyType.REKEY_SA) is not None or msg.find(PayloadType.KE) is not None:
        # CHILD_SA rekeying, IKE SA rekeying and PFS are part 2.
        return [
            NotifyPayload(
                NotifyType.NO_ADDITIONAL_SAS
                if msg.find(PayloadType.TSi) is None
                else NotifyType.NO_PROPOSAL_CHOSEN
            )
        ]
    nonce = msg.find(PayloadType.NONCE)
    if not isinstance(nonce, NoncePayload):
        return [NotifyPayload(NotifyType.INVALID_SYNTAX)]
    nr = sa.rnd.bytes(NONCE_SIZE)
    pre, body = respond_child(sa, msg, nonce.data, nr)
    if not body:
        return pre
    return [*pre, body[0], NoncePayload(nr), *body[1:]]
