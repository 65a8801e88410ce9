"""RFC 7383 reassembly buffers are kept only for the message each direction expects next: a
peer that sends most fragments of a request and then the request whole (or fragments of a
response to a request of ours that then gave up) must not leave partial messages behind."""

from __future__ import annotations

from meshsec.agent.ike.constants import ExchangeType
from meshsec.agent.ike.payloads import Header, VendorIdPayload
from meshsec.agent.ike.sa import IkeSa

from .peers import Pair, ike_config, responder_config


def _request(sender: IkeSa, receiver: IkeSa, size: int) -> tuple[list[bytes], bytes]:
    """An INFORMATIONAL request from `sender` with the message ID `receiver` expects: as RFC 7383
    fragments and whole."""
    assert sender.protection is not None
    flags = 0x08 if sender.initiator else 0
    header = Header(
        sender.spi_i,
        sender.spi_r,
        0,
        ExchangeType.INFORMATIONAL,
        flags,
        receiver.tasks.expected_request_id,
        0,
    )
    payloads = [VendorIdPayload(bytes(size))]
    fragments = sender.protection.seal_fragments(header, payloads, sender.rnd, 400)
    return fragments, sender.protection.seal(header, payloads, sender.rnd)


def test_partial_fragments_of_a_request_answered_whole_are_not_kept() -> None:
    p = Pair(ike_config(), [responder_config()])
    p.connect()
    initiator, responder = p.initiator, p.responder
    assert initiator.frag_peer and initiator.established
    for _ in range(5):
        fragments, whole = _request(responder, initiator, 3000)
        assert len(fragments) > 5
        for data in fragments[:-1]:
            initiator.receive(data, initiator.local, initiator.remote, p.now)
        initiator.receive(whole, initiator.local, initiator.remote, p.now)
        assert len(initiator.datagrams_to_send()) == 1  # answered
    assert initiator.stats["fragments_received"] > 20
    assert initiator.tasks.fragments_pending == 0
    assert initiator.stats["internal_error"] == 0


def test_fragments_of_the_expected_request_still_reassemble() -> None:
    p = Pair(ike_config(), [responder_config()])
    p.connect()
    initiator, responder = p.initiator, p.responder
    fragments, _ = _request(responder, initiator, 3000)
    for data in fragments:
        initiator.receive(data, initiator.local, initiator.remote, p.now)
    assert len(initiator.datagrams_to_send()) == 1
    assert initiator.tasks.fragments_pending == 0 and initiator.stats["malformed_protected"] == 0
