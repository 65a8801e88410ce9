"""MOBIKE_SUPPORTED in IKE_AUTH (RFC 4555 3.2): both ends announce it, or neither may move the
IKE SA with UPDATE_SA_ADDRESSES. The peer's ADDITIONAL_IP4/6_ADDRESS notifies (3.4) are kept
as `sa.peer_additional`: addresses it may also be reached at."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from meshsec.agent.ike.constants import NotifyType
from meshsec.agent.ike.feature import Feature, Refusal
from meshsec.agent.ike.payloads import Message, NotifyPayload, Payload
from meshsec.agent.ike.task import Outcome

if TYPE_CHECKING:
    from meshsec.agent.ike.sa import IkeSa


def peer_address_list(msg: Message) -> tuple[str, ...] | None:
    """The peer's additional addresses in `msg` (RFC 4555 3.6: a message carrying any of these
    notifies replaces the whole list; NO_ADDITIONAL_ADDRESSES empties it), or None when `msg`
    says nothing about them. Malformed entries are skipped."""
    found: list[str] = []
    mentioned = False
    for n in msg.notifies():
        if n.notify_type == NotifyType.NO_ADDITIONAL_ADDRESSES:
            mentioned = True
        elif n.notify_type in (NotifyType.ADDITIONAL_IP4_ADDRESS, NotifyType.ADDITIONAL_IP6_ADDRESS):
            mentioned = True
            size = 4 if n.notify_type == NotifyType.ADDITIONAL_IP4_ADDRESS else 16
            if len(n.data) == size:
                found.append(str(ipaddress.ip_address(bytes(n.data))))
    return tuple(found) if mentioned else None


class Mobike(Feature):
    def build_request(self, sa: IkeSa, out: list[Payload]) -> None:
        if sa.config.mobike:
            out.append(NotifyPayload(NotifyType.MOBIKE_SUPPORTED))

    def process_response(self, sa: IkeSa, msg: Message, raw: bytes) -> Outcome | Refusal | None:
        sa.mobike = sa.config.mobike and msg.notify(NotifyType.MOBIKE_SUPPORTED) is not None
        self._addresses(sa, msg)
        return None

    def process_request(self, sa: IkeSa, msg: Message) -> Refusal | None:
        sa.mobike = sa.config.mobike and msg.notify(NotifyType.MOBIKE_SUPPORTED) is not None
        self._addresses(sa, msg)
        return None

    def build_response(self, sa: IkeSa, out: list[Payload]) -> None:
        if sa.mobike:  # only in answer to the initiator's announcement (RFC 4555 3.2)
            out.append(NotifyPayload(NotifyType.MOBIKE_SUPPORTED))

    @staticmethod
    def _addresses(sa: IkeSa, msg: Message) -> None:
        listed = peer_address_list(msg)
        if sa.mobike and listed is not None:
            sa.peer_additional = listed
