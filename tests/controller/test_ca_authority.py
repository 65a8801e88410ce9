"""The controller CA and bootstrap tokens against the embedded store (no network)."""

from __future__ import annotations

import base64
import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshsec.common.secrets import Secret
from meshsec.controller.ca import BootstrapTokens, CertificateAuthority, CsrError, TokenError, load_csr
from meshsec.controller.store import EmbeddedStore
from tests.harness.tls import new_key_and_csr

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def _verify(ca: CertificateAuthority, cert: x509.Certificate) -> None:
    key = ca.certificate.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert cert.signature_hash_algorithm is not None
    key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))


def test_node_certificate_carries_identity_usages_and_lifetime() -> None:
    ca = CertificateAuthority.create()
    _, csr_pem = new_key_and_csr("node-a")
    issued = ca.sign_node(
        load_csr(csr_pem.decode(), "node-a"),
        "node-a",
        "node-a.mesh.example",
        datetime.timedelta(hours=6),
        NOW,
    )
    cert = x509.load_pem_x509_certificate(issued.certificate_pem.encode())
    _verify(ca, cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "node-a"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["node-a", "node-a.mesh.example"]
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["meshsec://node/node-a"]
    assert set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.CLIENT_AUTH,
        ExtendedKeyUsageOID.SERVER_AUTH,
    }
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert cert.not_valid_after_utc == NOW + datetime.timedelta(hours=6)
    assert issued.not_after == cert.not_valid_after_utc and issued.serial == cert.serial_number


def test_csr_must_name_the_node_and_be_self_signed() -> None:
    _, csr_pem = new_key_and_csr("node-b")
    with pytest.raises(CsrError, match="CN=node-a"):
        load_csr(csr_pem.decode(), "node-a")
    with pytest.raises(CsrError, match="PEM"):
        load_csr("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "node-a")
    # A CSR whose signature was made by another key than the one it carries.
    good = x509.load_pem_x509_csr(csr_pem)
    other = ec.generate_private_key(ec.SECP256R1())
    forged = x509.CertificateSigningRequestBuilder().subject_name(good.subject).sign(other, hashes.SHA256())
    tampered = bytearray(forged.public_bytes(serialization.Encoding.DER))
    tampered[-1] ^= 0x01  # flip a bit of the signature
    body = base64.encodebytes(bytes(tampered))
    pem = b"-----BEGIN CERTIFICATE REQUEST-----\n" + body + b"-----END CERTIFICATE REQUEST-----\n"
    with pytest.raises(CsrError):
        load_csr(pem.decode(), "node-b")


def test_server_and_admin_credentials() -> None:
    ca = CertificateAuthority.create()
    server = x509.load_pem_x509_certificate(
        ca.server_credentials(["127.0.0.1", "ctl.example"]).certificate_pem
    )
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert sans.get_values_for_type(x509.DNSName) == ["ctl.example"]
    assert list(server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    _, csr = new_key_and_csr("alice")
    issued = ca.sign_admin(load_csr(csr.decode(), "alice"), "alice", datetime.timedelta(days=30), NOW)
    admin = x509.load_pem_x509_certificate(issued.certificate_pem.encode())
    assert admin.not_valid_after_utc - NOW == datetime.timedelta(days=30)
    assert list(admin.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    assert admin.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    ) == ["meshsec://admin/alice"]


async def test_ca_is_persisted_once_and_its_key_encrypted_with_a_passphrase(tmp_path: Path) -> None:
    async with await EmbeddedStore.open(tmp_path / "s.log") as store:
        passphrase = Secret(b"correct horse battery staple")
        first = await CertificateAuthority.load_or_create(store, "/m/", passphrase)
        again = await CertificateAuthority.load_or_create(store, "/m/", passphrase)
        assert again.certificate == first.certificate and again.sha256 == first.sha256
        raw = await store.get("/m/ca/authority")
        assert raw is not None and b"ENCRYPTED PRIVATE KEY" in raw.value
        with pytest.raises(ValueError, match="passphrase"):
            await CertificateAuthority.load_or_create(store, "/m/", None)
        plain = await CertificateAuthority.load_or_create(store, "/other/", None)
        assert plain.certificate != first.certificate


async def test_tokens_are_bounded_expiring_bound_and_hashed(tmp_path: Path) -> None:
    async with await EmbeddedStore.open(tmp_path / "s.log") as store:
        tokens = BootstrapTokens(store, "/m/")
        now = 1_000_000.0
        token, record = await tokens.create(
            site="dc1", node_name="n1", ttl_s=60, uses=2, labels={"a": "b"}, allow_reenroll=False, now=now
        )
        assert (
            token.reveal().decode().partition(".")[2].encode()
            not in (await store.get(tokens.key(record.token_id))).value
        )  # type: ignore[union-attr]
        found, kv = await tokens.check(token, "n1", now + 1)
        assert found.uses_left == 2 and found.labels == {"a": "b"}
        with pytest.raises(TokenError) as bound:
            await tokens.check(token, "n2", now + 1)
        assert bound.value.code == "permission_denied"
        with pytest.raises(TokenError, match="expired"):
            await tokens.check(token, "n1", now + 61)
        with pytest.raises(TokenError, match="unknown"):
            await tokens.check(Secret(f"{record.token_id}.guess"), "n1", now)
        for _ in range(2):
            found, kv = await tokens.check(token, "n1", now + 1)
            op = tokens.spend_op(found)
            await store.put(op.key, op.value, expect_mod_revision=kv.mod_revision)
        with pytest.raises(TokenError, match="used up"):
            await tokens.check(token, "n1", now + 1)
        capped, _ = await tokens.create(
            site="dc1", node_name="", ttl_s=10**9, uses=0, labels={}, allow_reenroll=False, now=now
        )
        assert (await tokens.check(capped, "any", now))[0].expires_at == now + 24 * 3600
        assert await tokens.collect_garbage(now + 2) == 1  # the used-up one; the capped one lives
        assert await tokens.revoke((await tokens.check(capped, "x", now))[0].token_id)
        with pytest.raises(TokenError, match="unknown"):
            await tokens.check(capped, "x", now)
