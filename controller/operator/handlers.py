"""kopf handlers: every meshsec custom resource is kept applied in the controller.

Level-triggered: create, update, resume and a periodic resync all run the same `reconcile`,
which sends the whole manifest (Apply is declarative; an unchanged resource writes nothing), so
a missed event, a restarted operator or a controller that lost its store converge on the next
pass. The Applied condition says what happened, naming every bad field; Ready and Degraded
what the agents reported about the resource's tunnels (`conditions`). Deletion goes through a
finalizer: the custom resource stays until the controller has let go of the resource (a Site
that Nodes still use is refused and retried), and only a resource this operator wrote last is
deleted, so a same-named resource `meshctl` owns survives the deletion of a rejected CR.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import grpc
import kopf

from meshsec.controller.operator.conditions import (
    APPLIED,
    READY,
    Condition,
    field_problems,
    join_problems,
    manifest,
    node_phase,
    tunnel_conditions,
    with_condition,
)
from meshsec.controller.operator.crds import GROUP, NAMES, VERSION
from meshsec.controller.operator.nodes import NodeSweeper
from meshsec.controller.operator.psk import SECRET_SYNCED, PskSync, key_ref
from meshsec.controller.operator.sync import FIELD_MANAGER, ControllerSync, Verdict
from meshsec.controller.resources import Kind, ValidationError, parse_resource
from meshsec.controller.resources.model import LAST_APPLIED_BY

FINALIZER = "meshsec.io/controller-sync"
ANNOTATION_PREFIX = "operator.meshsec.io"


@dataclass(frozen=True, slots=True)
class OperatorConfig:
    resync_seconds: float = 30.0
    retry_seconds: float = 10.0


def configure(settings: kopf.OperatorSettings) -> None:
    """Our finalizer and annotation names; progress kept in annotations because the CRDs'
    structural status schema would prune kopf's own status fields."""
    settings.persistence.finalizer = FINALIZER
    # A deletion waits for the object's resync timer to exit; kopf's default is to look again
    # only after 60 s, which would hold every deletion that met a running resync that long.
    settings.background.cancellation_polling = 2.0
    settings.background.instant_exit_timeout = 0.1
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )


class _Gate:
    """Per object (by uid): one reconcile or delete at a time, and no apply once deletion began.

    kopf runs a timer's pass and the delete handler concurrently, so without this a resync that
    read the object just before its deletion could re-apply it after the delete removed it.
    """

    def __init__(self, remember: int = 10_000) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._deleting: OrderedDict[str, None] = OrderedDict()
        self._remember = remember

    def lock(self, uid: str) -> asyncio.Lock:
        return self._locks.setdefault(uid, asyncio.Lock())

    def deleting(self, uid: str) -> bool:
        return uid in self._deleting

    def mark_deleting(self, uid: str) -> None:
        self._deleting[uid] = None
        while len(self._deleting) > self._remember:
            old, _ = self._deleting.popitem(last=False)
            self._locks.pop(old, None)


