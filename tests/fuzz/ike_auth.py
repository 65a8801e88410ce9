"""Target: IKE_AUTH at the responder, PSK and certificate. A real pair goes through IKE_SA_INIT;
the fuzzed input is the plaintext inner chain of the initiator's IKE_AUTH request, sealed with
the SA's real SK_ei/SK_ai, so the AUTH, identity, certificate and CHILD_SA logic is reached and
not only the integrity check. The responder's answer goes back to the real initiator.
Input: mode byte (bit 0: certificates), first inner payload type, inner chain."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from meshsec.agent.ike.constants import ExchangeType
from tests.fuzz import ike_support
from tests.ike.peers import I_ADDR, R_ADDR


def make() -> Callable[[bytes], None]:
    ike_support.new_pair(True)  # builds the PKI once, outside the timed inputs

    def one_input(data: bytes) -> None:
        if len(data) < 2:
            return
        p = ike_support.new_pair(bool(data[0] & 1))
        ike_support.through_init(p)
        request = ike_support.seal(p.initiator, ExchangeType.IKE_AUTH, 1, False, data[1:])
        p.table.receive(request, R_ADDR, I_ADDR, p.now)
        for d in p.table.datagrams_to_send():
            p.initiator.receive(d.data, I_ADDR, R_ADDR, p.now)
        p.pump()
        ike_support.check(p, "IKE_AUTH")

    return one_input


def seeds() -> Iterator[tuple[str, bytes]]:
    for cert in (False, True):
        p = ike_support.new_pair(cert)
        request = ike_support.through_init(p)
        seed = bytes((int(cert),)) + ike_support.inner(p.responder, request[0].data)
        yield f"{'cert' if cert else 'psk'}-auth", seed
