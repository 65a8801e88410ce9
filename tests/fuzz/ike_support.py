"""Real IKE peers for the IKE fuzz targets: the in-memory pair of tests/ike/peers.py with PSK or
certificate authentication (a deterministic PKI, so seeds written by one process verify in the
next), driven to a chosen point; inner payload chains sealed with the SA's real SK_e/SK_a."""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from meshsec.agent.ike.build import build_chain
from meshsec.agent.ike.constants import HeaderFlag
from meshsec.agent.ike.parse import parse_message
from meshsec.agent.ike.payloads import EncryptedPayload, Header
from meshsec.agent.ike.sa import IkeSa, OutgoingDatagram
from tests.fuzz.runner import check_counters
from tests.ike import pki
from tests.ike.peers import I_ADDR, R_ADDR, Pair, ike_config, responder_config

_PKI: dict[str, tuple[x509.Certificate, ec.EllipticCurvePrivateKey]] = {}


def _key(label: str) -> ec.EllipticCurvePrivateKey:
    value = int.from_bytes(hashlib.sha256(b"meshsec fuzz " + label.encode()).digest(), "big") >> 2
    return ec.derive_private_key(value, ec.SECP256R1())


def _certs() -> dict[str, tuple[x509.Certificate, ec.EllipticCurvePrivateKey]]:
    if not _PKI:
        ca_key = _key("ca")
        subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "meshsec fuzz CA")])
        builder = pki._ca_builder(subject, subject, ca_key.public_key(), ca_key)
        ca_cert = builder.sign(ca_key, pki._sign_hash(ca_key))
        ca = pki.Authority("meshsec fuzz CA", ca_key, ca_cert)
        _PKI["ca"] = (ca_cert, ca_key)
        for name in ("alice.example", "bob.example"):
            cert, _ = ca.issue(name)
            key = _key(name)
            # Re-issue with the deterministic key (issue() draws a fresh one).
            builder = x509.CertificateBuilder(
                cert.issuer, cert.subject, key.public_key(), cert.serial_number,
                cert.not_valid_before_utc, cert.not_valid_after_utc, list(cert.extensions),
            )  # fmt: skip
            _PKI[name] = (builder.sign(ca_key, pki._sign_hash(ca_key)), key)
    return _PKI


def new_pair(cert: bool) -> Pair:
    if not cert:
        return Pair(ike_config(), [responder_config()])
    certs = _certs()
    ca = certs["ca"][0]

    def creds(name: str) -> object:
        c, k = certs[name]
        return pki.credentials([c], k, [ca])

    return Pair(
        ike_config(psk=None, credentials=creds("alice.example")),
        [responder_config(psk=None, credentials=creds("bob.example"))],
    )


def through_init(p: Pair) -> list[OutgoingDatagram]:
    """IKE_SA_INIT only; returns the initiator's IKE_AUTH request (not delivered)."""
    p.initiator.initiate(p.now)
    for d in p.initiator.datagrams_to_send():
        p.table.receive(d.data, R_ADDR, I_ADDR, p.now)
    for d in p.table.datagrams_to_send():
        p.initiator.receive(d.data, I_ADDR, R_ADDR, p.now)
    return p.initiator.datagrams_to_send()


def split(data: bytes) -> tuple[int, bytes]:
    return (data[0], data[1:]) if data else (0, b"")


def seal(sender: IkeSa, exchange: int, message_id: int, response: bool, data: bytes) -> bytes:
    """`data` (first inner payload type, then the encoded chain) sealed by `sender`."""
    assert sender.protection is not None
    first, chain = split(data)
    flags = (HeaderFlag.INITIATOR if sender.initiator else 0) | (HeaderFlag.RESPONSE if response else 0)
    header = Header(sender.spi_i, sender.spi_r, 0, exchange, flags, message_id, 0)
    return sender.protection.seal_encoded(header, first, chain, sender.rnd)


def inner(receiver: IkeSa, datagram: bytes) -> bytes:
    """A real sealed message's inner chain in the targets' input form (for seeds)."""
    assert receiver.protection is not None
    msg = parse_message(datagram)
    sk = msg.payloads[-1]
    assert isinstance(sk, EncryptedPayload)
    payloads = receiver.protection.open(datagram, sk)
    return bytes((sk.first_inner,)) + build_chain(payloads)


def check(p: Pair, where: str) -> None:
    check_counters(where, p.initiator.stats, p.responder_front.stats, p.table.stats,
                   *(sa.stats for sa in p.table))  # fmt: skip