class Reconciler:
    def __init__(
        self, kind: Kind, sync: ControllerSync, config: OperatorConfig, psk: PskSync | None = None
    ) -> None:
        self.kind = kind
        self.sync = sync
        self.config = config
        # ExternalGateways only: PSKs from Kubernetes Secrets (None: secretKeyRef is refused).
        self.psk = psk
        self._gate = _Gate()

    async def reconcile(self, body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, **_: Any) -> None:
        uid = str(body.metadata.uid)
        async with self._gate.lock(uid):
            if body.metadata.get("deletionTimestamp") or self._gate.deleting(uid):
                return
            await self._reconcile(body, patch, logger)

    async def _reconcile(self, body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger) -> None:
        doc = manifest(self.kind, body)
        name = str(doc["metadata"]["name"])
        try:
            parse_resource(doc)
        except ValidationError as exc:
            # Not sent: the controller would refuse it the same way, and the status says why now.
            problems = field_problems(exc.errors, self.kind, name)
            self._applied(body, patch, "False", "ValidationFailed", join_problems(problems))
            logger.warning("%s/%s invalid: %s", self.kind.value, name, join_problems(problems))
            return
        if self.kind is Kind.EXTERNAL_GATEWAY and not await self._sync_psk(body, patch, doc):
            return
        outcome = await self.sync.apply(doc)
        if outcome.verdict is Verdict.DONE:
            self._applied(body, patch, "True", "Applied", f"in the controller ({outcome.action.lower()})")
            await self._observe(body, patch, logger)
        elif outcome.verdict is Verdict.UNAVAILABLE:
            self._applied(body, patch, "Unknown", "ControllerUnavailable", outcome.message)
            raise kopf.TemporaryError(outcome.message, delay=self.config.retry_seconds)
        else:
            # Often fixed by another resource (a Node before its Site); the resync tries again.
            self._applied(body, patch, "False", "ValidationFailed", join_problems(outcome.problems))
            logger.warning("%s/%s refused: %s", self.kind.value, name, join_problems(outcome.problems))

    async def _sync_psk(self, body: kopf.Body, patch: kopf.Patch, doc: dict[str, Any]) -> bool:
        """The PSK from the Secret `spec.auth.secretKeyRef` names into the controller secret the
        gateway uses, before the gateway is applied; False: the reference itself is invalid."""
        gateway = str(body.metadata.name)
        try:
            ref = key_ref(body.spec)
        except ValueError as exc:
            if self.psk is not None:
                self.psk.forget(gateway)
            self._applied(body, patch, "False", "ValidationFailed", str(exc))
            return False
        if ref is None:
            if self.psk is not None:
                self.psk.forget(gateway)
            return True
        target = str(doc["spec"]["auth"]["pskSecretRef"])
        if self.psk is not None:  # before the read: a change from now on re-syncs it
            self.psk.track(gateway, target, ref)
        if self.psk is None:
            why = "the operator runs without --secret-namespace"
            condition = Condition(SECRET_SYNCED, "False", "NoSecretNamespace", why)
        else:
            try:
                condition = await self.psk.sync_one(target, ref)
            except Exception as exc:  # the Kubernetes API away: say so, keep the last value
                condition = Condition(SECRET_SYNCED, "Unknown", "SecretUnreadable", type(exc).__name__)
        self._condition(body, patch, condition)
        return True

    async def resync(self, body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, **_: Any) -> None:
        await self.reconcile(body=body, patch=patch, logger=logger)

    async def _observe(self, body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger) -> None:
        """Tunnel counts, Ready and Degraded (and a Node's phase) from the controller's tunnel
        status; when that cannot be read, Ready is Unknown rather than a stale True."""
        try:
            counts = await self.sync.tunnels(self.kind, str(body.metadata.name))
            phase = await self._node_status(body, patch) if self.kind is Kind.NODE else ""
        except grpc.aio.AioRpcError as exc:
            logger.warning(
                "%s/%s: no tunnel status: %s", self.kind.value, body.metadata.name, exc.code().name
            )
            message = f"no tunnel status from the controller: {exc.code().name}"
            self._condition(body, patch, Condition(READY, "Unknown", "TunnelStatusUnavailable", message))
            return
        tunnels = {"desired": counts.desired, "established": counts.established, "failed": counts.failed}
        if body.status.get("tunnels") != tunnels:
            patch.status["tunnels"] = tunnels
        for condition in tunnel_conditions(counts.desired, counts.established, counts.failed, phase):
            self._condition(body, patch, condition)

    async def _node_status(self, body: kopf.Body, patch: kopf.Patch) -> str:
        """The Node's phase (also written to status.phase); Pending for a node not in the
        controller's topology yet."""
        liveness = await self.sync.node_liveness(str(body.metadata.name))
        if liveness is None:
            return "Pending"
        wanted = {"phase": node_phase(liveness.online, liveness.last_seen)}
        if liveness.last_seen:
            wanted["lastSeen"] = liveness.last_seen
        for key, value in wanted.items():
            if body.status.get(key) != value:
                patch.status[key] = value
        return wanted["phase"]

    async def delete(self, body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, **_: Any) -> None:
        uid = str(body.metadata.uid)
        async with self._gate.lock(uid):
            self._gate.mark_deleting(uid)
            if self.psk is not None:  # going: a change of its Secret re-syncs nothing for it now
                self.psk.forget(str(body.metadata.name))
            await self._delete(body, patch, logger)

    async def _delete(self, body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger) -> None:
        name = str(body.metadata.name)
        try:
            stored = await self.sync.get(self.kind, name)
        except grpc.aio.AioRpcError as exc:
            self._applied(body, patch, "Unknown", "ControllerUnavailable", exc.code().name)
            raise kopf.TemporaryError(exc.code().name, delay=self.config.retry_seconds) from exc
        if stored is None:
            return
        writer = stored.metadata.annotations.get(LAST_APPLIED_BY, "")
        if writer != FIELD_MANAGER:
            logger.info("%s/%s was last applied by %r; left in the controller", self.kind.value, name, writer)
            return
        # Guarded by the version read: if meshctl wrote it meanwhile the controller answers
        # ABORTED, and the retry finds meshctl the last writer and leaves it.
        outcome = await self.sync.delete(self.kind, name, resource_version=stored.metadata.resource_version)
        if outcome.verdict is Verdict.DONE:
            await self._release_psk(body, logger)
            return
        reason = "ControllerUnavailable" if outcome.verdict is Verdict.UNAVAILABLE else "DeleteBlocked"
        self._applied(body, patch, "False", reason, outcome.message)
        raise kopf.TemporaryError(outcome.message, delay=self.config.retry_seconds)

    async def _release_psk(self, body: kopf.Body, logger: kopf.Logger) -> None:
        if self.kind is not Kind.EXTERNAL_GATEWAY or self.psk is None:
            return
        with contextlib.suppress(ValueError):
            if key_ref(body.spec) is None:
                return
            target = str(body.spec.get("auth", {}).get("pskSecretRef", ""))
            try:
                await self.psk.release(target)
            except grpc.aio.AioRpcError as exc:  # left behind; `meshctl secret delete` removes it
                logger.warning("controller secret %s not deleted: %s", target, exc.code().name)

    def _applied(self, body: kopf.Body, patch: kopf.Patch, status: str, reason: str, message: str) -> None:
        self._condition(body, patch, Condition(APPLIED, status, reason, message))
        if status != "True":  # Ready says the same, so `kubectl get` (the Ready column) shows it
            self._condition(body, patch, Condition(READY, status, reason, message))

    def _condition(self, body: kopf.Body, patch: kopf.Patch, condition: Condition) -> None:
        generation = int(body.metadata.get("generation") or 0)
        now = datetime.datetime.now(datetime.UTC)
        current = patch.get("status", {}).get("conditions") or body.status.get("conditions")
        conditions = with_condition(current, condition, generation, now)
        if conditions != body.status.get("conditions"):
            patch.status["conditions"] = conditions
        if body.status.get("observedGeneration") != generation:
            patch.status["observedGeneration"] = generation


