"""MOBIKE (RFC 4555): moving an established IKE SA and its CHILD_SAs to other addresses.

Ours: `UpdateSaAddresses` is the INFORMATIONAL request the original initiator sends from its
new address (3.5): N(UPDATE_SA_ADDRESSES), NAT detection for the new path (3.5, RFC 7296 2.23),
optionally N(NO_NATS_ALLOWED) (3.9) and N(COOKIE2) for return routability (3.6). The SA moves
to the new path when the request is built (retransmissions go along it too); the answer's NAT
detection decides UDP encapsulation, and `AddressesUpdated` tells the data plane to move every
CHILD_SA. A refusal (UNACCEPTABLE_ADDRESSES, UNEXPECTED_NAT_DETECTED) or a wrong COOKIE2
puts the SA back on its old path with `AddressUpdateFailed`. The original responder, which may
not send UPDATE_SA_ADDRESSES (3.4: the initiator decides), announces a new address with
`AddressListUpdate` instead: an INFORMATIONAL from the new address whose address list says it
has no other (the initiator follows it like any authenticated message, or updates itself).

The peer's: `respond_update` (called by informational.respond_informational) checks
NO_NATS_ALLOWED, runs NAT detection on the path the request came by, moves the SA there and
answers with NAT detection and the COOKIE2 echoed."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from meshsec.agent.ike.address import Address
from meshsec.agent.ike.constants import ExchangeType, NotifyType
from meshsec.agent.ike.events import AddressesUpdated, AddressUpdateFailed
from meshsec.agent.ike.failures import FailureReason
from meshsec.agent.ike.features.mobike import peer_address_list
from meshsec.agent.ike.features.nat_detection import detect_nat, nat_notifies
from meshsec.agent.ike.payloads import Message, NotifyPayload, Payload
from meshsec.agent.ike.task import Outcome, Task

if TYPE_CHECKING:
    from meshsec.agent.ike.sa import IkeSa

COOKIE2_SIZE = 16  # RFC 4555 3.6: 8 to 64 octets


def path_octets(src: Address, dst: Address) -> bytes:
    """NO_NATS_ALLOWED's data (RFC 4555 4.2.8): source and destination IP, then their ports."""
    return src.packed_host + dst.packed_host + struct.pack("!HH", src.port, dst.port)


