"""Following the controller's revocation list: the gateway replaces its RevocationList
(agent/ike/revocation.py), which the engine checks on every new client, and closes the IKE SAs
whose client certificate is now on it.

The controller pushes the list in the node's desired state (NodeConfig.revocation, `pushed`), so
a deleted user or device is off every gateway as soon as the watch delivers the change. From a
controller that does not push it (an older version during an upgrade) the list is polled
(AgentService ListRevokedCertificates) every `interval` seconds, and only by nodes that serve a
pool. A failed poll keeps the last list: fail closed for what is known to be revoked."""

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
        self.pushed = False  # the last NodeConfig carried the list: no polling
        self.serving = False  # the node serves a pool: without one it needs no list

    def replace(self, serials: Iterable[str]) -> frozenset[str]:
        """The list pushed by the controller; the serials that are new on it (already acted on)."""
        self.pushed = True
        return self._take(serials, "pushed")

    def _take(self, serials: Iterable[str], how: str) -> frozenset[str]:
        added = self.revocations.update(serials)
        if added:
            log.info("revocation list (%s): %d new serial(s): %s", how, len(added), ", ".join(sorted(added)))
            self._on_revoked(added)
        return added

    async def poll_once(self) -> frozenset[str]:
        """One poll; the serials that are new on the list (already acted on)."""
        try:
            serials = list(await self._fetch())
        except (grpc.aio.AioRpcError, OSError) as exc:
            self.failures += 1
            log.warning("revocation list not refreshed (keeping %d serials): %s", len(self.revocations), exc)
            return frozenset()
        self.polls += 1
        if self.pushed:  # a push arrived while the poll was out: it is at least as new
            return frozenset()
        return self._take(serials, "polled")

    async def run(self) -> None:
        while True:
            if self.serving and not self.pushed:
                await self.poll_once()
            await asyncio.sleep(self.interval)