def register_nodes(registry: kopf.OperatorRegistry, sweeper: NodeSweeper) -> None:
    """Any event on a core Node wakes the sweeper (which lists them all: level-triggered)."""

    def node_event(**_: Any) -> None:
        sweeper.poke()

    kopf.on.event("", "v1", "nodes", registry=registry, id="core-node-event")(node_event)


def register(
    registry: kopf.OperatorRegistry, sync: ControllerSync, config: OperatorConfig, psk: PskSync | None = None
) -> None:
    for kind in Kind:
        plural = NAMES[kind].plural
        reconciler = Reconciler(kind, sync, config, psk if kind is Kind.EXTERNAL_GATEWAY else None)
        prefix = kind.value.lower()
        kopf.on.resume(GROUP, VERSION, plural, registry=registry, id=f"{prefix}-resume")(reconciler.reconcile)
        kopf.on.create(GROUP, VERSION, plural, registry=registry, id=f"{prefix}-create")(reconciler.reconcile)
        kopf.on.update(GROUP, VERSION, plural, registry=registry, id=f"{prefix}-update")(reconciler.reconcile)
        kopf.on.delete(GROUP, VERSION, plural, registry=registry, id=f"{prefix}-delete")(reconciler.delete)
        kopf.timer(
            GROUP,
            VERSION,
            plural,
            registry=registry,
            id=f"{prefix}-resync",
            interval=config.resync_seconds,
            initial_delay=min(config.resync_seconds, 5.0),
        )(reconciler.resync)
