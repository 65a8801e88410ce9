"""ExternalGateway PSKs from Kubernetes Secrets, copied into the controller's secret store.

An ExternalGateway CR names the controller secret its tunnels use (``spec.auth.pskSecretRef``,
as with ``meshctl secret set``) and may add where its value lives in Kubernetes:
``spec.auth.secretKeyRef: {name, key}`` (key default ``psk``), a Secret in the operator's own
namespace (``--secret-namespace``). Only that namespace: a cluster-scoped CR naming any
namespace's Secret would let whoever may create ExternalGateways feed another application's
password to an IKE peer of their choosing. ``secretKeyRef`` never reaches the controller (its
parser refuses secret-looking fields; `conditions.manifest` drops it); the operator reads the
Secret and writes the value with ``AdminService.PutSecret``. Level-triggered: every pass
compares the value with what it last wrote (a digest kept in memory only) and writes when it
differs, so editing the Secret rotates the key within a resync, and at once where a
`secret_watch.SecretWatcher` follows the Secrets the gateways reference (`track` keeps that index:
gateway -> controller secret and key reference; the watcher gets the set of Secret names). The
value is never logged, nor put in a status, an event or an annotation.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from meshsec.common.secrets import Secret
from meshsec.controller.operator.conditions import SECRET_KEY_REF, Condition
from meshsec.controller.operator.sync import ControllerSync
from meshsec.controller.service.secrets import psk_problem

log = logging.getLogger(__name__)

DEFAULT_KEY = "psk"
SECRET_SYNCED = "SecretSynced"


@dataclass(frozen=True, slots=True)
class KeyRef:
    name: str
    key: str = DEFAULT_KEY


class SecretReader(Protocol):
    async def data(self, namespace: str, name: str) -> dict[str, bytes] | None:
        """The Secret's decoded data, None when it does not exist."""


def key_ref(spec: Mapping[str, Any]) -> KeyRef | None:
    """``spec.auth.secretKeyRef`` of an ExternalGateway CR; ValueError names what is wrong."""
    auth = spec.get("auth")
    raw = auth.get(SECRET_KEY_REF) if isinstance(auth, Mapping) else None
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str) or not raw["name"]:
        raise ValueError("spec.auth.secretKeyRef: needs name (a Secret in the operator's namespace)")
    extra = sorted(str(k) for k in raw if k not in ("name", "key"))
    if extra:
        raise ValueError(f"spec.auth.secretKeyRef: unknown field {extra[0]} (only name and key)")
    key = raw.get("key", DEFAULT_KEY)
    if not isinstance(key, str) or not key:
        raise ValueError("spec.auth.secretKeyRef.key: must be a non-empty string")
    return KeyRef(raw["name"], key)


def _digest(value: bytes) -> bytes:
    # Compared in memory only, to know whether the Secret changed since the last write.
    return hashlib.sha256(value).digest()


class PskSync:
    def __init__(self, sync: ControllerSync, reader: SecretReader | None, namespace: str) -> None:
        self.sync = sync
        self.reader = reader
        self.namespace = namespace
        self._written: dict[str, bytes] = {}  # controller secret -> digest of the value written
        # ExternalGateway -> (controller secret, where its value lives): what a Secret's change
        # re-syncs, and which Secrets are watched (names only; no Secret is cached).
        self._refs: dict[str, tuple[str, KeyRef]] = {}
        # One read-and-write per controller secret at a time: a resync that read the old value
        # must not write it after a watch event wrote the new one.
        self._locks: dict[str, asyncio.Lock] = {}
        self.on_references: Callable[[Iterable[str]], None] | None = None

    def track(self, gateway: str, target: str, ref: KeyRef) -> None:
        """ExternalGateway `gateway` takes its PSK for controller secret `target` from `ref`."""
        before = self.referenced()
        self._refs[gateway] = (target, ref)
        self._references_changed(before)

    def forget(self, gateway: str) -> None:
        """ExternalGateway `gateway` takes its PSK from no Secret (any more)."""
        before = self.referenced()
        self._refs.pop(gateway, None)
        self._references_changed(before)

    def _references_changed(self, before: frozenset[str]) -> None:
        if self.on_references is not None and self.referenced() != before:
            self.on_references(self.referenced())

    def referenced(self) -> frozenset[str]:
        return frozenset(ref.name for _, ref in self._refs.values())

    async def secret_changed(self, name: str) -> None:
        """Secret `name` changed (a watch event): re-sync every gateway taking its PSK from it.
        The gateways' SecretSynced conditions follow on their next pass; a refusal is logged
        now (the condition's message, which never quotes the value)."""
        for gateway, (target, ref) in sorted(self._refs.items()):
            if ref.name != name:
                continue
            condition = await self.sync_one(target, ref)
            if condition.status != "True":
                log.warning("ExternalGateway %s: %s", gateway, condition.message)

    async def sync_one(self, target: str, ref: KeyRef) -> Condition:
        """Copies the referenced value into controller secret `target` if it changed."""
        async with self._locks.setdefault(target, asyncio.Lock()):
            return await self._sync_one(target, ref)

    async def _sync_one(self, target: str, ref: KeyRef) -> Condition:
        where = f"Secret {self.namespace}/{ref.name} key {ref.key}"
        if self.reader is None or not self.namespace:
            return Condition(
                SECRET_SYNCED, "False", "NoSecretNamespace", "the operator runs without --secret-namespace"
            )
        data = await self.reader.data(self.namespace, ref.name)
        if data is None:
            return Condition(SECRET_SYNCED, "False", "SecretNotFound", f"{where}: no such Secret")
        if ref.key not in data:
            return Condition(SECRET_SYNCED, "False", "KeyNotFound", f"{where}: the Secret has no such key")
        value = data[ref.key]
        problem = psk_problem(value)
        if problem is not None:  # never quotes the value
            return Condition(SECRET_SYNCED, "False", "InvalidPsk", f"{where}: {problem}")
        digest = _digest(value)
        done = f"{where} is the controller's secret {target}"
        if hmac.compare_digest(self._written.get(target, b""), digest):
            return Condition(SECRET_SYNCED, "True", "Synced", done)
        try:
            await self.sync.put_secret(target, Secret(value))
        except grpc.aio.AioRpcError as exc:
            return Condition(
                SECRET_SYNCED, "False", "ControllerRefused", f"{where}: {exc.code().name}: {exc.details()}"
            )
        rotated = target in self._written
        self._written[target] = digest
        log.info("%s written to the controller's secret %s%s", where, target, " (rotated)" if rotated else "")
        return Condition(SECRET_SYNCED, "True", "Synced", done)

    async def release(self, target: str) -> None:
        """After an ExternalGateway went: delete the controller secret it used if nothing else
        uses it (the controller knows which gateways reference it)."""
        users = await self.sync.secret_users(target)
        if users is None or users:
            return
        await self.sync.delete_secret(target)
        self._written.pop(target, None)
        log.info("controller secret %s deleted: no ExternalGateway uses it any more", target)
