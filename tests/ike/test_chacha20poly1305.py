"""ENCR_CHACHA20_POLY1305 (RFC 7634) in the IKE engine: the published vectors through our glue
(RFC 8439 section 2.8.2 for the AEAD with the salt/IV split, RFC 7634 Appendix B's IKEv2 example
through the SK payload code, values copied from the RFCs), the proposal rules (no Key Length
attribute, no integrity, an explicit PRF) and a full negotiation between two engines."""

from __future__ import annotations

import pytest

from meshsec.agent.ike.constants import EncrId, ExchangeType, PayloadType, ProtocolId, TransformType
from meshsec.agent.ike.crypto import ChaCha20Poly1305Aead, CryptoError, make_cipher
from meshsec.agent.ike.events import IkeSaEstablished
from meshsec.agent.ike.keys import IkeKeys, child_encr_key_size
from meshsec.agent.ike.payloads import Header, Proposal, Transform
from meshsec.agent.ike.proposals import ProposalError, parse_proposals, select_proposal
from meshsec.agent.ike.protect import SkProtection
from meshsec.common.secrets import Secret

from .peers import Pair, child, ike_config, of_type, responder_config
from .test_exchanges import established

H = bytes.fromhex

# RFC 8439 section 2.8.2: key, nonce = 07000000 || 4041424344454647, AAD, "Ladies and Gentlemen...".
RFC8439_KEY = H("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
RFC8439_PLAINTEXT = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
    b"sunscreen would be it."
)
RFC8439_AAD = H("50515253c0c1c2c3c4c5c6c7")
RFC8439_CIPHERTEXT = H(
    "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6"
    "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36"
    "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
    "3ff4def08e4b7a9de576d26586cec64b6116"
)
RFC8439_TAG = H("1ae10b594f09e26a7e902ecbd0600691")

# RFC 7634 Appendix B, "IKEv2 Example": an INFORMATIONAL request (message ID 9) holding one
# Notify payload, sealed with KEYMAT = key || salt a0a1a2a3 and IV 1011121314151617.
IKE_KEYMAT = RFC8439_KEY + H("a0a1a2a3")
IKE_SPI_I, IKE_SPI_R = H("c0c1c2c3c4c5c6c7"), H("d0d1d2d3d4d5d6d7")
IKE_IV = H("1011121314151617")
IKE_NOTIFY = H("0000000c000040010000000a")  # the inner chain; pad length 00 follows it
IKE_MESSAGE = (
    H("c0c1c2c3c4c5c6c7d0d1d2d3d4d5d6d72e202500000000090000004529000029")  # header + SK header (AAD)
    + IKE_IV
    + H("610394701f8d017f7c12924889")  # ciphertext of the notify and the pad length byte
    + H("6b71bfe25236efd7cdc67066906315b2")  # ICV
)


class FixedIv:
    def __init__(self, iv: bytes) -> None:
        self._iv = iv

    def bytes(self, n: int) -> bytes:
        assert n == len(self._iv)
        return self._iv


def test_rfc8439_aead_vector_with_rfc7634_key_and_nonce_split() -> None:
    # RFC 7634: the last 4 KEYMAT bytes are the salt, the first 4 nonce bytes; the IV is the rest.
    cipher = ChaCha20Poly1305Aead()
    key = RFC8439_KEY + H("07000000")
    sealed = cipher.encrypt(key, H("4041424344454647"), RFC8439_PLAINTEXT, RFC8439_AAD)
    assert sealed == RFC8439_CIPHERTEXT + RFC8439_TAG
    assert cipher.decrypt(key, H("4041424344454647"), sealed, RFC8439_AAD) == RFC8439_PLAINTEXT
    with pytest.raises(CryptoError, match="ChaCha20-Poly1305 tag mismatch"):
        cipher.decrypt(key, H("4041424344454647"), sealed, RFC8439_AAD[:-1] + b"\0")


def _protection(initiator: bool) -> SkProtection:
    empty, key = Secret(b""), Secret(IKE_KEYMAT)
    keys = IkeKeys(sk_d=empty, sk_ai=empty, sk_ar=empty, sk_ei=key, sk_er=key, sk_pi=empty, sk_pr=empty)
    return SkProtection(make_cipher(EncrId.CHACHA20_POLY1305, None), None, keys, initiator)


