"""The agent DaemonSet's bootstrap Secret, kept current by the operator (opt-in).

The Secret holds ``token`` (a multi-use bootstrap token bound to one Site, not to a node name)
and ``ca.pem`` (the controller CA the agent verifies the bootstrap listener with). Tokens live at
most a day, so the keeper issues a new one when a third of the old one's lifetime is left (or
when the site or the CA changed, or the Secret is gone), writes it, and only then revokes the
old one: an agent that read the old token a moment ago may fail one enrollment and retry.
The token value is never logged; the Secret's annotations carry its id and expiry.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc

from meshsec.common.deadline import set_within
from meshsec.common.pki import ca_sha256
from meshsec.controller.operator.sync import ControllerSync

log = logging.getLogger(__name__)

TOKEN_KEY = "token"
CA_KEY = "ca.pem"
TOKEN_ID = "meshsec.io/token-id"
EXPIRES_AT = "meshsec.io/token-expires-at"
SITE = "meshsec.io/site"
CA_SHA256 = "meshsec.io/ca-sha256"
RETRY_SECONDS = 10.0
MAX_SLEEP_SECONDS = 300.0


@dataclass(frozen=True, slots=True)
class BootstrapConfig:
    namespace: str
    secret_name: str
    site: str
    ca_file: Path
    uses: int = 1000
    ttl_seconds: int = 86400
    node_labels: Mapping[str, str] = field(default_factory=dict)


class SecretApi(Protocol):
    async def annotations(self, namespace: str, name: str) -> dict[str, str] | None:
        """None when the Secret does not exist."""

    async def write(
        self, namespace: str, name: str, data: Mapping[str, bytes], annotations: Mapping[str, str]
    ) -> None:
        """Create the Secret, or replace these keys and annotations of an existing one."""


def renewal_reason(
    annotations: Mapping[str, str] | None, site: str, ca_sha256: str, now: float, ttl_seconds: int
) -> str | None:
    """Why the Secret needs a new token, or None when the one it holds is good for a while."""
    if annotations is None:
        return "no Secret yet"
    if annotations.get(SITE) != site:
        return f"site changed to {site}"
    if annotations.get(CA_SHA256) != ca_sha256:
        return "the controller CA changed"
    try:
        expires_at = float(annotations.get(EXPIRES_AT, ""))
    except ValueError:
        return "no readable expiry"
    if expires_at - now < ttl_seconds / 3:
        return "the token expires soon"
    return None


class BootstrapKeeper:
    def __init__(
        self,
        sync: ControllerSync,
        secrets: SecretApi,
        config: BootstrapConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sync = sync
        self.secrets = secrets
        self.config = config
        self.clock = clock

    async def refresh(self) -> float:
        """One pass; returns the seconds until the next one."""
        c = self.config
        try:
            ca_pem = c.ca_file.read_bytes()
        except OSError as exc:
            log.warning("bootstrap Secret: cannot read the controller CA %s: %s", c.ca_file, exc)
            return RETRY_SECONDS
        ca_hash = ca_sha256(ca_pem)
        current = await self.secrets.annotations(c.namespace, c.secret_name)
        now = self.clock()
        reason = renewal_reason(current, c.site, ca_hash, now, c.ttl_seconds)
        if reason is None:
            assert current is not None
            return self._sleep(float(current[EXPIRES_AT]), now)
        try:
            issued = await self.sync.create_token(
                c.site, uses=c.uses, ttl_seconds=c.ttl_seconds, node_labels=c.node_labels
            )
        except grpc.aio.AioRpcError as exc:
            log.warning(
                "bootstrap Secret: no token for site %s: %s", c.site, exc.details() or exc.code().name
            )
            return RETRY_SECONDS
        if issued.ca_sha256 != ca_hash:
            # ca.pem on disk is not the CA the controller signs with: never hand agents a wrong pin.
            log.warning("bootstrap Secret: %s does not match the controller CA; not written", c.ca_file)
            await self.sync.revoke_token(issued.token_id)
            return RETRY_SECONDS
        await self.secrets.write(
            c.namespace,
            c.secret_name,
            {TOKEN_KEY: issued.token.reveal(), CA_KEY: ca_pem},
            {
                TOKEN_ID: issued.token_id,
                EXPIRES_AT: str(issued.expires_at),
                SITE: c.site,
                CA_SHA256: ca_hash,
            },
        )
        log.info(
            "bootstrap Secret %s/%s: token %s for site %s (%s)",
            c.namespace,
            c.secret_name,
            issued.token_id,
            c.site,
            reason,
        )
        old = (current or {}).get(TOKEN_ID)
        if old and old != issued.token_id:
            await self.sync.revoke_token(old)
        return self._sleep(float(issued.expires_at), now)

    def _sleep(self, expires_at: float, now: float) -> float:
        renew_at = expires_at - self.config.ttl_seconds / 3
        return min(max(renew_at - now, 1.0), MAX_SLEEP_SECONDS)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                delay = await self.refresh()
            except Exception:  # the Kubernetes API or the controller away: keep trying
                log.exception("bootstrap Secret: refresh failed")
                delay = RETRY_SECONDS
            await set_within(stop, delay)


class KubernetesSecrets:
    """SecretApi over the official client (blocking, so each call runs in a thread)."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self._api = client.CoreV1Api(api_client)

    async def _read(self, namespace: str, name: str) -> Any:
        """The V1Secret, None when it does not exist."""
        from kubernetes.client.exceptions import ApiException

        try:
            return await asyncio.to_thread(self._api.read_namespaced_secret, name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def annotations(self, namespace: str, name: str) -> dict[str, str] | None:
        secret = await self._read(namespace, name)
        if secret is None:
            return None
        meta = secret.metadata
        return dict((meta.annotations if meta is not None else None) or {})

    async def data(self, namespace: str, name: str) -> dict[str, bytes] | None:
        """The Secret's data, decoded (`psk.SecretReader`); None when it does not exist."""
        secret = await self._read(namespace, name)
        if secret is None:
            return None
        out: dict[str, bytes] = {}
        for key, value in (secret.data or {}).items():
            with contextlib.suppress(ValueError, TypeError):  # not base64: the API server never sends it
                out[str(key)] = base64.b64decode(value, validate=True)
        return out

    async def write(
        self, namespace: str, name: str, data: Mapping[str, bytes], annotations: Mapping[str, str]
    ) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        encoded: dict[str, bytes | str] = {k: base64.b64encode(v).decode() for k, v in data.items()}
        body = client.V1Secret(
            metadata=client.V1ObjectMeta(name=name, annotations=dict(annotations)),
            type="Opaque",
            data=encoded,
        )
        try:
            await asyncio.to_thread(self._api.create_namespaced_secret, namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            await asyncio.to_thread(
                self._api.patch_namespaced_secret,
                name,
                namespace,
                {"metadata": {"annotations": dict(annotations)}, "data": encoded},
                _content_type="application/merge-patch+json",
            )
