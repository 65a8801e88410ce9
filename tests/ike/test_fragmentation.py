"""IKEv2 message fragmentation (RFC 7383) between two in-process agents: certificate
exchanges split into authenticated fragments no larger than fragment_size, lost fragments
recovered by retransmission, tampered ones dropped, and no fragments towards a peer that did
not announce support."""

from __future__ import annotations

import pytest

from meshsec.agent.ike.constants import EncrId, ExchangeType, IntegId, PayloadType, PrfId
from meshsec.agent.ike.events import IkeSaEstablished, IkeSaFailed
from meshsec.agent.ike.parse import parse_header
from meshsec.agent.ike.payloads import Header
from meshsec.agent.ike.sa import OutgoingDatagram

from .lifecycle import B, Net
from .peers import child, ike_config
from .pki import Authority, credentials

SIZE = 400


def _net(a_frag: bool = True, b_frag: bool = True) -> Net:
    ca = Authority.root(kind="rsa")
    a_cert, a_key = ca.issue("alice.example", "rsa")
    b_cert, b_key = ca.issue("bob.example", "rsa")
    a = ike_config(psk=None, credentials=credentials([a_cert], a_key, [ca.cert]),  # type: ignore[arg-type]
                   fragmentation=a_frag, fragment_size=SIZE)  # fmt: skip
    b_creds = credentials([b_cert], b_key, [ca.cert])
    b = ike_config(local_id="bob.example", remote_id="alice.example", psk=None,  # type: ignore[arg-type]
                   credentials=b_creds, fragmentation=b_frag, fragment_size=SIZE,
                   children=(child(local="198.19.2.0/24", remote="198.19.1.0/24"),))  # fmt: skip
    net = Net([a], [b])
    net.recorded: list[tuple[str, OutgoingDatagram]] = []  # type: ignore[misc]
    return net


def _record(net: Net, drop: set[tuple[str, int]] | None = None) -> None:
    seen: set[tuple[str, int, int]] = set()

    def keep(direction: str, d: OutgoingDatagram) -> bool:
        net.recorded.append((direction, d))  # type: ignore[attr-defined]
        header = parse_header(d.data)
        if header.next_payload != PayloadType.SKF or drop is None:
            return True
        number = int.from_bytes(d.data[32:34], "big")
        key = (direction, header.message_id, number)
        if (direction, number) in drop and key not in seen:
            seen.add(key)
            return False  # each listed fragment is lost once
        return True

    net.filter = keep


def _connect(net: Net) -> None:
    cfg = net.a.configs[0]
    net.a.connect(cfg, B, net.now)
    net.settle()


def test_certificate_exchange_is_fragmented_and_reassembled() -> None:
    net = _net()
    _record(net)
    _connect(net)
    assert net.a.of_type(IkeSaEstablished) and net.b.of_type(IkeSaEstablished)
    net.assert_mirrored()
    frags = [d for _, d in net.recorded if parse_header(d.data).next_payload == PayloadType.SKF]  # type: ignore[attr-defined]
    assert len(frags) >= 6  # RSA certificates and signatures: several fragments each way
    assert all(len(d.data) <= SIZE for d in frags)
    assert net.a.sa().stats["messages_fragmented"] == 1 and net.b.sa().stats["messages_fragmented"] == 1


def test_lost_fragments_are_recovered_by_retransmission() -> None:
    net = _net()
    _record(net, drop={("a->b", 2), ("b->a", 1)})
    _connect(net)
    net.advance(20)
    assert net.a.of_type(IkeSaEstablished) and net.b.of_type(IkeSaEstablished)
    assert net.a.sa().stats["retransmits"] >= 1
    net.assert_mirrored()


def test_tampered_fragment_is_dropped_and_the_retransmission_completes() -> None:
    net = _net()
    tampered: list[int] = []

    def corrupt(direction: str, d: OutgoingDatagram) -> bool:
        if direction == "a->b" and parse_header(d.data).next_payload == PayloadType.SKF and not tampered:
            tampered.append(1)
            net.b.table.receive(d.data[:-1] + bytes([d.data[-1] ^ 1]), d.remote, d.local, net.now)
            return False
        return True

    net.filter = corrupt
    _connect(net)
    net.advance(20)
    assert tampered
    assert not net.a.of_type(IkeSaFailed)
    assert net.b.sa().stats["dropped_integrity"] == 1
    net.assert_mirrored()


def test_no_fragments_towards_a_peer_without_support() -> None:
    net = _net(b_frag=False)
    _record(net)
    _connect(net)
    assert net.a.of_type(IkeSaEstablished)
    assert not [d for _, d in net.recorded if parse_header(d.data).next_payload == PayloadType.SKF]  # type: ignore[attr-defined]
    assert max(len(d.data) for _, d in net.recorded) > SIZE  # sent whole, left to IP  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("encr", "bits", "integ"),
    [
        (EncrId.AES_GCM_16, 256, None),
        (EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128),
        (EncrId.CHACHA20_POLY1305, None, None),
    ],
)
def test_sealed_size_is_the_sealed_length(encr: int, bits: int | None, integ: int | None) -> None:
    """encode_all decides between one message and fragments from sealed_size without sealing:
    it must be exactly what sealing produces, for every padding a block cipher needs."""
    from meshsec.agent.ike.crypto import INTEGS, PRFS, make_cipher
    from meshsec.agent.ike.keys import derive_ike_keys
    from meshsec.agent.ike.protect import SkProtection
    from meshsec.agent.ike.random import DeterministicRandom

    cipher, ig = make_cipher(encr, bits), INTEGS[integ] if integ is not None else None
    keys = derive_ike_keys(PRFS[PrfId.HMAC_SHA2_256](), cipher, ig, b"n" * 32, b"m" * 32, b"s" * 32,
                           b"i" * 8, b"r" * 8)  # fmt: skip
    prot = SkProtection(cipher, ig, keys, initiator=True)
    header = Header(b"i" * 8, b"r" * 8, 0, ExchangeType.INFORMATIONAL, 0, 1, 0, 0x20)
    rnd = DeterministicRandom("sealed-size")
    for n in range(0, 40):
        assert prot.sealed_size(n) == len(prot.seal_encoded(header, PayloadType.NONE, bytes(n), rnd))
