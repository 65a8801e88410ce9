"""A Feature is one protocol feature's share of an exchange, for both roles (strongSwan's
secondary tasks such as ike_natd, ike_cert_pre). The exchange's task (initiator) and responder
call every feature of the exchange in the order listed in features/compose.py; that order is
also the order of the payloads in the message. Each hook may do nothing.

Initiator:  build_request -> (peer) -> process_response
Responder:  process_request -> build_response

A hook that finds the exchange cannot go on returns a Refusal: the initiator's SA fails with
it; the responder answers with its notify (and for IKE_SA_INIT / IKE_AUTH closes the SA).
Features keep per-exchange state on themselves: a fresh set is made for each exchange."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshsec.agent.ike.constants import NotifyType
from meshsec.agent.ike.failures import FailureReason
from meshsec.agent.ike.payloads import Message, NotifyPayload, Payload
from meshsec.agent.ike.task import Outcome

if TYPE_CHECKING:
    from meshsec.agent.ike.sa import IkeSa


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str  # for the log and the failure event
    code: FailureReason
    notify: NotifyPayload | None = None  # the responder answers with this

    @classmethod
    def answer(cls, ntype: NotifyType, reason: str, data: bytes = b"") -> Refusal:
        """A responder refusal answered with error notify `ntype`."""
        return cls(reason, FailureReason.from_notify(ntype), NotifyPayload(ntype, data))


@dataclass(frozen=True, slots=True)
class Deferred:
    """Responder: the request cannot be answered yet (a feature waits for I/O outside the
    engine). Nothing is sent and the message ID is not used up; the request is processed again
    on `IkeSa.resume_request` or when the peer retransmits it."""

    reason: str


class Feature:
    def build_request(self, sa: IkeSa, out: list[Payload]) -> None:
        """Initiator: append this feature's payloads to our request."""

    def process_response(self, sa: IkeSa, msg: Message, raw: bytes) -> Outcome | Refusal | None:
        """Initiator: read the response. Outcome.RETRY resends the request (same message ID)
        after build_request ran again; None lets the next feature go on."""
        return None

    def process_request(self, sa: IkeSa, msg: Message) -> Refusal | Deferred | None:
        """Responder: read the peer's request."""
        return None

    def build_response(self, sa: IkeSa, out: list[Payload]) -> None:
        """Responder: append this feature's payloads to our answer."""


class Announcement(Feature):
    """A capability both ends announce in the same exchange: what the peer announced is learnt
    the same way from its request (responder) and its response (initiator)."""

    def learn(self, sa: IkeSa, msg: Message) -> None:
        raise NotImplementedError

    def process_response(self, sa: IkeSa, msg: Message, raw: bytes) -> Outcome | Refusal | None:
        self.learn(sa, msg)
        return None

    def process_request(self, sa: IkeSa, msg: Message) -> Refusal | None:
        self.learn(sa, msg)
        return None


def build_request(features: list[Feature], sa: IkeSa) -> list[Payload]:
    out: list[Payload] = []
    for f in features:
        f.build_request(sa, out)
    return out


def process_response(
    features: list[Feature], sa: IkeSa, msg: Message, raw: bytes
) -> Outcome | Refusal | None:
    """The first verdict other than None, else None (every feature accepted the response)."""
    for f in features:
        verdict = f.process_response(sa, msg, raw)
        if verdict is not None:
            return verdict
    return None


def process_request(features: list[Feature], sa: IkeSa, msg: Message) -> Refusal | Deferred | None:
    for f in features:
        refusal = f.process_request(sa, msg)
        if refusal is not None:
            return refusal
    return None


def build_response(features: list[Feature], sa: IkeSa, out: list[Payload]) -> list[Payload]:
    for f in features:
        f.build_response(sa, out)
    return out
