"""What a remote-access client authenticates with, as the controller keeps it.

- EAP-MSCHAPv2: the NT hash of the password (``passwords/<user>``), never the password. MSCHAPv2
  needs exactly that hash on the authenticator; it is password-equivalent for MSCHAPv2, so it is
  kept like a PSK (docs/security.md, "Remote-access credentials").
- Certificates (certificate and EAP-TLS): the controller CA signs a CSR whose key never leaves
  meshctl; the serial is registered (``certificates/<serial>``) with its user and device, so a
  deleted user or device turns into a list of revoked serials (`revoked`). The deletion also
  marks the records revoked in its own transaction (`revoke_ops`): a user re-created under the
  same name, or a device name used again, must not bring an old certificate back.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Collection
from dataclasses import dataclass

from meshsec.common.md4 import nt_password_hash
from meshsec.common.secrets import Secret
from meshsec.controller.ca.authority import CertificateAuthority, IssuedCertificate, load_csr
from meshsec.controller.service.keys import Keys
from meshsec.controller.store import Delete, Put, Store

# RFC 2759 allows up to 256 Unicode characters; fewer than 8 is refused as trivially guessable
# (an MSCHAPv2 exchange seen on the wire can be brute-forced offline).
MIN_PASSWORD = 8
MAX_PASSWORD = 256
DEFAULT_DEVICE_LIFETIME = datetime.timedelta(days=365)
MAX_DEVICE_LIFETIME = datetime.timedelta(days=825)


def password_problem(password: str) -> str | None:
    """Why `password` is refused (None: acceptable). Never quotes it."""
    if len(password) < MIN_PASSWORD:
        return f"a password must be at least {MIN_PASSWORD} characters (got {len(password)})"
    if len(password) > MAX_PASSWORD:
        return f"a password may be at most {MAX_PASSWORD} characters, MSCHAPv2's limit (got {len(password)})"
    return None


@dataclass(frozen=True, slots=True)
class DeviceCertificate:
    serial: str
    user: str
    device: str
    not_after: float
    revoked: bool = False  # marked when its user or device was deleted (sticky)


class RemoteAccessCredentials:
    def __init__(self, store: Store, keys: Keys, ca: CertificateAuthority) -> None:
        self._store = store
        self._base = keys.remote_access
        self._ca = ca

    def password_key(self, user: str) -> str:
        return f"{self._base}passwords/{user}"

    async def set_password(self, user: str, password: str, now: float) -> bool:
        """Store the password's NT hash; True if the user had none before."""
        key = self.password_key(user)
        existed = await self._store.get(key) is not None
        doc = {"ntHash": nt_password_hash(password).hex(), "setAt": now}
        await self._store.put(key, json.dumps(doc).encode())
        return not existed

    async def nt_hash(self, user: str) -> Secret | None:
        kv = await self._store.get(self.password_key(user))
        return Secret(bytes.fromhex(json.loads(kv.value)["ntHash"])) if kv is not None else None

    async def issue_device_certificate(
        self, user: str, device: str, identity: str, csr_pem: str, ttl_s: int, now: datetime.datetime
    ) -> IssuedCertificate:
        """Raises CsrError for a CSR that is not CN=<device>.<user> with an EC key."""
        csr = load_csr(csr_pem, f"{device}.{user}")
        lifetime = (
            min(datetime.timedelta(seconds=ttl_s), MAX_DEVICE_LIFETIME) if ttl_s else DEFAULT_DEVICE_LIFETIME
        )
        issued = self._ca.sign_device(csr, user, device, identity, lifetime, now)
        serial = format(issued.serial, "x")
        record = {"user": user, "device": device, "notAfter": issued.not_after.timestamp()}
        await self._store.put(self._certificate_key(serial), json.dumps(record).encode())
        return issued

    def _certificate_key(self, serial: str) -> str:
        return f"{self._base}certificates/{serial}"

    async def certificates(self) -> list[DeviceCertificate]:
        listing = await self._store.range(f"{self._base}certificates/")
        out = []
        for kv in listing.kvs:
            doc = json.loads(kv.value)
            out.append(
                DeviceCertificate(
                    kv.key.rpartition("/")[2],
                    str(doc["user"]),
                    str(doc["device"]),
                    float(doc["notAfter"]),
                    bool(doc.get("revoked", False)),
                )
            )
        return out

    async def revoked(self, device_exists: Callable[[str, str], bool], now: float) -> list[DeviceCertificate]:
        """Unexpired certificates whose user or device is gone: the revocation list for gateways."""
        return [c for c in await self.certificates() if is_revoked(c, device_exists, now)]

    async def revoke_ops(self, user: str, devices: Collection[str] | None = None) -> list[Put]:
        """Puts that mark the certificates of `user`'s `devices` (None: all) revoked, for the
        transaction that deletes them (AdminService.Delete and Apply)."""
        ops = []
        for c in await self.certificates():
            if c.user == user and not c.revoked and (devices is None or c.device in devices):
                record = {"user": c.user, "device": c.device, "notAfter": c.not_after, "revoked": True}
                ops.append(Put(self._certificate_key(c.serial), json.dumps(record).encode()))
        return ops

    def forget_ops(self, user: str) -> list[Delete]:
        """Drops the password with the user (AdminService.Delete's transaction); the user's
        certificates stay registered, which is what puts them on the revocation list."""
        return [Delete(self.password_key(user))]


def is_revoked(cert: DeviceCertificate, device_exists: Callable[[str, str], bool], now: float) -> bool:
    """On the revocation list: unexpired, and marked or of a user or device that is gone."""
    return cert.not_after > now and (cert.revoked or not device_exists(cert.user, cert.device))


__all__ = ["DeviceCertificate", "RemoteAccessCredentials", "is_revoked", "password_problem"]
