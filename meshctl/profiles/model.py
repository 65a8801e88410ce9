"""What every profile renderer needs: the gateway, the device's credentials, the pool's crypto."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12

from meshsec.common.secrets import Secret


class ProfileError(Exception):
    """The pool and the client have nothing in common (proposals), or an input is missing."""


@dataclass(frozen=True)
class DeviceCredentials:
    """A device certificate and its key: they exist only in memory and in the rendered file."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def pkcs12(self, name: str, passphrase: Secret, ca: x509.Certificate) -> bytes:
        # AES-256 + PBKDF2 (OpenSSL 3's default); iOS 17+, Android 7+ and Windows 10 1809+ read it.
        encryption = (
            serialization.PrivateFormat.PKCS12.encryption_builder()
            .kdf_rounds(50000)
            .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
            .hmac_hash(hashes.SHA256())
            .build(passphrase.reveal())
        )
        return pkcs12.serialize_key_and_certificates(
            name.encode(), self.key, self.certificate, [ca], encryption
        )

    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> Secret:
        return Secret(
            self.key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )


@dataclass(frozen=True)
class ProfileInput:
    name: str  # the connection's name on the device, e.g. "meshsec-staff"
    server: str  # gateway address or DNS name the device connects to
    server_id: str  # the gateway's IKE identity (its certificate's DNS name)
    identity: str  # the user's identity (EAP identity / certificate e-mail)
    auth: str  # certificate | eap-tls | eap-mschapv2 (RemoteAuthMethod values)
    ca: x509.Certificate
    ike_proposals: tuple[str, ...]
    esp_proposals: tuple[str, ...]
    routes: tuple[str, ...]  # what the tunnel carries; ("0.0.0.0/0", "::/0") for a full tunnel
    ike_lifetime_s: int = 14400
    child_lifetime_s: int = 3600
    credentials: DeviceCredentials | None = None  # certificate and eap-tls
    passphrase: Secret | None = None  # for the PKCS#12 in formats that embed one
    profile_uuid: str = ""

    def uuid(self, salt: str = "") -> str:
        """Stable per profile and device: re-importing a profile replaces the old one."""
        base = self.profile_uuid or str(
            uuid.uuid5(uuid.NAMESPACE_URL, f"meshsec:{self.server}:{self.identity}")
        )
        return str(uuid.uuid5(uuid.UUID(base), salt)).upper() if salt else base.upper()

    @property
    def full_tunnel(self) -> bool:
        return any(r in ("0.0.0.0/0", "::/0") for r in self.routes)

    def ca_der(self) -> bytes:
        return self.ca.public_bytes(serialization.Encoding.DER)

    def ca_pem(self) -> bytes:
        return self.ca.public_bytes(serialization.Encoding.PEM)

    def needs_certificate(self) -> bool:
        return self.auth in ("certificate", "eap-tls")

    def require_credentials(self) -> DeviceCredentials:
        if self.credentials is None:
            raise ProfileError(f"{self.auth} needs a device certificate")
        return self.credentials

    def require_passphrase(self) -> Secret:
        if self.passphrase is None:
            raise ProfileError("this format embeds a PKCS#12 and needs a passphrase for it")
        return self.passphrase
