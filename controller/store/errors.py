"""Errors every store raises, whatever its backend."""

from __future__ import annotations


class StoreError(Exception):
    """Base class for store failures."""


class ConflictError(StoreError):
    """A compare-and-swap precondition did not hold: someone else wrote the key first."""

    def __init__(self, key: str, expected_mod_revision: int) -> None:
        super().__init__(
            f"conflict on {key!r}: expected mod_revision {expected_mod_revision}, the key has changed"
        )
        self.key = key
        self.expected_mod_revision = expected_mod_revision


class CompactedError(StoreError):
    """The requested revision is older than the store's history; the caller must re-list and re-watch."""

    def __init__(self, requested_revision: int, compact_revision: int) -> None:
        super().__init__(
            f"revision {requested_revision} has been compacted (the oldest still available is"
            f" {compact_revision}); re-list and watch again"
        )
        self.requested_revision = requested_revision
        self.compact_revision = compact_revision


class LeaseNotFoundError(StoreError):
    """The lease expired or was revoked."""

    def __init__(self, lease_id: int) -> None:
        super().__init__(f"lease {lease_id:#x} not found (expired or revoked)")
        self.lease_id = lease_id


class StoreUnavailableError(StoreError):
    """The backend cannot be reached (etcd down, store closed)."""


class StoreCorruptError(StoreError):
    """The embedded store's file is damaged somewhere other than a torn final record."""

    def __init__(self, path: str, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}")
        self.path = path
        self.line = line
