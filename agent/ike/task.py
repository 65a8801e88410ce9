"""The unit of protocol work, after strongSwan's tasks: one class per exchange (or feature).

An initiator-side task builds one request and processes its response; the IkeSa's task
manager owns message IDs, the window of one, and retransmission. Responder-side handling
of each exchange lives next to its task (see exchanges/), dispatched by exchange type.
New features (rekeying, DPD, certificates) arrive as new task classes."""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Protocol

from meshsec.agent.ike.constants import ExchangeType
from meshsec.agent.ike.payloads import Message, Payload

if TYPE_CHECKING:
    from meshsec.agent.ike.sa import IkeSa


class Outcome(Enum):
    DONE = "done"  # exchange finished; the next queued task may start
    RETRY = "retry"  # send this task's request again with the same message ID (COOKIE, INVALID_KE)
    REQUEUE = "requeue"  # exchange finished, but run this task again next (CREATE_CHILD_SA INVALID_KE)


class Task(Protocol):
    exchange: ExchangeType
    name: str

    def build(self, sa: IkeSa, now: float) -> list[Payload] | None:
        """Request payloads (inner ones for encrypted exchanges); None skips the task."""

    def process(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> Outcome:
        """Handles the response; may fail or close the SA."""

    def on_timeout(self, sa: IkeSa) -> None:
        """The peer never answered after all retransmissions."""
