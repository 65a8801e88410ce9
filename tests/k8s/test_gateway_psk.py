"""ExternalGateway PSKs from Kubernetes Secrets (kmock's Secrets API through the official client)
into a real controller's secret store: synced before the gateway is applied, rewritten only when
the Secret changed (rotation), refused by name when missing, keyless or too short, never in a
status or a log line, and the controller secret deleted with the last gateway using it. With the
operator running (kopf against kmock), a change of the referenced Secret rotates the key through
the Secret watch, long before a resync; a change of another Secret is neither read nor watched."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from meshsec.controller.operator.bootstrap import KubernetesSecrets
from meshsec.controller.operator.handlers import OperatorConfig, Reconciler
from meshsec.controller.operator.psk import PskSync
from meshsec.controller.operator.sync import ControllerSync
from meshsec.controller.resources import Kind
from meshsec.controller.server import Controller
from tests.controller.ctl_harness import core_of, running_controller
from tests.controller.test_mesh_support import external, site
from tests.k8s.test_operator_kmock import eventually, operator_running

kopf = pytest.importorskip("kopf", reason="kopf not installed (k8s extra)")
kmock_lib = pytest.importorskip("kmock", reason="kmock not installed (k8s test dependency)")
kubernetes = pytest.importorskip("kubernetes")

NAMESPACE = "meshsec-system"
PSK_1 = b"k8s-first-psk-0123456789"
PSK_2 = b"k8s-second-psk-abcdefghij"
PSK_3 = b"k8s-third-psk-klmnopqrstu"
UNRELATED = b"another-apps-password-0123"
LOG = logging.getLogger("test.gateway-psk")


@pytest.fixture
async def ctl(tmp_path: Path) -> AsyncIterator[Controller]:
    async with running_controller(tmp_path, site("psk-dc", ["198.19.90.0/24"])) as controller:
        yield controller


class Secrets:
    def __init__(self, kmock: Any) -> None:
        self.kmock = kmock
        kmock.resources["v1/secrets"] = kmock_lib.ResourceInfo(kind="Secret", namespaced=True)
        kmock.resources["v1/namespaces"] = kmock_lib.ResourceInfo(kind="Namespace", namespaced=False)
        configuration = kubernetes.client.Configuration()
        configuration.host = str(kmock.url).rstrip("/")
        self.client = KubernetesSecrets(kubernetes.client.ApiClient(configuration))

    async def put(self, name: str, data: dict[str, bytes]) -> None:
        encoded = {k: base64.b64encode(v).decode() for k, v in data.items()}
        path = f"/api/v1/namespaces/{NAMESPACE}/secrets"
        # kmock merges a PATCH and has no PUT: a replacement of the data is delete + create.
        await self.kmock.delete(f"{path}/{name}")
        # metadata.namespace as an API server fills it in: kmock keeps the body as posted and
        # matches a namespaced watch's events by the namespace in the object.
        meta = {"name": name, "namespace": NAMESPACE}
        doc = {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "data": encoded}
        response = await self.kmock.post(path, json=doc)
        assert response.status < 300, await response.text()

    async def patch(self, name: str, data: dict[str, bytes]) -> None:
        """An edit of the Secret's data (kubectl edit, a GitOps sync): a MODIFIED event."""
        encoded = {k: base64.b64encode(v).decode() for k, v in data.items()}
        response = await self.kmock.patch(
            f"/api/v1/namespaces/{NAMESPACE}/secrets/{name}",
            json={"data": encoded},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert response.status < 300, await response.text()


def _gateway(key_ref: dict[str, Any] | None) -> Any:
    doc = external("aws-vpn", ["psk-dc"], ["198.19.201.0/24"])
    if key_ref is not None:
        doc["spec"]["auth"]["secretKeyRef"] = key_ref
    doc["metadata"].update(uid="gw-uid-1", generation=1)
    return kopf.Body(doc)


async def _pass(reconciler: Reconciler, body: Any) -> dict[str, dict[str, Any]]:
    patch = kopf.Patch()
    await reconciler.reconcile(body=body, patch=patch, logger=LOG)
    conditions = patch.get("status", {}).get("conditions") or []
    assert all(PSK_1.decode() not in str(c) and PSK_2.decode() not in str(c) for c in conditions)
    return {c["type"]: c for c in conditions}


async def _stored(ctl: Controller) -> bytes | None:
    core = core_of(ctl)
    kv = await core.state.store.get(f"{core.state.keys.secrets}aws-vpn-psk")
    return kv.value if kv is not None else None


async def test_psk_from_a_secret_is_synced_rotated_and_released(
    kmock: Any,
    ctl: Controller,
    sync: ControllerSync,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    # Code run earlier in the session (kopf, the CLIs' log set-up) may leave the operator's
    # loggers or their ancestors disabled, above INFO or not propagating to the root handler
    # caplog reads: this test reads their lines, so it hands them caplog's handler directly.
    operator_log = logging.getLogger("meshsec.controller.operator")
    for name in [n for n in logging.root.manager.loggerDict if n.startswith(operator_log.name)]:
        monkeypatch.setattr(logging.getLogger(name), "disabled", False)
    monkeypatch.setattr(operator_log, "handlers", [*operator_log.handlers, caplog.handler])
    monkeypatch.setattr(operator_log, "level", logging.DEBUG)
    secrets = Secrets(kmock)
    reconciler = Reconciler(
        Kind.EXTERNAL_GATEWAY, sync, OperatorConfig(), PskSync(sync, secrets.client, NAMESPACE)
    )
    body = _gateway({"name": "aws-vpn"})

    missing = await _pass(reconciler, body)
    assert (missing["SecretSynced"]["status"], missing["SecretSynced"]["reason"]) == (
        "False",
        "SecretNotFound",
    )
    assert missing["SecretSynced"]["message"] == "Secret meshsec-system/aws-vpn key psk: no such Secret"
    assert missing["Applied"]["status"] == "True"  # the gateway itself is applied all the same
    stored = await sync.get(Kind.EXTERNAL_GATEWAY, "aws-vpn")
    assert stored is not None and "secretKeyRef" not in stored.spec["auth"]  # Kubernetes-only
    assert await _stored(ctl) is None

    await secrets.put("aws-vpn", {"other": PSK_1})
    keyless = await _pass(reconciler, body)
    assert keyless["SecretSynced"]["reason"] == "KeyNotFound"
    await secrets.put("aws-vpn", {"psk": b"short"})
    short = await _pass(reconciler, body)
    assert short["SecretSynced"]["reason"] == "InvalidPsk"
    assert "short" not in short["SecretSynced"]["message"]  # the value is never quoted
    assert await _stored(ctl) is None

    await secrets.put("aws-vpn", {"psk": PSK_1})
    synced = await _pass(reconciler, body)
    assert (synced["SecretSynced"]["status"], synced["SecretSynced"]["reason"]) == ("True", "Synced")
    assert await _stored(ctl) == PSK_1
    revision = (
        await core_of(ctl).state.store.get(f"{core_of(ctl).state.keys.secrets}aws-vpn-psk")
    ).mod_revision  # type: ignore[union-attr]
    await _pass(reconciler, body)  # unchanged Secret: nothing written
    again = await core_of(ctl).state.store.get(f"{core_of(ctl).state.keys.secrets}aws-vpn-psk")
    assert again is not None and again.mod_revision == revision

    await secrets.put("aws-vpn", {"psk": PSK_2})  # rotation
    await _pass(reconciler, body)
    assert await _stored(ctl) == PSK_2
    assert await sync.secret_users("aws-vpn-psk") == ["aws-vpn"]

    await reconciler.delete(body=body, patch=kopf.Patch(), logger=LOG)
    assert await sync.get(Kind.EXTERNAL_GATEWAY, "aws-vpn") is None
    assert await sync.secret_users("aws-vpn-psk") is None  # released with its last user
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "aws-vpn-psk" in logged  # the lines are there, their values are not
    assert PSK_1.decode() not in logged and PSK_2.decode() not in logged


async def test_secret_key_ref_needs_a_namespace_and_a_name(sync: ControllerSync) -> None:
    without = Reconciler(Kind.EXTERNAL_GATEWAY, sync, OperatorConfig())
    conditions = await _pass(without, _gateway({"name": "aws-vpn", "key": "psk"}))
    assert conditions["SecretSynced"]["reason"] == "NoSecretNamespace"
    bad = await _pass(without, _gateway({"key": "psk", "namespace": "kube-system"}))
    assert (bad["Applied"]["status"], bad["Applied"]["reason"]) == ("False", "ValidationFailed")
    assert "spec.auth.secretKeyRef" in bad["Applied"]["message"]


def _operator_lines(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """caplog sees the operator's log lines (see the first test: earlier code may have disabled them)."""
    caplog.set_level(logging.DEBUG)
    operator_log = logging.getLogger("meshsec.controller.operator")
    for name in [n for n in logging.root.manager.loggerDict if n.startswith(operator_log.name)]:
        monkeypatch.setattr(logging.getLogger(name), "disabled", False)
    monkeypatch.setattr(operator_log, "handlers", [*operator_log.handlers, caplog.handler])
    monkeypatch.setattr(operator_log, "level", logging.DEBUG)


async def test_a_secret_edit_rotates_the_psk_through_the_watch_not_a_resync(
    kmock: Any, ctl: Controller, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    _operator_lines(caplog, monkeypatch)
    secrets = Secrets(kmock)
    await secrets.put("aws-vpn", {"psk": PSK_1})
    await secrets.put("other-app", {"password": UNRELATED})
    gateway = external("aws-vpn", ["psk-dc"], ["198.19.201.0/24"])
    gateway["spec"]["auth"]["secretKeyRef"] = {"name": "aws-vpn"}
    watchers: list[Any] = []
    # A resync an hour apart: its timer runs one pass (5 s after the start) and no second one
    # during the test, so of the two rotations below at most one could come from it.
    running = operator_running(kmock, ctl, resync=3600, secret_namespace=NAMESPACE, watchers=watchers)
    async with running as (k8s, _):
        await k8s.create(gateway)

        async def stored_is(value: bytes) -> bool:
            return await _stored(ctl) == value

        await eventually("the first PSK in the controller", lambda: stored_is(PSK_1))

        async def watched() -> frozenset[str]:
            return watchers[0].names if watchers else frozenset()

        assert await eventually("the referenced Secret watched", watched) == {"aws-vpn"}
        for value in (PSK_2, PSK_3):
            await secrets.patch("other-app", {"password": UNRELATED + value[:4]})
            await secrets.patch("aws-vpn", {"psk": value})
            await eventually("the rotated PSK in the controller", lambda v=value: stored_is(v))  # type: ignore[misc]

        # What reached the API server about Secrets: watches of aws-vpn by name and reads of it;
        # the other Secret was never fetched, and no watch asked for more than aws-vpn.
        requests = [r for r in kmock if r.resource is not None and r.resource.plural == "secrets"]
        watches = [r for r in requests if r.action == kmock_lib.action.WATCH]
        fetches = [r for r in requests if r.action == kmock_lib.action.FETCH]
        assert watches and all(r.params.get("fieldSelector") == "metadata.name=aws-vpn" for r in watches)
        assert all(r.namespace == NAMESPACE for r in watches)
        assert fetches and {r.name for r in fetches} == {"aws-vpn"}
        assert not [r for r in requests if r.action == kmock_lib.action.LIST]

        await k8s.delete(Kind.EXTERNAL_GATEWAY, "aws-vpn")

        async def unwatched() -> bool:
            return not watchers[0].names

        await eventually("the watch stopped with its last gateway", unwatched)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    # The operator's lines (kmock's access log names the test's own writes).
    operator = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith(("meshsec.", "kopf")))
    assert "Secret meshsec-system/aws-vpn: watched" in operator
    assert "other-app" not in operator  # never looked at, so never named either
    for value in (PSK_1, PSK_2, PSK_3, UNRELATED):
        assert value.decode() not in logged
