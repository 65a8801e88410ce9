"""Which function answers the peer's request of each exchange type. A new exchange (e.g.
IKE_INTERMEDIATE) adds its responder here and its rules to states.EXCHANGE_RULES."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from meshsec.agent.ike.constants import ExchangeType
from meshsec.agent.ike.exchanges.create_child_sa import respond_create_child_sa
from meshsec.agent.ike.exchanges.ike_auth import respond_ike_auth
from meshsec.agent.ike.exchanges.ike_followup import respond_ike_followup_ke
from meshsec.agent.ike.exchanges.ike_init import respond_ike_init
from meshsec.agent.ike.exchanges.ike_intermediate import respond_ike_intermediate
from meshsec.agent.ike.exchanges.informational import respond_informational
from meshsec.agent.ike.payloads import Message, Payload

if TYPE_CHECKING:
    from meshsec.agent.ike.sa import IkeSa

# None: no answer yet (a Deferred feature); the task manager keeps the request for resume_request.
ResponderFn = Callable[["IkeSa", Message, float], list[Payload] | None]

RESPONDERS: dict[ExchangeType, ResponderFn] = {
    ExchangeType.IKE_SA_INIT: respond_ike_init,
    ExchangeType.IKE_INTERMEDIATE: respond_ike_intermediate,
    ExchangeType.IKE_AUTH: respond_ike_auth,
    ExchangeType.CREATE_CHILD_SA: respond_create_child_sa,
    ExchangeType.INFORMATIONAL: respond_informational,
    ExchangeType.IKE_FOLLOWUP_KE: respond_ike_followup_ke,
}
