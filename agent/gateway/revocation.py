"""Following the controller's revocation list (AgentService ListRevokedCertificates): every
`interval` seconds the gateway replaces its RevocationList (agent/ike/revocation.py), which the
engine checks on every new client, and closes the IKE SAs whose client certificate is now on it,
so a deleted user or device is off every gateway within about `interval` seconds.

The list is polled: the controller offers no push of it yet (a field in the desired-state watch
would be one). A failed poll keeps the last list: fail closed for what is known to be revoked."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

import grpc

from meshsec.agent.ike.revocation import RevocationList

log = logging.getLogger(__name__)
POLL_INTERVAL = 2.0


class RevocationFollower:
    def __init__(
        self,
        fetch: Callable[[], Awaitable[Iterable[str]]],
        revocations: RevocationList,
        on_revoked: Callable[[frozenset[str]], None],
        *,
        interval: float = POLL_INTERVAL,
    ) -> None:
        self._fetch = fetch
        self.revocations = revocations
        self._on_revoked = on_revoked
        self.interval = interval
        self.polls = 0
        self.failures = 0

    async def poll_once(self) -> frozenset[str]:
        """One poll; the serials that are new on the list (already acted on)."""
        try:
            serials = list(await self._fetch())
        except (grpc.aio.AioRpcError, OSError) as exc:
            self.failures += 1
            log.warning("revocation list not refreshed (keeping %d serials): %s", len(self.revocations), exc)
            return frozenset()
        self.polls += 1
        added = self.revocations.update(serials)
        if added:
            log.info("revocation list: %d new serial(s): %s", len(added), ", ".join(sorted(added)))
            self._on_revoked(added)
        return added

    async def run(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(self.interval)
