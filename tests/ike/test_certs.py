"""Certificate authentication between two in-process agents: every key type with RFC 7427
signatures and the classic methods, chains through an intermediate, and each way a
certificate can be unacceptable, with the precise reason on the rejecting side and
AUTHENTICATION_FAILED on the wire for the other."""

from __future__ import annotations

import datetime

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from meshsec.agent.ike.certs import CredentialError, Credentials, validate_chain
from meshsec.agent.ike.config import ConfigError
from meshsec.agent.ike.events import ChildSaEstablished, IkeSaEstablished, IkeSaFailed
from meshsec.agent.ike.identity import Identity
from meshsec.agent.ike.sigauth import HashId, SigMethod, sign, verify

from .lifecycle import B, Net
from .peers import child, ike_config
from .pki import DAY, NOW, Authority, credentials, key_pem, pem

A_ID, B_ID = "alice.example", "bob.example"


def _pair(a_creds: Credentials, b_creds: Credentials) -> Net:
    a = ike_config(local_id=A_ID, remote_id=B_ID, psk=None, credentials=a_creds)  # type: ignore[arg-type]
    b = ike_config(local_id=B_ID, remote_id=A_ID, psk=None, credentials=b_creds,  # type: ignore[arg-type]
                   children=(child(local="198.19.2.0/24", remote="198.19.1.0/24"),))  # fmt: skip
    net = Net([a], [b])
    net.a.connect(a, B, net.now)
    net.settle()
    return net


def _ok(net: Net) -> None:
    assert not net.a.of_type(IkeSaFailed) and not net.b.of_type(IkeSaFailed), (
        net.a.of_type(IkeSaFailed), net.b.of_type(IkeSaFailed))  # fmt: skip
    assert net.a.of_type(IkeSaEstablished) and net.b.of_type(IkeSaEstablished)
    assert len(net.a.of_type(ChildSaEstablished)) == 1
    net.assert_mirrored()


@pytest.mark.parametrize("kind", ["ecdsa256", "ecdsa384", "rsa", "ed25519"])
def test_rfc7427_signatures_for_each_key_type(kind: str) -> None:
    ca = Authority.root()
    a_cert, a_key = ca.issue(A_ID, kind)
    b_cert, b_key = ca.issue(B_ID, kind)
    _ok(_pair(credentials([a_cert], a_key, [ca.cert]), credentials([b_cert], b_key, [ca.cert])))


def test_rsa_pss_and_classic_methods_interoperate() -> None:
    ca = Authority.root(kind="rsa")
    a_cert, a_key = ca.issue(A_ID, "rsa")
    b_cert, b_key = ca.issue(B_ID, "ecdsa384")
    a = credentials([a_cert], a_key, [ca.cert], rsa_pss=True)
    b = credentials([b_cert], b_key, [ca.cert], method="classic")  # ECDSA method 10
    _ok(_pair(a, b))


def test_chain_through_an_intermediate() -> None:
    root = Authority.root()
    inter = root.intermediate()
    a_cert, a_key = inter.issue(A_ID)
    b_cert, b_key = inter.issue(B_ID, "rsa")
    # Only the root is trusted; the intermediate travels in a second CERT payload.
    _ok(_pair(credentials([a_cert, inter.cert], a_key, [root.cert]),
              credentials([b_cert, inter.cert], b_key, [root.cert])))  # fmt: skip


def _reject(a_creds: Credentials, b_creds: Credentials) -> tuple[str, str]:
    net = _pair(a_creds, b_creds)
    (fa,) = net.a.of_type(IkeSaFailed)
    (fb,) = net.b.of_type(IkeSaFailed)
    assert not net.a.of_type(ChildSaEstablished) or not net.a.sas()
    assert net.a.sas() == [] and net.b.sas() == []
    return fa.reason, fb.reason


