"""INFORMATIONAL exchanges (RFC 7296 1.4, 1.5): deleting CHILD_SAs and the IKE SA, and the
empty liveness check (2.4). MOBIKE's flavours (RFC 4555) live in mobike.py; the peer's reach
them through `respond_informational`."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from meshsec.agent.ike.constants import ExchangeType, NotifyType, ProtocolId
from meshsec.agent.ike.events import IkeSaDeleted, IkeSaFailed, LivenessChecked
from meshsec.agent.ike.exchanges.mobike import answer_informational_extras, respond_update
from meshsec.agent.ike.failures import FailureReason
from meshsec.agent.ike.payloads import DeletePayload, Message, Payload
from meshsec.agent.ike.states import ChildState, State
from meshsec.agent.ike.task import Outcome, Task

if TYPE_CHECKING:
    from meshsec.agent.ike.sa import IkeSa


class IkeDelete(Task):
    exchange = ExchangeType.INFORMATIONAL
    survives_ike_rekey = False  # the successor is not being deleted
    timeout_means_dead = False  # the SA goes either way

    def build(self, sa: IkeSa, now: float) -> list[Payload]:
        return [DeletePayload(ProtocolId.IKE, ())]

    def process(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> Outcome:
        sa.close_deleted(by_peer=False)
        return Outcome.DONE

    def on_timeout(self, sa: IkeSa) -> None:
        # The peer is gone or ignores us; the SA is deleted either way (RFC 7296 1.4.1).
        sa.close_deleted(by_peer=False)


class ChildDelete(Task):
    exchange = ExchangeType.INFORMATIONAL

    def __init__(self, spi_in: int, protocol: int | None = None) -> None:
        self.spi_in = spi_in
        self.protocol = protocol

    def build(self, sa: IkeSa, now: float) -> list[Payload] | None:
        child = sa.children.get(self.spi_in)
        protocol = child.protocol if child is not None else self.protocol
        if protocol is None:
            sa.stats["delete_unknown_child"] += 1
            return None
        if child is not None and child.state is not ChildState.DELETING:
            child.move_to(ChildState.DELETING)  # a rekey request for it now gets TEMPORARY_FAILURE
        # A Delete names the SPI we expect on inbound packets (RFC 7296 3.11).
        return [DeletePayload(protocol, (struct.pack("!I", self.spi_in),))]

    def process(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> Outcome:
        found = sa.find_child(self.spi_in)  # may have moved to a successor IKE SA meanwhile
        if found is not None:
            owner, child = found
            owner.remove_child(child, by_peer=False)
        return Outcome.DONE

    def on_timeout(self, sa: IkeSa) -> None:
        sa.fail("CHILD_SA delete: peer not responding (retransmit limit)", FailureReason.TIMEOUT)


class Liveness(Task):
    """An empty INFORMATIONAL request: on demand (check_liveness, answered by LivenessChecked)
    or as dead peer detection (`dpd`, silent unless the peer stays away)."""

    exchange = ExchangeType.INFORMATIONAL

    def __init__(self, dpd: bool = False) -> None:
        self.dpd = dpd

    def build(self, sa: IkeSa, now: float) -> list[Payload] | None:
        if self.dpd and now - sa.last_inbound < sa.config.dpd_delay:
            return None  # the peer spoke while the probe waited in the queue
        return []

    def process(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> Outcome:
        if not self.dpd:
            sa.emit(LivenessChecked(True))
        return Outcome.DONE

    def on_timeout(self, sa: IkeSa) -> None:
        if not self.dpd:
            sa.emit(LivenessChecked(False))
        what = "dead peer detection" if self.dpd else "liveness check"
        sa.fail(
            f"{what}: peer not responding (retransmit limit)",
            FailureReason.DPD_TIMEOUT if self.dpd else FailureReason.TIMEOUT,
        )


def respond_informational(sa: IkeSa, msg: Message, now: float) -> list[Payload]:
    if sa.state is State.AUTHENTICATING and sa.eap is not None:
        # An EAP peer told its password is wrong (EAP-MSCHAPv2 Failure, E=691) gives up with
        # this instead of acknowledging (strongSwan does): the gateway's SA ends now, not at
        # the half-open timeout.
        if msg.notify(NotifyType.AUTHENTICATION_FAILED) is not None:
            why = sa.eap.server.reason or "peer gave up"
            sa.close_after_response(
                IkeSaFailed(
                    f"{sa.eap.describe()}: {why} (peer reported AUTHENTICATION_FAILED)",
                    FailureReason.AUTHENTICATION_FAILED,
                )
            )
        return []
    if sa.state not in (State.ESTABLISHED, State.DELETING):
        return []
    if msg.notify(NotifyType.AUTHENTICATION_FAILED) is not None:
        # The initiator rejected our AUTH after we had answered (RFC 7296 2.21.2).
        sa.close_after_response(
            IkeSaFailed(
                "peer reported AUTHENTICATION_FAILED (it rejected our AUTH)",
                FailureReason.AUTHENTICATION_FAILED,
            )
        )
        return []
    if msg.notify(NotifyType.UPDATE_SA_ADDRESSES) is not None and sa.state is State.ESTABLISHED:
        local, remote = sa.tasks.request_path
        return respond_update(sa, msg, local, remote)
    extras = answer_informational_extras(sa, msg)
    answer: dict[int, list[bytes]] = {}
    for p in msg.payloads:
        if not isinstance(p, DeletePayload):
            continue
        if p.protocol == ProtocolId.IKE:
            sa.close_after_response(IkeSaDeleted(by_peer=True))
            return extras
        if p.protocol not in (ProtocolId.ESP, ProtocolId.AH):
            continue
        for spi in p.spis:
            if len(spi) != 4:
                continue
            owner = sa
            child = sa.find_child_by_out(p.protocol, struct.unpack("!I", spi)[0])
            if child is None and sa.successor is not None:
                # Sent before the peer learnt of the IKE rekey: the CHILD_SA lives on in the
                # successor (RFC 7296 1.4: "or its successor").
                owner = sa.successor
                child = owner.find_child_by_out(p.protocol, struct.unpack("!I", spi)[0])
            if child is None:
                continue  # already gone, e.g. both ends deleted it at once (RFC 7296 1.4.1)
            if child.state is not ChildState.DELETING:
                # Otherwise this request crosses our own DELETE of the pair, and the response
                # "MUST NOT include Delete payloads for the deleted SAs" (RFC 7296 1.4.1). (If
                # ours is only queued, it is dropped; the peer closes the pair with our answer.)
                answer.setdefault(p.protocol, []).append(struct.pack("!I", child.spi_in))
            owner.remove_child(child, by_peer=True)
    return [DeletePayload(proto, tuple(spis)) for proto, spis in answer.items()] + extras
