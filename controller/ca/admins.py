"""Admin certificates: signed by the controller CA from a CSR, registered by serial in the store.

A registration (``<prefix>admins/<serial>``) is what makes an admin certificate work on the mTLS
listener: `AdminApi` looks the caller's serial up on every call, so revoking (marking the record)
takes effect on the next call on every replica, and a certificate the CA signed without a record
(or the record was collected) is refused. Records are deleted by the leader once the certificate
has expired, revoked or not: the TLS handshake refuses an expired certificate by itself.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import asdict, dataclass, replace

from cryptography import x509

from meshsec.controller.ca.authority import CertificateAuthority, IssuedCertificate, load_csr
from meshsec.controller.store import Compare, ConflictError, Put, Store

DEFAULT_TTL_S = 30 * 24 * 3600
MAX_TTL_S = 365 * 24 * 3600


def serial_text(serial: int) -> str:
    """How serials are written everywhere (store keys, API, CLI): lower-case hex."""
    return format(serial, "x")


@dataclass(frozen=True, slots=True)
class AdminRecord:
    name: str
    serial: str
    not_before: float
    not_after: float
    issued_by: str
    revoked_at: float | None = None
    revoked_by: str = ""

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> AdminRecord:
        return cls(**json.loads(raw))

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


class AdminCertificates:
    def __init__(self, store: Store, prefix: str, ca: CertificateAuthority) -> None:
        self._store = store
        self._ca = ca
        self.prefix = f"{prefix}admins/"

    def key(self, serial: str) -> str:
        return f"{self.prefix}{serial}"

    async def issue(
        self, name: str, csr_pem: str, ttl_s: int, issued_by: str, now: datetime.datetime
    ) -> tuple[IssuedCertificate, AdminRecord]:
        """Raises `CsrError` for a CSR that is not for `name`; the caller checks `name` itself."""
        csr = load_csr(csr_pem, name)
        lifetime = datetime.timedelta(seconds=min(ttl_s or DEFAULT_TTL_S, MAX_TTL_S))
        issued = self._ca.sign_admin(csr, name, lifetime, now)
        record = AdminRecord(
            name,
            serial_text(issued.serial),
            issued.not_before.timestamp(),
            issued.not_after.timestamp(),
            issued_by,
        )
        # Registered before it is handed out: a certificate nobody could use is the worst outcome.
        await self._store.put(self.key(record.serial), record.encode())
        return issued, record

    async def lookup(self, serial: str) -> AdminRecord | None:
        kv = await self._store.get(self.key(serial))
        return AdminRecord.decode(kv.value) if kv is not None else None

    async def all(self) -> list[AdminRecord]:
        listing = await self._store.range(self.prefix)
        records = [AdminRecord.decode(kv.value) for kv in listing.kvs]
        return sorted(records, key=lambda r: (r.name, r.not_before, r.serial))

    async def revoke(self, *, name: str = "", serial: str = "", by: str, now: float) -> list[AdminRecord]:
        """Marks every unrevoked record of `name`, or the one with `serial` (revoked or not), in one
        transaction guarded by each record's revision; retried when another writer got between."""
        for _ in range(5):
            listing = await self._store.range(self.prefix)
            chosen = []
            for kv in listing.kvs:
                record = AdminRecord.decode(kv.value)
                by_serial = serial and record.serial == serial
                if by_serial or (name and record.name == name and not record.revoked):
                    chosen.append((kv, record))
            if not chosen:
                return []
            revoked = [r if r.revoked else replace(r, revoked_at=now, revoked_by=by) for _, r in chosen]
            compares = [Compare.mod_revision(kv.key, kv.mod_revision) for kv, _ in chosen]
            puts = [Put(self.key(r.serial), r.encode()) for r in revoked]
            if (await self._store.txn(compares, puts)).succeeded:
                return revoked
        raise RuntimeError("admin certificates kept changing while revoking; try again")

    async def collect_garbage(self, now: float) -> int:
        """Deletes the records of expired certificates (leader only)."""
        listing = await self._store.range(self.prefix)
        removed = 0
        for kv in listing.kvs:
            if AdminRecord.decode(kv.value).not_after < now:
                try:
                    await self._store.delete(kv.key, expect_mod_revision=kv.mod_revision)
                    removed += 1
                except ConflictError:  # revoked meanwhile: next round
                    continue
        return removed


def certificate_serial(certificate_pem: bytes) -> str:
    return serial_text(x509.load_pem_x509_certificate(certificate_pem).serial_number)
