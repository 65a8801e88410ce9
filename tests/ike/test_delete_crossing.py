"""Both ends delete the same CHILD_SA at once (RFC 7296 1.4.1): "If a node receives a delete
request for SAs for which it has already issued a delete request, it MUST delete the outgoing
SAs while processing the request and the incoming SAs while processing the response. In that
case, the responses MUST NOT include Delete payloads for the deleted SAs"."""

from __future__ import annotations

from meshsec.agent.ike.events import ChildSaDeleted, ChildSaEstablished
from meshsec.agent.ike.parse import parse_message
from meshsec.agent.ike.payloads import DeletePayload, EncryptedPayload, Payload
from meshsec.agent.ike.sa import IkeSa, OutgoingDatagram

from .peers import Pair, ike_config, of_type, responder_config


def _inner(receiver: IkeSa, d: OutgoingDatagram) -> list[Payload]:
    assert receiver.protection is not None
    msg = parse_message(d.data)
    sk = msg.payloads[-1]
    assert isinstance(sk, EncryptedPayload)
    return receiver.protection.open(d.data, sk)


def test_crossing_child_deletes_are_answered_without_delete_payloads() -> None:
    p = Pair(ike_config(), [responder_config()])
    p.connect()
    i, r = p.initiator, p.responder
    (ci,) = of_type(p.events_i, ChildSaEstablished)
    (cr,) = of_type(p.events_r, ChildSaEstablished)
    i.delete_child(ci.spi_in, p.now)
    r.delete_child(cr.spi_in, p.now)
    (req_i,) = i.datagrams_to_send()
    (req_r,) = p.table.datagrams_to_send()
    assert any(isinstance(x, DeletePayload) for x in _inner(r, req_i))  # both requests are out

    i.receive(req_r.data, req_i.local, req_i.remote, p.now)
    p.table.receive(req_i.data, req_r.local, req_r.remote, p.now)
    (resp_i,) = i.datagrams_to_send()
    (resp_r,) = p.table.datagrams_to_send()
    assert _inner(r, resp_i) == [] and _inner(i, resp_r) == []

    i.receive(resp_r.data, req_i.local, req_i.remote, p.now)
    p.table.receive(resp_i.data, req_r.local, req_r.remote, p.now)
    p.pump()
    assert not i.children and not r.children
    assert [e.spi_in for e in of_type(p.events_i, ChildSaDeleted)] == [ci.spi_in]
    assert [e.spi_in for e in of_type(p.events_r, ChildSaDeleted)] == [cr.spi_in]
    assert i.established and r.established
    assert i.stats["internal_error"] == 0 and r.stats["internal_error"] == 0


def test_a_single_delete_is_still_answered_with_the_paired_delete() -> None:
    p = Pair(ike_config(), [responder_config()])
    p.connect()
    i = p.initiator
    (ci,) = of_type(p.events_i, ChildSaEstablished)
    (cr,) = of_type(p.events_r, ChildSaEstablished)
    i.delete_child(ci.spi_in, p.now)
    (req_i,) = i.datagrams_to_send()
    p.table.receive(req_i.data, req_i.remote, req_i.local, p.now)
    (resp_r,) = p.table.datagrams_to_send()
    (answer,) = _inner(i, resp_r)
    assert isinstance(answer, DeletePayload) and answer.spis == (cr.spi_in.to_bytes(4, "big"),)
