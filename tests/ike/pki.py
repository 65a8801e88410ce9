"""A throwaway PKI for certificate-authentication tests: CAs (optionally with an intermediate)
and end-entity certificates with a DNS subjectAltName, for every key type IKE_AUTH supports.
Validity windows are explicit so expired and not-yet-valid certificates are easy to make."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from meshsec.agent.ike.certs import Credentials, SigningKey
from meshsec.common.secrets import Secret

NOW = datetime.datetime(2026, 6, 1, 12, 0, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)

_KEY_CACHE: dict[str, list[SigningKey]] = {}


def new_key(kind: str) -> SigningKey:
    """Fresh keys, except RSA ones come from a small pool (generating 2048-bit keys is slow)."""
    if kind == "ecdsa256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ecdsa384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind == "rsa":
        pool = _KEY_CACHE.setdefault("rsa", [])
        if len(pool) < 6:
            pool.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
            return pool[-1]
        pool.append(pool.pop(0))
        return pool[-1]
    raise ValueError(kind)


def _sign_hash(key: SigningKey) -> hashes.HashAlgorithm | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


@dataclass
class Authority:
    name: str
    key: SigningKey
    cert: x509.Certificate

    @classmethod
    def root(cls, name: str = "meshsec test root", kind: str = "ecdsa256") -> Authority:
        key = new_key(kind)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = _ca_builder(subject, subject, key.public_key(), key).sign(key, _sign_hash(key))
        return cls(name, key, cert)

    def intermediate(self, name: str = "meshsec test intermediate") -> Authority:
        key = new_key("ecdsa256")
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = _ca_builder(subject, self.cert.subject, key.public_key(), self.key).sign(
            self.key, _sign_hash(self.key)
        )
        return Authority(name, key, cert)

    def issue(self, dns: str, kind: str = "ecdsa256", *, not_before: datetime.datetime | None = None,
              not_after: datetime.datetime | None = None) -> tuple[x509.Certificate, SigningKey]:  # fmt: skip
        key = new_key(kind)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or NOW - 30 * DAY)
            .not_valid_after(not_after or NOW + 365 * DAY)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )  # type: ignore[arg-type]
        )
        return builder.sign(self.key, _sign_hash(self.key)), key


def _ca_builder(
    subject: x509.Name, issuer: x509.Name, public: object, signer: SigningKey
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - 365 * DAY)
        .not_valid_after(NOW + 3650 * DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)  # type: ignore[arg-type]
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
        )  # type: ignore[arg-type]
    )


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: SigningKey) -> Secret:
    return Secret(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))  # fmt: skip


def credentials(
    chain: list[x509.Certificate], key: SigningKey, trusted: list[x509.Certificate], *,
    at: datetime.datetime = NOW, method: str = "signature", rsa_pss: bool = False,
) -> Credentials:  # fmt: skip
    return Credentials(tuple(chain), key, tuple(trusted), lambda: at, method, rsa_pss)
