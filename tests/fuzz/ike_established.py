"""Target: exchanges on an established IKE SA (INFORMATIONAL: DELETE, liveness, notifies;
CREATE_CHILD_SA: new CHILD_SAs, CHILD_SA and IKE SA rekeys), with real keys: a real pair is
connected, then the fuzzed inner chain is sealed by one peer as its next request and the other
answers; the answer goes back to the requester. Input: selector byte (bit 0: INFORMATIONAL or
CREATE_CHILD_SA; bit 1: the responder sends it; bit 2: certificates), first inner payload type,
inner chain."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from meshsec.agent.ike.constants import ExchangeType
from tests.fuzz import ike_support
from tests.ike.peers import I_ADDR, R_ADDR, Pair

EXCHANGES = (ExchangeType.INFORMATIONAL, ExchangeType.CREATE_CHILD_SA)


def _connected(cert: bool) -> Pair:
    p = ike_support.new_pair(cert)
    p.connect()
    return p


def make() -> Callable[[bytes], None]:
    ike_support.new_pair(True)

    def one_input(data: bytes) -> None:
        if len(data) < 2:
            return
        p = _connected(bool(data[0] & 4))
        exchange = EXCHANGES[data[0] & 1]
        sender = p.responder if data[0] & 2 else p.initiator
        request = ike_support.seal(sender, exchange, sender.next_request_id, False, data[1:])
        if sender is p.initiator:
            p.table.receive(request, R_ADDR, I_ADDR, p.now)
        else:
            p.initiator.receive(request, I_ADDR, R_ADDR, p.now)
        p.pump()
        p.advance(120)  # timers the exchange armed (half-made rekeys, deletes)
        ike_support.check(p, "established")

    return one_input


def seeds() -> Iterator[tuple[str, bytes]]:
    for cert in (False, True):
        name = "cert" if cert else "psk"
        p = _connected(cert)
        ops = [
            ("liveness", lambda q: q.initiator.check_liveness(q.now)),
            ("child-delete", lambda q: q.initiator.delete_child(next(iter(q.initiator.children)), q.now)),
            ("child-rekey", lambda q: q.initiator.rekey_child(next(iter(q.initiator.children)), q.now)),
            ("ike-rekey", lambda q: q.initiator.rekey(q.now)),
            ("ike-delete", lambda q: q.initiator.delete(q.now)),
        ]
        for label, op in ops:
            p = _connected(cert)
            op(p)
            for d in p.initiator.datagrams_to_send():
                exchange = d.data[18]
                selector = (4 if cert else 0) | (1 if exchange == ExchangeType.CREATE_CHILD_SA else 0)
                yield f"{name}-{label}", bytes((selector,)) + ike_support.inner(p.responder, d.data)
