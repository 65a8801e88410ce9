"""X.509 credentials for IKE_AUTH: our certificate chain and key, the CAs we trust, and the
validation of a peer's CERT payloads (RFC 7296 3.6, 3.7).

Validation answers with a precise reason instead of a bare "failed": which certificate expired
or is not yet valid and when, that the chain leads to none of our CAs, or that the peer's ID is
not in its certificate. Chains are checked with cryptography's X.509 verifier (RFC 5280 path
building to a trust anchor, CA constraints); the end-entity policy is permissive because IKE
certificates rarely carry the web-PKI extended key usages. The wall clock is injected: the
engine itself never reads it."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.verification import ExtensionPolicy, PolicyBuilder, Store, VerificationError

from meshsec.agent.ike.constants import IdType
from meshsec.agent.ike.identity import Identity, printable
from meshsec.common.secrets import Secret

CERT_ENCODING_X509_SIGNATURE = 4  # RFC 7296 3.6
WallClock = Callable[[], datetime.datetime]
SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
VerifyKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey

SIGNATURE_METHODS = ("signature", "classic")


def wall_clock() -> datetime.datetime:
    """The real clock for the adapters to inject (the engine never reads it itself)."""
    return datetime.datetime.now(datetime.UTC)


class CredentialError(ValueError):
    pass


def _load_certs(data: bytes, what: str) -> list[x509.Certificate]:
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise CredentialError(f"{what}: not an X.509 certificate (PEM or DER): {exc}") from None


def _load_key(data: bytes) -> SigningKey:
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CredentialError(f"private key: cannot load it (unencrypted PEM/DER expected): {exc}") from None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name not in ("secp256r1", "secp384r1", "secp521r1"):
            raise CredentialError(f"private key: curve {key.curve.name} is not supported (P-256/384/521)")
        return key
    if isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        return key
    raise CredentialError(f"private key: {type(key).__name__} is not supported (ECDSA, RSA, Ed25519)")


# What cryptography raises for a certificate it loaded but cannot read further (its subject,
# extensions and signature are parsed lazily): hostile input, not our bug.
MALFORMED_CERTIFICATE = (ValueError, TypeError, x509.InvalidVersion, UnsupportedAlgorithm)


def describe(cert: x509.Certificate) -> str:
    # A peer's certificate names its subject freely: shown through `printable` like its ID.
    try:
        subject = printable(cert.subject.rfc4514_string())
    except MALFORMED_CERTIFICATE:
        subject = ""
    return subject or f"serial {cert.serial_number:x}"


@dataclass(frozen=True)
class Credentials:
    """`chain` is our certificate first, then intermediates to send along. `method`:
    "signature" is RFC 7427 (AUTH method 14) when the peer announced SIGNATURE_HASH_ALGORITHMS,
    else the classic method of the key type; "classic" always uses RSA (1) / ECDSA (9-11)."""

    chain: tuple[x509.Certificate, ...]
    key: SigningKey | None = field(repr=False)  # None (and no chain): trust anchors only
    trusted: tuple[x509.Certificate, ...]
    clock: WallClock = field(repr=False, compare=False)
    method: str = "signature"
    rsa_pss: bool = False

    def __post_init__(self) -> None:
        if self.key is None and not self.chain:
            if not self.trusted:
                raise CredentialError("cas: at least one trusted CA certificate is needed")
            return
        if not self.chain or self.key is None:
            raise CredentialError("certificate: at least our own certificate and its key are needed")
        if not self.trusted:
            raise CredentialError("cas: at least one trusted CA certificate is needed")
        if self.method not in SIGNATURE_METHODS:
            raise CredentialError(f"auth method must be one of {', '.join(SIGNATURE_METHODS)}")
        if _spki(self.chain[0].public_key()) != _spki(self.key.public_key()):
            raise CredentialError(f"private key does not belong to certificate {describe(self.chain[0])}")

    @classmethod
    def load(
        cls, cert: bytes, key: Secret, cas: Sequence[bytes], clock: WallClock, *,
        method: str = "signature", rsa_pss: bool = False,
    ) -> Credentials:  # fmt: skip
        """PEM or DER bytes; a PEM `cert` may hold the intermediates after our certificate."""
        chain = _load_certs(cert, "certificate")
        trusted = [c for i, data in enumerate(cas) for c in _load_certs(data, f"cas[{i}]")]
        return cls(tuple(chain), _load_key(key.reveal()), tuple(trusted), clock, method, rsa_pss)

    @classmethod
    def trust_anchors(cls, cas: Sequence[bytes], clock: WallClock) -> Credentials:
        """Only CAs to check a peer's certificate against, nothing to sign with: an EAP road
        warrior's view of its gateway (RFC 7296 2.16)."""
        trusted = [c for i, data in enumerate(cas) for c in _load_certs(data, f"cas[{i}]")]
        return cls((), None, tuple(trusted), clock)

    @property
    def can_sign(self) -> bool:
        return self.key is not None

    def certreq_hashes(self) -> bytes:
        """CERTREQ data: SHA-1 of each trusted CA's SubjectPublicKeyInfo (RFC 7296 3.7)."""
        return b"".join(
            hashlib.sha1(_spki(c.public_key()), usedforsecurity=False).digest() for c in self.trusted
        )


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class Verified:
    leaf: x509.Certificate
    key: VerifyKey