@pytest.mark.parametrize("side", ["initiator", "responder"])
@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("expired", "expired at 2026-05-31T12:00:00+00:00"),
        ("not-yet-valid", "is not valid before 2026-06-02T12:00:00+00:00"),
        ("wrong-ca", "does not chain to a trusted CA"),
        ("wrong-id", "peer ID bob.example is not in certificate"),
    ],
)
def test_bad_certificates_fail_with_a_precise_reason(side: str, case: str, expect: str) -> None:
    ca = Authority.root()
    good_cert, good_key = ca.issue(B_ID)
    if case == "expired":
        bad_cert, bad_key = ca.issue(B_ID, not_before=NOW - 10 * DAY, not_after=NOW - DAY)
    elif case == "not-yet-valid":
        bad_cert, bad_key = ca.issue(B_ID, not_before=NOW + DAY, not_after=NOW + 10 * DAY)
    elif case == "wrong-ca":
        bad_cert, bad_key = Authority.root("some other CA").issue(B_ID)
    else:
        bad_cert, bad_key = ca.issue("mallory.example")
    a_cert, a_key = ca.issue(A_ID)
    good_a = credentials([a_cert], a_key, [ca.cert])
    # The bad certificate claims bob.example; it is presented by the side under test.
    if side == "responder":
        fa, fb = _reject(good_a, credentials([bad_cert], bad_key, [ca.cert]))
        assert expect in fa, fa  # the initiator saw the bad certificate
        assert "AUTHENTICATION_FAILED" in fb  # and told the responder
    else:
        a_bad = ike_config(local_id=B_ID, remote_id=A_ID, psk=None,  # type: ignore[arg-type]
                           credentials=credentials([bad_cert], bad_key, [ca.cert]))  # fmt: skip
        b_good = ike_config(local_id=A_ID, remote_id="%any", psk=None,  # type: ignore[arg-type]
                            credentials=credentials([a_cert], a_key, [ca.cert]),
                            children=(child(local="198.19.2.0/24", remote="198.19.1.0/24"),))  # fmt: skip
        net = Net([a_bad], [b_good])
        net.a.connect(a_bad, B, net.now)
        net.settle()
        (fa,) = net.a.of_type(IkeSaFailed)
        (fb,) = net.b.of_type(IkeSaFailed)
        assert expect in fb.reason, fb  # the responder saw the bad certificate
        assert "AUTHENTICATION_FAILED" in fa.reason
    assert good_cert is not None and good_key is not None


def test_psk_peer_is_refused_when_certificates_are_required() -> None:
    ca = Authority.root()
    b_cert, b_key = ca.issue(B_ID)
    a = ike_config(local_id=A_ID, remote_id=B_ID)
    b_creds = credentials([b_cert], b_key, [ca.cert])
    b = ike_config(local_id=B_ID, remote_id=A_ID, psk=None, credentials=b_creds,  # type: ignore[arg-type]
                   children=(child(local="198.19.2.0/24", remote="198.19.1.0/24"),))  # fmt: skip
    net = Net([a], [b])
    net.a.connect(a, B, net.now)
    net.settle()
    (fb,) = net.b.of_type(IkeSaFailed)
    assert "authenticated with a PSK but we require a certificate" in fb.reason


def test_signature_units() -> None:
    ca = Authority.root()
    cert, key = ca.issue(A_ID, "ecdsa256")
    creds = credentials([cert], key, [ca.cert])
    octets = b"signed octets"
    method, data = sign(creds, octets, frozenset({HashId.SHA2_256}))
    assert method == SigMethod.DIGITAL_SIGNATURE
    assert verify(cert.public_key(), method, data, octets) is None  # type: ignore[arg-type]
    assert verify(cert.public_key(), method, data, b"other") is not None  # type: ignore[arg-type]
    method, data = sign(creds, octets, None)  # peer without RFC 7427: classic ECDSA, r|s
    assert method == SigMethod.ECDSA_P256 and len(data) == 64
    assert verify(cert.public_key(), method, data, octets) is None  # type: ignore[arg-type]
    rsa_cert, rsa_key = ca.issue(A_ID, "rsa")
    rsa_creds = credentials([rsa_cert], rsa_key, [ca.cert])
    method, data = sign(rsa_creds, octets, frozenset({HashId.SHA1}))  # no SHA-256: classic RSA
    assert method == SigMethod.RSA
    assert verify(rsa_cert.public_key(), method, data, octets) is None  # type: ignore[arg-type]
    assert "not RSA" in (verify(cert.public_key(), SigMethod.RSA, data, octets) or "")  # type: ignore[arg-type]
    assert isinstance(rsa_key, rsa.RSAPrivateKey) and isinstance(key, ec.EllipticCurvePrivateKey)


def test_credentials_loading_errors_name_the_problem() -> None:
    ca = Authority.root()
    cert, key = ca.issue(A_ID)
    _, other_key = ca.issue(A_ID)
    clock = lambda: NOW  # noqa: E731
    Credentials.load(pem(cert) + pem(ca.cert), key_pem(key), [pem(ca.cert)], clock)
    with pytest.raises(CredentialError, match="does not belong to certificate"):
        Credentials.load(pem(cert), key_pem(other_key), [pem(ca.cert)], clock)
    with pytest.raises(CredentialError, match=r"not an X\.509 certificate"):
        Credentials.load(b"garbage", key_pem(key), [pem(ca.cert)], clock)
    with pytest.raises(CredentialError, match="trusted CA"):
        Credentials.load(pem(cert), key_pem(key), [], clock)
    with pytest.raises(ConfigError, match="psk"):
        ike_config(psk=None)  # type: ignore[arg-type]


def test_validation_reports_unparseable_and_missing_certs() -> None:
    ca = Authority.root()
    cert, key = ca.issue(A_ID)
    creds = credentials([cert], key, [ca.cert], at=NOW + datetime.timedelta(days=1))
    assert validate_chain([], creds, Identity.parse(A_ID)) == "peer sent no certificate"
    assert "not valid DER" in str(validate_chain([b"\x30\x00"], creds, Identity.parse(A_ID)))
