"""Throwaway X.509 material for tests: a CA and the server/client certificates it signs.

Everything lives in memory and is made fresh per test (EC P-256 keys, so it is fast). Node and admin
certificates follow the identity convention of the API (docs/api.md, "Security"): subject CN = name,
URI SAN "meshsec://node/<name>" or "meshsec://admin/<name>".
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshsec.common.secrets import Secret

# Certificates start a little in the past so that clock skew between processes never matters.
_BACKDATE = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class IssuedCertificate:
    cert_pem: bytes
    key_pem: Secret  # PKCS#8 PEM; reveal() only where a TLS library needs the bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> Secret:
    return Secret(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshsec tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


class ThrowawayCA:
    """A self-signed CA that issues leaf certificates, e.g. `ThrowawayCA("test-ca").node("node-a")`."""

    def __init__(self, common_name: str = "meshsec test CA", *, valid_for: datetime.timedelta | None = None):
        self._key = _new_key()
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + (valid_for or datetime.timedelta(days=1)))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_pem = self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        common_name: str,
        *,
        dns_names: tuple[str, ...] = (),
        ip_addresses: tuple[str, ...] = (),
        uris: tuple[str, ...] = (),
        server: bool = False,
        client: bool = False,
        valid_for: datetime.timedelta = datetime.timedelta(hours=1),
    ) -> IssuedCertificate:
        key = _new_key()
        now = datetime.datetime.now(datetime.UTC)
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
        sans += [x509.UniformResourceIdentifier(u) for u in uris]
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + valid_for)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return IssuedCertificate(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))

    def sign_csr(self, csr_pem: bytes, node_name: str, *, valid_for: datetime.timedelta) -> bytes:
        """Signs a node CSR the way the controller CA does: the CSR contributes only its key."""
        csr = x509.load_pem_x509_csr(csr_pem)
        if not csr.is_signature_valid:
            raise ValueError("CSR signature does not verify")
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(node_name))
            .issuer_name(self.certificate.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + valid_for)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"meshsec://node/{node_name}")]),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)

    def server(self, host: str = "127.0.0.1") -> IssuedCertificate:
        """A controller serving certificate valid for `host` (an IP address or a DNS name)."""
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return self.issue(host, dns_names=(host,), server=True)
        return self.issue(host, ip_addresses=(host,), server=True)

    def node(self, node_name: str) -> IssuedCertificate:
        return self.issue(node_name, uris=(f"meshsec://node/{node_name}",), client=True)

    def admin(self, user: str) -> IssuedCertificate:
        return self.issue(user, uris=(f"meshsec://admin/{user}",), client=True)


def new_key_and_csr(common_name: str) -> tuple[Secret, bytes]:
    """What an agent does before enrolling: a fresh key that stays local, and a CSR for it."""
    key = _new_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return _key_pem(key), csr.public_bytes(serialization.Encoding.PEM)
