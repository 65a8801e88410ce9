"""IKEV2_FRAGMENTATION_SUPPORTED (RFC 7383 2.3) in IKE_SA_INIT: when both ends announce it,
encrypted messages larger than fragment_size go out as SKF fragments (task_manager.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshsec.agent.ike.constants import NotifyType
from meshsec.agent.ike.feature import Feature, Refusal
from meshsec.agent.ike.payloads import Message, NotifyPayload, Payload
from meshsec.agent.ike.task import Outcome

if TYPE_CHECKING:
    from meshsec.agent.ike.sa import IkeSa


def _learn(sa: IkeSa, msg: Message) -> None:
    sa.frag_peer = (
        sa.config.fragmentation and msg.notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED) is not None
    )


class Fragmentation(Feature):
    def build_request(self, sa: IkeSa, out: list[Payload]) -> None:
        if sa.config.fragmentation:
            out.append(NotifyPayload(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))

    def process_response(self, sa: IkeSa, msg: Message, raw: bytes) -> Outcome | Refusal | None:
        _learn(sa, msg)
        return None

    def process_request(self, sa: IkeSa, msg: Message) -> Refusal | None:
        _learn(sa, msg)
        return None

    def build_response(self, sa: IkeSa, out: list[Payload]) -> None:
        if sa.frag_peer:
            out.append(NotifyPayload(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))