class UpdateSaAddresses(Task):
    exchange = ExchangeType.INFORMATIONAL

    def __init__(self, local: Address, remote: Address | None = None) -> None:
        self.local = local
        self.remote = remote  # None: the peer's current address
        self.cookie2 = b""
        self._old: tuple[Address, Address] | None = None

    def retarget(self, local: Address, remote: Address | None) -> None:
        """A newer move before this one was sent: it goes there instead."""
        self.local, self.remote = local, remote

    def build(self, sa: IkeSa, now: float) -> list[Payload] | None:
        if not sa.mobike:  # an IKE rekey's successor inherits the flag; a restart may not have it
            sa.stats["address_update_without_mobike"] += 1
            sa.emit(AddressUpdateFailed("the peer did not announce MOBIKE_SUPPORTED",
                                        FailureReason.MOBIKE_NOT_NEGOTIATED))  # fmt: skip
            return None
        remote = self.remote or sa.remote
        self._old = (sa.local, sa.remote)
        sa.local, sa.remote = self.local, remote
        out: list[Payload] = [NotifyPayload(NotifyType.UPDATE_SA_ADDRESSES)]
        out += nat_notifies(sa, sa.local, sa.remote)
        if sa.config.mobike_no_nats:
            out.append(NotifyPayload(NotifyType.NO_NATS_ALLOWED, path_octets(sa.local, sa.remote)))
        if sa.config.mobike_cookie2:
            self.cookie2 = sa.rnd.bytes(COOKIE2_SIZE)
            out.append(NotifyPayload(NotifyType.COOKIE2, self.cookie2))
        sa.stats["address_updates_sent"] += 1
        return out

    def process(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> Outcome:
        for refusal in (NotifyType.UNACCEPTABLE_ADDRESSES, NotifyType.UNEXPECTED_NAT_DETECTED):
            if msg.notify(refusal) is not None:
                self._back(sa, f"peer refused the new addresses: {refusal.name}",
                           FailureReason.from_notify(refusal))  # fmt: skip
                return Outcome.DONE
        if self.cookie2:
            echo = msg.notify(NotifyType.COOKIE2)
            if echo is None or bytes(echo.data) != self.cookie2:
                sa.stats["cookie2_mismatch"] += 1
                self._back(sa, "the answer to UPDATE_SA_ADDRESSES did not echo our COOKIE2",
                           FailureReason.COOKIE2_MISMATCH)  # fmt: skip
                return Outcome.DONE
        if detect_nat(sa, msg, sa.spi_r, sa.local, sa.remote) and sa.udp_encap:
            sa.float_ports()  # a NAT on the new path: IKE and ESP move to UDP 4500 (RFC 4555 3.5)
        sa.stats["address_updates_done"] += 1
        record_address_list(sa, msg)
        sa.emit(AddressesUpdated(sa.local, sa.remote, sa.udp_encap))
        return Outcome.DONE

    def on_timeout(self, sa: IkeSa) -> None:
        # Neither the new path nor (since we switched) the old one answered: the peer is gone
        # from here. (A later roam starts a fresh update; this SA is dead either way.)
        sa.emit(AddressUpdateFailed("UPDATE_SA_ADDRESSES: peer not responding (retransmit limit)",
                                    FailureReason.TIMEOUT))  # fmt: skip
        sa.fail("UPDATE_SA_ADDRESSES: peer not responding (retransmit limit)", FailureReason.TIMEOUT)

    def _back(self, sa: IkeSa, reason: str, code: FailureReason) -> None:
        if self._old is not None:
            sa.local, sa.remote = self._old
        sa.emit(AddressUpdateFailed(reason, code))


class AddressListUpdate(Task):
    """The original responder's new address (RFC 4555 3.6): an INFORMATIONAL sent from it with
    N(NO_ADDITIONAL_ADDRESSES); the initiator moves the SA (and answers along the new path)."""

    exchange = ExchangeType.INFORMATIONAL

    def __init__(self, local: Address) -> None:
        self.local = local

    def retarget(self, local: Address, remote: Address | None) -> None:
        self.local = local  # (the peer's address is the initiator's to change)

    def build(self, sa: IkeSa, now: float) -> list[Payload] | None:
        if not sa.mobike:
            sa.stats["address_update_without_mobike"] += 1
            sa.emit(AddressUpdateFailed("the peer did not announce MOBIKE_SUPPORTED",
                                        FailureReason.MOBIKE_NOT_NEGOTIATED))  # fmt: skip
            return None
        sa.local = self.local
        return [NotifyPayload(NotifyType.NO_ADDITIONAL_ADDRESSES)]

    def process(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> Outcome:
        sa.emit(AddressesUpdated(sa.local, sa.remote, sa.udp_encap))
        return Outcome.DONE

    def on_timeout(self, sa: IkeSa) -> None:
        sa.emit(AddressUpdateFailed("address list update: peer not responding (retransmit limit)",
                                    FailureReason.TIMEOUT))  # fmt: skip
        sa.fail("address list update: peer not responding (retransmit limit)", FailureReason.TIMEOUT)


def record_address_list(sa: IkeSa, msg: Message) -> None:
    listed = peer_address_list(msg)
    if listed is not None:
        sa.peer_additional = listed


def respond_update(sa: IkeSa, msg: Message, local: Address, remote: Address) -> list[Payload]:
    """The peer's UPDATE_SA_ADDRESSES, received on `local` from `remote` (RFC 4555 3.5)."""
    if not sa.mobike:
        # Without MOBIKE negotiated the notify means nothing (RFC 4555 3.2); no move.
        sa.stats["address_update_without_mobike"] += 1
        return _cookie2_echo(msg)
    no_nats = msg.notify(NotifyType.NO_NATS_ALLOWED)
    if no_nats is not None and bytes(no_nats.data) != path_octets(remote, local):
        # The peer's view of the path differs from ours: a NAT it does not allow (3.9).
        sa.stats["address_update_nat_refused"] += 1
        return [NotifyPayload(NotifyType.UNEXPECTED_NAT_DETECTED)]
    answer: list[Payload] = []
    if detect_nat(sa, msg, sa.spi_r, local, remote):
        answer += nat_notifies(sa, local, remote)
    moved = (local, remote) != (sa.local, sa.remote)
    sa.local, sa.remote = local, remote
    if moved:
        sa.stats["address_updates"] += 1
    sa.stats["address_updates_received"] += 1
    record_address_list(sa, msg)
    sa.emit(AddressesUpdated(local, remote, sa.udp_encap))
    return answer + _cookie2_echo(msg)


def _cookie2_echo(msg: Message) -> list[Payload]:
    """RFC 4555 3.6: a COOKIE2 in a request is copied into the response unchanged."""
    cookie2 = msg.notify(NotifyType.COOKIE2)
    return [NotifyPayload(NotifyType.COOKIE2, bytes(cookie2.data))] if cookie2 is not None else []


def answer_informational_extras(sa: IkeSa, msg: Message) -> list[Payload]:
    """An INFORMATIONAL without UPDATE_SA_ADDRESSES may still carry an address list (3.6) or a
    return routability check (COOKIE2 alone, 3.6)."""
    if sa.mobike:
        record_address_list(sa, msg)
    return _cookie2_echo(msg)
