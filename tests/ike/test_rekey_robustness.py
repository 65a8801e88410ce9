"""Malformed and out-of-place rekey requests, authenticated by a real peer: each gets the
notify RFC 7296 prescribes, nothing raises, and the SA keeps working afterwards."""

from __future__ import annotations

import struct

import pytest

from meshsec.agent.ike.constants import ExchangeType, NotifyType, ProtocolId
from meshsec.agent.ike.payloads import KePayload, NoncePayload, NotifyPayload, Payload, Proposal, SaPayload
from meshsec.agent.ike.proposals import parse_proposals

from .peers import Pair, ike_config, responder_config
from .test_robustness import assert_still_alive, responder_answer, seal_request


def _established() -> Pair:
    p = Pair(ike_config(), [responder_config()])
    p.connect()
    return p


def _ike_sa_proposal(spi: bytes) -> Proposal:
    return parse_proposals("aes256gcm16-prfsha256-x25519", ProtocolId.IKE)[0].to_proposal(1, spi)


def _child_spi(p: Pair) -> bytes:
    (c,) = p.initiator.children.values()
    return struct.pack("!I", c.spi_in)


CASES: dict[str, tuple[list[Payload], int]] = {
    # REKEY_SA with a 2-byte SPI
    "rekey-short-spi": (
        [NotifyPayload(NotifyType.REKEY_SA, b"", ProtocolId.ESP, b"\x00\x01"), NoncePayload(b"n" * 32)],
        NotifyType.INVALID_SYNTAX,
    ),
    # REKEY_SA for a pair the responder never had
    "rekey-unknown-spi": (
        [
            NotifyPayload(NotifyType.REKEY_SA, b"", ProtocolId.ESP, b"\x12\x34\x56\x78"),
            NoncePayload(b"n" * 32),
        ],
        NotifyType.CHILD_SA_NOT_FOUND,
    ),
    # IKE rekey (no TS) without KE
    "ike-rekey-no-ke": (
        [SaPayload((_ike_sa_proposal(b"s" * 8),)), NoncePayload(b"n" * 32)],
        NotifyType.INVALID_SYNTAX,
    ),
    # IKE rekey with a 4-byte SPI
    "ike-rekey-short-spi": (
        [SaPayload((_ike_sa_proposal(b"s" * 4),)), NoncePayload(b"n" * 32), KePayload(31, b"k" * 32)],
        NotifyType.NO_PROPOSAL_CHOSEN,
    ),
    # IKE rekey with the wrong KE group
    "ike-rekey-wrong-group": (
        [SaPayload((_ike_sa_proposal(b"s" * 8),)), NoncePayload(b"n" * 32), KePayload(19, b"k" * 64)],
        NotifyType.INVALID_KE_PAYLOAD,
    ),
    # IKE rekey with a KE of the right group but garbage (wrong length)
    "ike-rekey-bad-ke": (
        [SaPayload((_ike_sa_proposal(b"s" * 8),)), NoncePayload(b"n" * 32), KePayload(31, b"k" * 7)],
        NotifyType.INVALID_SYNTAX,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_rekey_requests_get_the_right_notify(case: str) -> None:
    p = _established()
    payloads, expect = CASES[case]
    p.table.receive(seal_request(p.initiator, payloads, ExchangeType.CREATE_CHILD_SA),
                    p.responder.local, p.initiator.local, p.now)  # fmt: skip
    answer = responder_answer(p)
    assert [n.notify_type for n in answer if isinstance(n, NotifyPayload)] == [expect]
    # The responder's IKE SA and CHILD_SA are untouched; the initiator's next request (ID
    # moved past the injected one) still works.
    assert len(p.responder.children) == 1 and p.responder.successor is None
    p.initiator.tasks._my_mid += 1  # the injected request used the initiator's next message ID
    assert_still_alive(p)


def test_rekey_request_with_valid_spi_but_no_nonce() -> None:
    p = _established()
    rekey = NotifyPayload(NotifyType.REKEY_SA, b"", ProtocolId.ESP, _child_spi(p))
    p.table.receive(seal_request(p.initiator, [rekey], ExchangeType.CREATE_CHILD_SA),
                    p.responder.local, p.initiator.local, p.now)  # fmt: skip
    answer = responder_answer(p)
    assert [n.notify_type for n in answer if isinstance(n, NotifyPayload)] == [NotifyType.INVALID_SYNTAX]
    p.initiator.tasks._my_mid += 1
    assert_still_alive(p)
