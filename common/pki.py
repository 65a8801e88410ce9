"""Certificate fingerprints the controller publishes and agents pin; the key and CSR a client
(an agent enrolling, an admin asking for a certificate) makes before the controller CA signs."""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshsec.common.secrets import Secret


def certificate_sha256(certificate: x509.Certificate) -> str:
    """SHA-256 of the DER encoding, hex: `CreateBootstrapTokenResponse.ca_cert_sha256`."""
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


def ca_sha256(ca_pem: bytes) -> str:
    """`certificate_sha256` of the first certificate in `ca_pem`."""
    return certificate_sha256(x509.load_pem_x509_certificate(ca_pem))


def new_key() -> Secret:
    """A fresh P-256 key as unencrypted PKCS#8 PEM; it never leaves the machine that made it."""
    key = ec.generate_private_key(ec.SECP256R1())
    return Secret(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def make_csr(key_pem: Secret, common_name: str) -> str:
    """A PKCS#10 request for `key_pem` with subject exactly CN=<common_name> (what the CA checks)."""
    key = serialization.load_pem_private_key(key_pem.reveal(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()
