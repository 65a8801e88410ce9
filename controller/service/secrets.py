"""Key material for tunnels: derived mesh PSKs and operator-provided external gateway PSKs.

The derivation master (32 random bytes) is created once in the store by the first replica, so
every replica derives the same per-pair key without any key ever being stored per pair.
External PSKs (``secret/<name>`` in a tunnel) are raw bytes under ``<prefix>secrets/<name>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from meshsec.common.secrets import Secret
from meshsec.controller.mesh.psk import MIN_MASTER_BYTES, derive_pair_psk
from meshsec.controller.service.keys import Keys
from meshsec.controller.store import CompactedError, Compare, EventType, Put, Store, StoreError

log = logging.getLogger(__name__)

# At least 128 bits for a PSK an operator sets; at most 64 bytes because AWS site-to-site VPN
# accepts 8-64 characters (the tightest of the cloud profiles; Azure and GCP accept longer).
MIN_EXTERNAL_PSK = 16
MAX_EXTERNAL_PSK = 64


def psk_problem(value: bytes) -> str | None:
    """Why `value` is refused as an external gateway PSK (None: acceptable). Never quotes it."""
    if len(value) < MIN_EXTERNAL_PSK:
        return f"a PSK must be at least {MIN_EXTERNAL_PSK} bytes (got {len(value)})"
    if len(value) > MAX_EXTERNAL_PSK:
        return f"a PSK must be at most {MAX_EXTERNAL_PSK} bytes, the cloud gateways' limit (got {len(value)})"
    return None


class TunnelSecrets:
    def __init__(self, store: Store, keys: Keys) -> None:
        self._store = store
        self._keys = keys
        self._master: Secret | None = None
        self._external: dict[str, Secret] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        key = self._keys.psk_master
        while self._master is None:
            kv = await self._store.get(key)
            if kv is not None:
                self._master = Secret(kv.value)
            else:
                fresh = os.urandom(MIN_MASTER_BYTES)
                if (await self._store.txn([Compare.absent(key)], [Put(key, fresh)])).succeeded:
                    self._master = Secret(fresh)
        revision = await self._load()
        self._task = asyncio.create_task(self._follow(revision + 1), name="secrets-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def reload(self) -> None:
        """Read every external PSK now (the watch follows later; this catches up at once)."""
        await self._load()

    async def _load(self) -> int:
        """Replace the external PSKs with the store's; returns the revision read."""
        listing = await self._store.range(self._keys.secrets)
        self._external = {kv.key.removeprefix(self._keys.secrets): Secret(kv.value) for kv in listing.kvs}
        return listing.revision

    def psk(self, psk_id: str) -> Secret | None:
        """The key a tunnel's AuthRef names; None for an external secret nobody has stored yet."""
        if psk_id.startswith("secret/"):
            return self._external.get(psk_id.removeprefix("secret/"))
        assert self._master is not None, "start() first"
        return derive_pair_psk(self._master, psk_id)

    async def _follow(self, start: int) -> None:
        while True:
            try:
                async with self._store.watch(self._keys.secrets, start_revision=start) as watch:
                    async for event in watch:
                        start = event.revision + 1
                        name = event.key.removeprefix(self._keys.secrets)
                        if event.type is EventType.PUT:
                            self._external[name] = Secret(event.value)
                        else:
                            self._external.pop(name, None)
            except CompactedError:
                start = await self._load() + 1
            except StoreError as exc:
                log.warning("secrets watch failed (%s); retrying", exc)
                await asyncio.sleep(1.0)
