"""Certificate fingerprints the controller publishes and agents pin."""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization


def certificate_sha256(certificate: x509.Certificate) -> str:
    """SHA-256 of the DER encoding, hex: `CreateBootstrapTokenResponse.ca_cert_sha256`."""
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


def ca_sha256(ca_pem: bytes) -> str:
    """`certificate_sha256` of the first certificate in `ca_pem`."""
    return certificate_sha256(x509.load_pem_x509_certificate(ca_pem))
