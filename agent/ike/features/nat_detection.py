"""NAT detection (RFC 7296 2.23): NAT_DETECTION_SOURCE_IP / _DESTINATION_IP in IKE_SA_INIT.
A NAT on either side moves IKE (and ESP) to UDP 4500; the initiator floats first."""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshsec.agent.ike.address import Address
from meshsec.agent.ike.constants import NotifyType
from meshsec.agent.ike.feature import Feature, Refusal
from meshsec.agent.ike.natt import nat_detection_hash
from meshsec.agent.ike.payloads import Message, NotifyPayload, Payload
from meshsec.agent.ike.task import Outcome

if TYPE_CHECKING:
    from meshsec.agent.ike.sa import IkeSa


def nat_notifies(sa: IkeSa, local: Address, remote: Address) -> list[Payload]:
    src = nat_detection_hash(sa.spi_i, sa.spi_r, local)
    if sa.config.force_encap:
        # Like strongSwan's encap=yes: a source hash nobody can match forces UDP encapsulation.
        src = sa.rnd.bytes(len(src))
    return [
        NotifyPayload(NotifyType.NAT_DETECTION_SOURCE_IP, src),
        NotifyPayload(
            NotifyType.NAT_DETECTION_DESTINATION_IP, nat_detection_hash(sa.spi_i, sa.spi_r, remote)
        ),
    ]


def detect_nat(sa: IkeSa, msg: Message, spi_r: bytes, local: Address, remote: Address) -> bool:
    """Compares the peer's NAT_DETECTION hashes with what we see; returns whether the peer
    supports NAT-T at all (sent both notifies)."""
    srcs = [n.data for n in msg.notifies() if n.notify_type == NotifyType.NAT_DETECTION_SOURCE_IP]
    dsts = [n.data for n in msg.notifies() if n.notify_type == NotifyType.NAT_DETECTION_DESTINATION_IP]
    if not srcs or not dsts:
        return False
    sa.nat_remote = nat_detection_hash(sa.spi_i, spi_r, remote) not in srcs
    sa.nat_local = nat_detection_hash(sa.spi_i, spi_r, local) not in dsts
    if sa.config.force_encap:
        sa.nat_local = True
    return True


class NatDetection(Feature):
    def __init__(self) -> None:
        self._peer_supports = False

    def build_request(self, sa: IkeSa, out: list[Payload]) -> None:
        out += nat_notifies(sa, sa.local, sa.remote)

    def process_response(self, sa: IkeSa, msg: Message, raw: bytes) -> Outcome | Refusal | None:
        if detect_nat(sa, msg, sa.spi_r, sa.local, sa.remote) and sa.udp_encap:
            sa.float_ports()
        return None

    def process_request(self, sa: IkeSa, msg: Message) -> Refusal | None:
        # The initiator hashed a zero responder SPI: it did not know ours yet.
        self._peer_supports = detect_nat(sa, msg, bytes(8), sa.local, sa.remote)
        return None

    def build_response(self, sa: IkeSa, out: list[Payload]) -> None:
        if self._peer_supports:
            out += nat_notifies(sa, sa.local, sa.remote)
