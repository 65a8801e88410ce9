"""INITIAL_CONTACT (RFC 7296 2.4) in IKE_AUTH: the sender has no other SA with us, so stale
ones for its identity can go (the agent acts on InitialContactReceived). Not sent when
reauthenticating: the peer must keep the old SAs until we delete them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshsec.agent.ike.constants import NotifyType
from meshsec.agent.ike.events import InitialContactReceived
from meshsec.agent.ike.feature import Feature, Refusal
from meshsec.agent.ike.payloads import Message, NotifyPayload, Payload

if TYPE_CHECKING:
    from meshsec.agent.ike.sa import IkeSa


class InitialContact(Feature):
    def build_request(self, sa: IkeSa, out: list[Payload]) -> None:
        if sa.config.send_initial_contact and sa.reauth_of is None:
            out.append(NotifyPayload(NotifyType.INITIAL_CONTACT))

    def process_request(self, sa: IkeSa, msg: Message) -> Refusal | None:
        # IKE_AUTH features run once the peer is authenticated (ike_auth.py).
        if msg.notify(NotifyType.INITIAL_CONTACT) is not None:
            sa.emit(InitialContactReceived(str(sa.remote_identity)))
        return None
