"""The controller CA: one ECDSA P-256 key pair kept in the store, signing node and server certificates.

The CA certificate and key live under ``<prefix>ca/``; every replica loads the same pair, so any
replica can sign. The key is encrypted with a passphrase when the operator gives one
(``--ca-passphrase-file``); without one it is stored as PKCS#8 PEM under a key that no API returns,
protected only by the store's own access control. The key is held as `Secret` and never logged.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshsec.common.pki import certificate_sha256
from meshsec.common.secrets import Secret
from meshsec.controller.store import Compare, Put, Store

# Leaves start slightly in the past so that clock skew between controller and agent never matters.
_BACKDATE = datetime.timedelta(minutes=5)
_CA_LIFETIME = datetime.timedelta(days=3650)
_ORG = "meshsec"


class CsrError(ValueError):
    """The CSR cannot be used: unparsable, bad signature, unsupported key or wrong subject."""


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    certificate_pem: str
    serial: int
    not_before: datetime.datetime
    not_after: datetime.datetime


@dataclass(frozen=True, slots=True)
class ServerCredentials:
    certificate_pem: bytes
    key_pem: Secret


def _issued(cert: x509.Certificate) -> IssuedCertificate:
    return IssuedCertificate(
        cert.public_bytes(serialization.Encoding.PEM).decode(),
        cert.serial_number,
        cert.not_valid_before_utc,
        cert.not_valid_after_utc,
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _host_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def load_csr(csr_pem: str, expected_cn: str) -> x509.CertificateSigningRequest:
    """The CSR contributes only its public key; it must be signed by that key and name the node."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError as exc:
        raise CsrError(f"CSR is not a PEM PKCS#10 request: {exc}") from exc
    if not csr.is_signature_valid:
        raise CsrError("CSR signature does not verify")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise CsrError("CSR key must be an EC key (P-256 or P-384)")
    cns = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if cns != [expected_cn]:
        raise CsrError(f"CSR subject must be CN={expected_cn}, got {csr.subject.rfc4514_string()!r}")
    return csr


class CertificateAuthority:
    def __init__(self, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.certificate = certificate
        self._key = key
        self.certificate_pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
        self.sha256 = certificate_sha256(certificate)

    @classmethod
    def create(cls, common_name: str = "meshsec controller CA") -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    async def load_or_create(
        cls, store: Store, prefix: str, passphrase: Secret | None
    ) -> CertificateAuthority:
        """The CA in the store; the first replica to find none creates it (a transaction decides races)."""
        key = f"{prefix}ca/authority"
        for _ in range(3):
            kv = await store.get(key)
            if kv is not None:
                return cls._decode(kv.value, passphrase)
            fresh = cls.create()
            result = await store.txn([Compare.absent(key)], [Put(key, fresh._encode(passphrase))])
            if result.succeeded:
                return fresh
        raise RuntimeError(f"could not load or create the controller CA at {key}")

    def _encode(self, passphrase: Secret | None) -> bytes:
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase.reveal())
            if passphrase is not None
            else serialization.NoEncryption()
        )
        key_pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )
        return json.dumps(
            {
                "certificate": self.certificate_pem,
                "key": key_pem.decode(),
                "encrypted": passphrase is not None,
            }
        ).encode()

    @classmethod
    def _decode(cls, raw: bytes, passphrase: Secret | None) -> CertificateAuthority:
        doc = json.loads(raw)
        if doc["encrypted"] and passphrase is None:
            raise ValueError("the controller CA key in the store is encrypted; give --ca-passphrase-file")
        key = serialization.load_pem_private_key(
            doc["key"].encode(), passphrase.reveal() if doc["encrypted"] and passphrase else None
        )
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the controller CA key in the store is not an EC key")
        return cls(x509.load_pem_x509_certificate(doc["certificate"].encode()), key)

    def _leaf(
        self,
        subject: x509.Name,
        public_key: ec.EllipticCurvePublicKey,
        sans: list[x509.GeneralName],
        usages: list[x509.ObjectIdentifier],
        lifetime: datetime.timedelta,
        now: datetime.datetime,
    ) -> x509.Certificate:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )

    def sign_node(
        self,
        csr: x509.CertificateSigningRequest,
        node_name: str,
        ike_id: str,
        lifetime: datetime.timedelta,
        now: datetime.datetime,
    ) -> IssuedCertificate:
        """A node certificate: CN and URI SAN name the node (the API identity), DNS SANs carry the
        node name and its IKE identity (what peers match in certificate-auth IKE_AUTH)."""
        key = csr.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)  # load_csr checked
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(f"meshsec://node/{node_name}")]
        for dns in dict.fromkeys([node_name, ike_id]):
            sans.append(_host_name(dns))
        cert = self._leaf(
            _name(node_name),
            key,
            sans,
            [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH],
            lifetime,
            now,
        )
        return _issued(cert)

    def _key_and_cert(
        self,
        common_name: str,
        sans: list[x509.GeneralName],
        usages: list[x509.ObjectIdentifier],
        lifetime: datetime.timedelta,
    ) -> ServerCredentials:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._leaf(
            _name(common_name), key.public_key(), sans, usages, lifetime, datetime.datetime.now(datetime.UTC)
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return ServerCredentials(cert.public_bytes(serialization.Encoding.PEM), Secret(key_pem))

    def server_credentials(
        self, hosts: list[str], lifetime: datetime.timedelta = datetime.timedelta(days=30)
    ) -> ServerCredentials:
        """A serving certificate for this replica, valid for each of `hosts` (IP addresses or names)."""
        sans = [_host_name(h) for h in dict.fromkeys(hosts)]
        return self._key_and_cert(hosts[0], sans, [ExtendedKeyUsageOID.SERVER_AUTH], lifetime)

    def sign_admin(
        self,
        csr: x509.CertificateSigningRequest,
        user: str,
        lifetime: datetime.timedelta,
        now: datetime.datetime,
    ) -> IssuedCertificate:
        """A client certificate for an administrator on the mTLS listener (URI SAN
        meshsec://admin/<user>). Only registered serials are accepted there (`AdminCertificates`)."""
        key = csr.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)  # load_csr checked
        cert = self._leaf(
            _name(user),
            key,
            [x509.UniformResourceIdentifier(f"meshsec://admin/{user}")],
            [ExtendedKeyUsageOID.CLIENT_AUTH],
            lifetime,
            now,
        )
        return _issued(cert)

    def sign_device(
        self,
        csr: x509.CertificateSigningRequest,
        user: str,
        device: str,
        identity: str,
        lifetime: datetime.timedelta,
        now: datetime.datetime,
    ) -> IssuedCertificate:
        """A remote-access device certificate: rfc822Name (or DNS name) the user's identity, which
        is the IKE/EAP identity the gateway matches, and a meshsec://remote-access/ URI that neither
        the agent nor the admin API accepts as a caller (`identity.caller_of`)."""
        key = csr.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)  # load_csr checked
        named: x509.GeneralName = x509.RFC822Name(identity) if "@" in identity else _host_name(identity)
        cert = self._leaf(
            _name(f"{device}.{user}"),
            key,
            [named, x509.UniformResourceIdentifier(f"meshsec://remote-access/{user}/{device}")],
            [ExtendedKeyUsageOID.CLIENT_AUTH],
            lifetime,
            now,
        )
        return _issued(cert)
