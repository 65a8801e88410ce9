"""IKE SA rekeying (RFC 7296 1.3.2, 2.8.2): placeholder until the unit lands."""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshsec.agent.ike.constants import NotifyType
from meshsec.agent.ike.payloads import Message, NotifyPayload, Payload

if TYPE_CHECKING:
    from meshsec.agent.ike.sa import IkeSa


def respond_ike_rekey(sa: IkeSa, msg: Message, now: float) -> list[Payload]:
    return [NotifyPayload(NotifyType.NO_ADDITIONAL_SAS)]