def validate_chain(certs: Sequence[bytes], creds: Credentials, peer_id: Identity) -> Verified | str:
    """The peer's leaf certificate with its key, or the precise reason it is not acceptable
    (a malformed certificate is one: it never raises for what the peer sent)."""
    if not certs:
        return "peer sent no certificate"
    parsed: list[x509.Certificate] = []
    for i, data in enumerate(certs):
        try:
            parsed.append(x509.load_der_x509_certificate(data))
        except MALFORMED_CERTIFICATE:
            return f"{MALFORMED_PREFIX}#{i + 1} is not valid DER X.509"
    try:
        return _validate(parsed, creds, peer_id)
    except MALFORMED_CERTIFICATE as exc:
        return f"{MALFORMED_PREFIX}in the chain cannot be read: {type(exc).__name__}: {printable(str(exc))}"


MALFORMED_PREFIX = "malformed certificate "


def _validate(parsed: list[x509.Certificate], creds: Credentials, peer_id: Identity) -> Verified | str:
    now = creds.clock()
    for cert in parsed:
        if now < cert.not_valid_before_utc:
            return (
                f"certificate '{describe(cert)}' is not valid before {cert.not_valid_before_utc.isoformat()}"
            )
        if now > cert.not_valid_after_utc:
            return f"certificate '{describe(cert)}' expired at {cert.not_valid_after_utc.isoformat()}"
    leaf = parsed[0]
    verifier = (
        PolicyBuilder()
        .store(Store(list(creds.trusted)))
        .time(now)
        .extension_policies(
            ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ExtensionPolicy.permit_all()
        )
        .build_client_verifier()
    )
    try:
        verifier.verify(leaf, parsed[1:])
    except VerificationError as exc:
        return f"certificate '{describe(leaf)}' does not chain to a trusted CA: {exc}"
    if not id_in_certificate(peer_id, leaf):
        return f"peer ID {peer_id} is not in certificate '{describe(leaf)}' (subjectAltName)"
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
        return f"certificate '{describe(leaf)}' has an unsupported key type {type(key).__name__}"
    return Verified(leaf, key)


def id_in_certificate(ident: Identity, cert: x509.Certificate) -> bool:
    """The IKE ID must be one of the certificate's subjectAltNames of the same kind."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    if ident.id_type == IdType.FQDN:
        name = ident.data.decode("ascii", "replace").lower()
        return name in (n.lower() for n in san.get_values_for_type(x509.DNSName))
    if ident.id_type == IdType.RFC822_ADDR:
        addr = ident.data.decode("ascii", "replace").lower()
        return addr in (n.lower() for n in san.get_values_for_type(x509.RFC822Name))
    if ident.id_type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
        try:
            ip = ipaddress.ip_address(ident.data)
        except ValueError:
            return False
        return ip in san.get_values_for_type(x509.IPAddress)
    return False
