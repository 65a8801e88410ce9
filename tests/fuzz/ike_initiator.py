"""Target: the initiator side, fuzzed responses to our IKE_SA_INIT (plain) and to our IKE_AUTH
(sealed with the responder's real SK_er/SK_ar after a real IKE_SA_INIT).
Input: stage byte (bit 0: IKE_AUTH; bit 1: certificates), first payload type, payload chain."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from meshsec.agent.ike.build import build_header
from meshsec.agent.ike.constants import IKE_HEADER_LEN, ExchangeType, HeaderFlag
from meshsec.agent.ike.payloads import Header
from tests.fuzz import ike_support
from tests.ike.peers import I_ADDR, R_ADDR

SPI_R = bytes.fromhex("5eed5eed5eed5eed")


def make() -> Callable[[bytes], None]:
    ike_support.new_pair(True)

    def one_input(data: bytes) -> None:
        if len(data) < 2:
            return
        p = ike_support.new_pair(bool(data[0] & 2))
        if data[0] & 1:
            ike_support.through_init(p)
            response = ike_support.seal(p.responder, ExchangeType.IKE_AUTH, 1, True, data[1:])
        else:
            p.initiator.initiate(p.now)
            p.initiator.datagrams_to_send()
            first, chain = ike_support.split(data[1:])
            header = Header(p.initiator.spi_i, SPI_R, first, ExchangeType.IKE_SA_INIT, HeaderFlag.RESPONSE, 0,
                            IKE_HEADER_LEN + len(chain))  # fmt: skip
            response = build_header(header) + chain
        p.initiator.receive(response, I_ADDR, R_ADDR, p.now)
        p.initiator.datagrams_to_send()
        p.advance(120)  # retransmissions and give-up of what the response left in flight
        ike_support.check(p, "initiator")

    return one_input


def seeds() -> Iterator[tuple[str, bytes]]:
    for cert in (False, True):
        name = "cert" if cert else "psk"
        p = ike_support.new_pair(cert)
        p.initiator.initiate(p.now)
        for d in p.initiator.datagrams_to_send():
            p.table.receive(d.data, R_ADDR, I_ADDR, p.now)
        init_response = p.table.datagrams_to_send()[0].data
        yield f"{name}-init-response", bytes((2 * cert, init_response[16])) + init_response[IKE_HEADER_LEN:]
        p.initiator.receive(init_response, I_ADDR, R_ADDR, p.now)
        for d in p.initiator.datagrams_to_send():
            p.table.receive(d.data, R_ADDR, I_ADDR, p.now)
        auth_response = p.table.datagrams_to_send()[0].data
        yield f"{name}-auth-response", bytes((2 * cert + 1,)) + ike_support.inner(p.initiator, auth_response)
