"""Malformed CERT payloads from a peer that completed IKE_SA_INIT (issue 18): expected hostile
input, so the responder answers AUTHENTICATION_FAILED and closes the SA with a counted reason,
never an internal error, and a retransmitted IKE_AUTH parses nothing again."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from meshsec.agent.ike.certs import CERT_ENCODING_X509_SIGNATURE, Credentials
from meshsec.agent.ike.events import IkeSaFailed
from meshsec.agent.ike.features import certificates
from meshsec.agent.ike.payloads import CertPayload, Payload
from meshsec.agent.ike.sa import OutgoingDatagram

from .lifecycle import B, Net
from .peers import child, ike_config
from .pki import Authority, credentials

A_ID, B_ID = "alice.example", "bob.example"


def _bad_version(der: bytes) -> bytes:
    return der.replace(b"\xa0\x03\x02\x01\x02", b"\xa0\x03\x02\x01\x07", 1)  # X.509 v8


def _bad_subject(der: bytes) -> bytes:
    return der.replace(b"\x0c\x0dalice.example", b"\x0c\x0dalice\xff\xfeample", 1)  # not UTF-8


def _broken_extension(der: bytes) -> bytes:
    return der.replace(b"\x82\x0dalice.example", b"\x82\x0ealice.example", 1)  # SAN overruns


def _garbage_signature(der: bytes) -> bytes:
    return der[:-40] + bytes(range(40))


@pytest.mark.parametrize("mangle", [_bad_version, _bad_subject, _broken_extension, _garbage_signature])
def test_malformed_peer_certificate_is_a_clean_authentication_failure(
    mangle: Callable[[bytes], bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = Authority.root()
    a_cert, a_key = ca.issue(A_ID)
    b_cert, b_key = ca.issue(B_ID)
    a_creds = credentials([a_cert], a_key, [ca.cert])
    bad = mangle(a_cert.public_bytes(Encoding.DER))
    assert bad != a_cert.public_bytes(Encoding.DER)
    real = certificates.cert_payloads

    def sent_certs(creds: Credentials) -> list[Payload]:  # the initiator sends the mangled DER
        return [CertPayload(CERT_ENCODING_X509_SIGNATURE, bad)] if creds is a_creds else real(creds)

    monkeypatch.setattr(certificates, "cert_payloads", sent_certs)
    a = ike_config(local_id=A_ID, remote_id=B_ID, psk=None, credentials=a_creds)  # type: ignore[arg-type]
    b = ike_config(local_id=B_ID, remote_id=A_ID, psk=None,  # type: ignore[arg-type]
                   credentials=credentials([b_cert], b_key, [ca.cert]),
                   children=(child(local="198.19.2.0/24", remote="198.19.1.0/24"),))  # fmt: skip
    net = Net([a], [b])
    auth_requests: list[OutgoingDatagram] = []

    def keep_auth(direction: str, d: OutgoingDatagram) -> bool:
        if direction == "a->b" and d.data[18] == 35:  # IKE_AUTH
            auth_requests.append(d)
        return True

    net.filter = keep_auth
    net.a.connect(a, B, net.now)
    net.settle()
    (fb,) = net.b.of_type(IkeSaFailed)
    (fa,) = net.a.of_type(IkeSaFailed)
    assert "certificate authentication of alice.example failed" in fb.reason, fb
    assert "AUTHENTICATION_FAILED" in fa.reason, fa  # we answered it
    (responder_sa,) = net.b.events_sas()
    assert responder_sa.stats["internal_error"] == 0
    reasons = {k: v for k, v in responder_sa.stats.items() if k.startswith("auth_failed_")}
    assert sum(reasons.values()) == 1, reasons
    assert net.b.sas() == []  # closed at once, not left half-open for 30 s
    (request,) = auth_requests
    before = dict(responder_sa.stats)
    net.b.table.receive(request.data, request.remote, request.local, net.now)  # a retransmission
    assert dict(responder_sa.stats) == before and net.b.table.stats["dropped_unknown_spi"] == 1


def test_unreadable_certificates_are_counted_as_malformed() -> None:
    from meshsec.agent.ike.certs import validate_chain
    from meshsec.agent.ike.identity import Identity

    ca = Authority.root()
    cert, key = ca.issue(A_ID)
    creds = credentials([cert], key, [ca.cert])
    der = cert.public_bytes(Encoding.DER)
    reason = validate_chain([_bad_version(der)], creds, Identity.parse(A_ID))
    assert isinstance(reason, str) and reason.startswith("malformed certificate"), reason
    for mangle in (_bad_subject, _broken_extension, _garbage_signature):
        assert isinstance(validate_chain([mangle(der)], creds, Identity.parse(A_ID)), str), mangle
