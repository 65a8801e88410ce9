"""Bootstrap tokens: ``<token_id>.<secret>``, shown once; the store keeps only SHA-256 of the secret.

A token is bound to a site (and optionally a node name), allows a bounded number of enrollments
(one by default) and expires. Using one is a compare-and-swap on its record, done in the same
store transaction that writes the enrolled Node, so two replicas can never spend the same use.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import asdict, dataclass, field, replace

from meshsec.common.secrets import Secret
from meshsec.controller.store import ConflictError, KeyValue, Put, Store

DEFAULT_TTL_S = 3600
MAX_TTL_S = 24 * 3600


class TokenError(Exception):
    """The token cannot enroll this node. `code` is "unauthenticated" or "permission_denied"."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class TokenRecord:
    token_id: str
    secret_sha256: str
    site: str
    node_name: str
    expires_at: float
    uses: int
    uses_left: int
    allow_reenroll: bool
    labels: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> TokenRecord:
        return cls(**json.loads(raw))

    def spent(self) -> TokenRecord:
        return replace(self, uses_left=self.uses_left - 1)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class BootstrapTokens:
    def __init__(self, store: Store, prefix: str, max_ttl_s: int = MAX_TTL_S) -> None:
        self._store = store
        self.prefix = f"{prefix}tokens/"
        self._max_ttl_s = max_ttl_s

    def key(self, token_id: str) -> str:
        return f"{self.prefix}{token_id}"

    async def create(
        self,
        *,
        site: str,
        node_name: str,
        ttl_s: int,
        uses: int,
        labels: dict[str, str],
        allow_reenroll: bool,
        now: float,
    ) -> tuple[Secret, TokenRecord]:
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        ttl = min(ttl_s or DEFAULT_TTL_S, self._max_ttl_s)
        record = TokenRecord(
            token_id=token_id,
            secret_sha256=_digest(secret),
            site=site,
            node_name=node_name,
            expires_at=now + ttl,
            uses=uses or 1,
            uses_left=uses or 1,
            allow_reenroll=allow_reenroll,
            labels=dict(labels),
        )
        await self._store.put(self.key(token_id), record.encode(), expect_mod_revision=0)
        return Secret(f"{token_id}.{secret}"), record

    async def check(self, token: Secret, node_name: str, now: float) -> tuple[TokenRecord, KeyValue]:
        """The record and its store entry if `token` may enroll `node_name` now; else TokenError.

        The caller spends a use by writing `record.spent()` guarded by the entry's mod_revision.
        """
        token_id, dot, secret = token.reveal().decode(errors="replace").partition(".")
        if not dot or not token_id.isalnum():
            raise TokenError("unauthenticated", "malformed bootstrap token")
        kv = await self._store.get(self.key(token_id))
        if kv is None:
            raise TokenError("unauthenticated", "unknown bootstrap token")
        record = TokenRecord.decode(kv.value)
        if not hmac.compare_digest(record.secret_sha256, _digest(secret)):
            raise TokenError("unauthenticated", "unknown bootstrap token")
        if now >= record.expires_at:
            raise TokenError("unauthenticated", f"bootstrap token {token_id} has expired")
        if record.uses_left <= 0:
            raise TokenError("unauthenticated", f"bootstrap token {token_id} is used up")
        if record.node_name and record.node_name != node_name:
            raise TokenError("permission_denied", f"bootstrap token {token_id} is bound to another node name")
        return record, kv

    def spend_op(self, record: TokenRecord) -> Put:
        return Put(self.key(record.token_id), record.spent().encode())

    async def revoke(self, token_id: str) -> bool:
        return await self._store.delete(self.key(token_id))

    async def collect_garbage(self, now: float) -> int:
        """Deletes expired and used-up tokens (leader-only work); returns how many."""
        removed = 0
        for kv in (await self._store.range(self.prefix)).kvs:
            record = TokenRecord.decode(kv.value)
            if record.expires_at <= now or record.uses_left <= 0:
                try:
                    await self._store.delete(kv.key, expect_mod_revision=kv.mod_revision)
                    removed += 1
                except ConflictError:  # spent by an enrollment meanwhile: next round
                    continue
        return removed
