"""COOKIE (RFC 7296 2.6), initiator side: a responder under load answers IKE_SA_INIT with a
COOKIE notify, and we repeat the request with it as the first payload. (The responder side is
stateless and lives in responder.py, before any IkeSa exists.)"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshsec.agent.ike.constants import NotifyType, PayloadType
from meshsec.agent.ike.failures import FailureReason
from meshsec.agent.ike.feature import Feature, Refusal
from meshsec.agent.ike.payloads import Message, NotifyPayload, Payload
from meshsec.agent.ike.task import Outcome

if TYPE_CHECKING:
    from meshsec.agent.ike.sa import IkeSa

MAX_COOKIE_RETRIES = 5
MAX_COOKIE_SIZE = 64


class Cookie(Feature):
    def __init__(self) -> None:
        self._cookie: bytes | None = None
        self._retries = 0

    def build_request(self, sa: IkeSa, out: list[Payload]) -> None:
        if self._cookie is not None:
            out.append(NotifyPayload(NotifyType.COOKIE, self._cookie))

    def process_response(self, sa: IkeSa, msg: Message, raw: bytes) -> Outcome | Refusal | None:
        cookie = msg.notify(NotifyType.COOKIE)
        if cookie is None or msg.find(PayloadType.SA) is not None:
            return None
        if self._retries >= MAX_COOKIE_RETRIES or not 1 <= len(cookie.data) <= MAX_COOKIE_SIZE:
            return Refusal("responder keeps demanding a COOKIE", FailureReason.INVALID_RESPONSE)
        self._retries += 1
        self._cookie = cookie.data
        return Outcome.RETRY
