"""IKEV2_FRAGMENTATION_SUPPORTED (RFC 7383 2.3) in IKE_SA_INIT: when both ends announce it,
encrypted messages larger than fragment_size go out as SKF fragments (task_manager.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshsec.agent.ike.constants import NotifyType
from meshsec.agent.ike.feature import Announcement
from meshsec.agent.ike.payloads import Message, NotifyPayload, Payload

if TYPE_CHECKING:
    from meshsec.agent.ike.sa import IkeSa


class Fragmentation(Announcement):
    def build_request(self, sa: IkeSa, out: list[Payload]) -> None:
        if sa.config.fragmentation:
            out.append(NotifyPayload(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))

    def learn(self, sa: IkeSa, msg: Message) -> None:
        announced = msg.notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED) is not None
        sa.frag_peer = sa.config.fragmentation and announced

    def build_response(self, sa: IkeSa, out: list[Payload]) -> None:
        if sa.frag_peer:
            out.append(NotifyPayload(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))