def test_rfc7634_ikev2_example_through_the_sk_payload() -> None:
    header = Header(IKE_SPI_I, IKE_SPI_R, PayloadType.SK, ExchangeType.INFORMATIONAL, 0, 9, 0)
    sealed = _protection(True).seal_encoded(header, PayloadType.NOTIFY, IKE_NOTIFY, FixedIv(IKE_IV))
    # Byte for byte: the AAD is the IKE header and the SK payload header, no padding beyond the
    # Pad Length byte, a 16-byte ICV and no separate integrity checksum.
    assert sealed == IKE_MESSAGE
    receiver = _protection(False)
    assert receiver._decrypt(IKE_MESSAGE, IKE_MESSAGE[32:], 32) == IKE_NOTIFY
    tampered = IKE_MESSAGE[:23] + b"\x0a" + IKE_MESSAGE[24:]  # message ID 10: the AAD changed
    with pytest.raises(CryptoError):
        receiver._decrypt(tampered, tampered[32:], 32)


def test_cipher_parameters_and_keymat_sizes() -> None:
    cipher = make_cipher(EncrId.CHACHA20_POLY1305, None)
    assert (cipher.key_size, cipher.iv_size, cipher.icv_size, cipher.aead) == (36, 8, 16, True)
    assert cipher.block_size() == 1
    with pytest.raises(ValueError, match="no Key Length"):
        make_cipher(EncrId.CHACHA20_POLY1305, 256)
    assert child_encr_key_size(EncrId.CHACHA20_POLY1305, None) == 36


def test_proposal_strings_follow_the_aead_rules() -> None:
    [ike] = parse_proposals("chacha20poly1305-prfsha256-x25519", ProtocolId.IKE)
    [encr] = [t for t in ike.transforms if t.type == TransformType.ENCR]
    assert encr == Transform(TransformType.ENCR, EncrId.CHACHA20_POLY1305, None)  # no Key Length
    assert not [t for t in ike.transforms if t.type == TransformType.INTEG]
    [esp] = parse_proposals("chacha20poly1305", ProtocolId.ESP)
    assert esp.transforms[0] == encr
    with pytest.raises(ProposalError, match="no integrity"):
        parse_proposals("chacha20poly1305-sha256-x25519", ProtocolId.IKE)
    with pytest.raises(ProposalError, match="needs a prf"):
        parse_proposals("chacha20poly1305-x25519", ProtocolId.IKE)
    with pytest.raises(ProposalError, match="mixes AEAD"):
        parse_proposals("chacha20poly1305-aes256-sha256", ProtocolId.ESP)


def test_a_peer_offering_a_key_length_is_not_matched() -> None:
    ours = parse_proposals("chacha20poly1305", ProtocolId.ESP)
    esn = Transform(TransformType.ESN, 0)
    good = Proposal(1, ProtocolId.ESP, b"\1\2\3\4", (Transform(TransformType.ENCR, 28), esn))
    bad = Proposal(1, ProtocolId.ESP, b"\1\2\3\4", (Transform(TransformType.ENCR, 28, 256), esn))
    chosen = select_proposal(ours, (good,))
    assert chosen is not None and chosen.encr == Transform(TransformType.ENCR, 28)
    assert select_proposal(ours, (bad,)) is None


def test_two_engines_negotiate_chacha20poly1305_for_ike_and_esp() -> None:
    ike = "chacha20poly1305-prfsha256-x25519"
    ic = child(proposals="chacha20poly1305")
    rc = child(local="198.19.2.0/24", remote="198.19.1.0/24", proposals="chacha20poly1305")
    p = Pair(ike_config(proposals=ike, children=(ic,)), [responder_config(proposals=ike, children=(rc,))])
    p.connect()
    for events in (p.events_i, p.events_r):
        [sa] = of_type(events, IkeSaEstablished)
        assert sa.algorithms.encr == EncrId.CHACHA20_POLY1305 and sa.algorithms.encr_key_bits is None
        assert sa.algorithms.integ is None
    ci, cr = established(p)
    assert ci.algorithms.encr == EncrId.CHACHA20_POLY1305 and ci.algorithms.integ is None
    assert len(ci.keys_in.encr) == 36 and len(ci.keys_in.integ) == 0  # key + salt (RFC 7634 2)
    assert ci.keys_in == cr.keys_out
