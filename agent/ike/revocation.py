"""Certificates the controller (or an operator) revoked: the serials a gateway must refuse from
now on, whatever their validity dates say (docs/remote-access.md, Revocation).

Plain data the agent replaces as a whole when a new list arrives (`update`); the engine only
reads it while it checks a peer's certificate (exchanges/authenticate.py). IKE SAs already up
with a revoked certificate are the agent's to close (`IkeSa.peer_serial` names theirs)."""

from __future__ import annotations

from collections.abc import Iterable

from cryptography import x509


def serial_text(cert: x509.Certificate) -> str:
    """Lower-case hex without leading zeros, as ListRevokedCertificates spells serials."""
    return format(cert.serial_number, "x")


class RevocationList:
    def __init__(self, serials: Iterable[str] = ()) -> None:
        self._serials = frozenset(s.lower() for s in serials)
        self.version = 0  # counts updates that changed the list

    def update(self, serials: Iterable[str]) -> frozenset[str]:
        """Replaces the list; returns the serials that are new in it."""
        fresh = frozenset(s.lower().lstrip("0") or "0" for s in serials)
        added = fresh - self._serials
        if fresh != self._serials:
            self._serials = fresh
            self.version += 1
        return added

    def __contains__(self, serial: object) -> bool:
        return isinstance(serial, str) and serial.lower() in self._serials

    def __len__(self) -> int:
        return len(self._serials)

    def is_revoked(self, cert: x509.Certificate) -> bool:
        return serial_text(cert) in self._serials
