"""The unit of protocol work, after strongSwan's tasks (src/libcharon/sa/ikev2/tasks/).

A Task is one exchange we initiate: it builds one request and processes its response. The
TaskManager (task_manager.py) owns message IDs, the window of one, retransmission, the response
cache and the queue of pending tasks. What the peer's requests get is answered by the
responder registered for the exchange type (exchanges/dispatch.py).

Within IKE_SA_INIT and IKE_AUTH the work is split further into Features (feature.py): NAT
detection, COOKIE, fragmentation, signature hashes, certificates, key exchange each build and
read their own payloads, so a new protocol feature is a new class, not a new branch.

Tasks are told apart by class (isinstance) and by the class attributes below, never by name."""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, ClassVar

from meshsec.agent.ike.constants import ExchangeType
from meshsec.agent.ike.payloads import Message, Payload

if TYPE_CHECKING:
    from meshsec.agent.ike.sa import IkeSa


class Outcome(Enum):
    DONE = "done"  # exchange finished; the next queued task may start
    RETRY = "retry"  # send this task's request again with the same message ID (COOKIE, INVALID_KE)
    REQUEUE = "requeue"  # exchange finished, but run this task again next (CREATE_CHILD_SA INVALID_KE)


class Task:
    exchange: ClassVar[ExchangeType]
    # An IKE rekey moves queued tasks to the successor IKE SA (RFC 7296 2.8) unless this is False.
    survives_ike_rekey: ClassVar[bool] = True
    # A retransmission timeout of this task means the peer is dead (emits PeerDead).
    timeout_means_dead: ClassVar[bool] = True

    def build(self, sa: IkeSa, now: float) -> list[Payload] | None:
        """Request payloads (inner ones for encrypted exchanges); None skips the task."""
        raise NotImplementedError

    def process(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> Outcome:
        """Handles the response; may fail or close the SA."""
        raise NotImplementedError

    def on_timeout(self, sa: IkeSa) -> None:
        """The peer never answered after all retransmissions."""
        raise NotImplementedError
