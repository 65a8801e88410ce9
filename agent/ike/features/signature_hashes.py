"""SIGNATURE_HASH_ALGORITHMS (RFC 7427 4) in IKE_SA_INIT: which hashes each end accepts in
digital-signature AUTH payloads; sent when certificates may be used on this SA."""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshsec.agent.ike.constants import NotifyType
from meshsec.agent.ike.feature import Announcement
from meshsec.agent.ike.payloads import Message, NotifyPayload, Payload
from meshsec.agent.ike.sigauth import hash_notify_data, parse_hash_notify

if TYPE_CHECKING:
    from meshsec.agent.ike.sa import IkeSa


def signature_notifies(sa: IkeSa) -> list[Payload]:
    if all(cfg.credentials is None for cfg in sa.candidates):
        return []
    return [NotifyPayload(NotifyType.SIGNATURE_HASH_ALGORITHMS, hash_notify_data())]


class SignatureHashes(Announcement):
    def build_request(self, sa: IkeSa, out: list[Payload]) -> None:
        out += signature_notifies(sa)

    def learn(self, sa: IkeSa, msg: Message) -> None:
        n = msg.notify(NotifyType.SIGNATURE_HASH_ALGORITHMS)
        if n is not None:
            sa.peer_hashes = parse_hash_notify(n.data)

    def build_response(self, sa: IkeSa, out: list[Payload]) -> None:
        out += signature_notifies(sa)
