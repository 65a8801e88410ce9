"""The operator's bootstrap Secret keeper against kmock's Secrets API and a real controller: the
token it writes enrolls a node, it is kept until a third of its life is left, then replaced and
the old one revoked; a missing Site or a CA file that is not the controller's writes nothing."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from meshsec.controller.operator.bootstrap import (
    CA_KEY,
    EXPIRES_AT,
    RETRY_SECONDS,
    SITE,
    TOKEN_ID,
    TOKEN_KEY,
    BootstrapConfig,
    BootstrapKeeper,
    KubernetesSecrets,
    renewal_reason,
)
from meshsec.controller.operator.sync import ControllerSync, Verdict
from meshsec.controller.server import Controller
from tests.controller.ctl_harness import enroll
from tests.harness.tls import ThrowawayCA

kmock_lib = pytest.importorskip("kmock", reason="kmock not installed (k8s test dependency)")
kubernetes = pytest.importorskip("kubernetes")

NAMESPACE = "meshsec-system"
SECRET = "meshsec-agent-bootstrap"
TTL = 3600


def _secrets(kmock: Any) -> KubernetesSecrets:
    kmock.resources["v1/secrets"] = kmock_lib.ResourceInfo(kind="Secret", namespaced=True)
    kmock.resources["v1/namespaces"] = kmock_lib.ResourceInfo(kind="Namespace", namespaced=False)
    configuration = kubernetes.client.Configuration()
    configuration.host = str(kmock.url).rstrip("/")
    return KubernetesSecrets(kubernetes.client.ApiClient(configuration))


async def _read_secret(kmock: Any) -> dict[str, Any] | None:
    response = await kmock.get(f"/api/v1/namespaces/{NAMESPACE}/secrets/{SECRET}")
    if response.status == 404:
        return None
    assert response.status < 300, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def _site(sync: ControllerSync, name: str) -> None:
    outcome = await sync.apply(
        {
            "apiVersion": "meshsec.io/v1alpha1",
            "kind": "Site",
            "metadata": {"name": name},
            "spec": {"prefixes": ["198.19.70.0/24"], "gatewaySelector": {}},
        }
    )
    assert outcome.verdict is Verdict.DONE, outcome


def _config(controller: Controller, site: str = "boot-dc", ca_file: Path | None = None) -> BootstrapConfig:
    assert controller.config.data_dir is not None
    return BootstrapConfig(
        namespace=NAMESPACE,
        secret_name=SECRET,
        site=site,
        ca_file=ca_file or controller.config.data_dir / "ca.pem",
        uses=5,
        ttl_seconds=TTL,
        node_labels={"role": "gateway"},
    )


async def test_token_written_used_kept_and_rotated(kmock: Any, controller: Controller) -> None:
    assert controller.config.admin_socket is not None
    sync = ControllerSync.unix(controller.config.admin_socket)
    try:
        await _site(sync, "boot-dc")
        now = [time.time()]
        keeper = BootstrapKeeper(sync, _secrets(kmock), _config(controller), clock=lambda: now[0])

        assert await keeper.refresh() == 300.0  # renewal is 40 min away: check again in 5
        secret = await _read_secret(kmock)
        assert secret is not None
        annotations = secret["metadata"]["annotations"]
        token = base64.b64decode(secret["data"][TOKEN_KEY]).decode()
        ca_pem = base64.b64decode(secret["data"][CA_KEY]).decode()
        assert ca_pem == controller.core.ca.certificate_pem  # type: ignore[union-attr]
        assert annotations[SITE] == "boot-dc" and token.startswith(annotations[TOKEN_ID] + ".")
        assert TTL - 5 <= float(annotations[EXPIRES_AT]) - now[0] <= TTL + 30  # slack for a loaded machine
        assert token not in str(annotations)

        node = await enroll(controller, token, "boot-n1", "198.18.70.1")
        assert node.response.node.spec["site"] == "boot-dc"
        assert dict(node.response.node.metadata.labels) == {"role": "gateway"}

        # Still fresh: nothing is written.
        await keeper.refresh()
        assert (await _read_secret(kmock))["metadata"]["annotations"][TOKEN_ID] == annotations[TOKEN_ID]  # type: ignore[index]

        # Two thirds of its life later: a new token, the old one revoked.
        now[0] += TTL * 2 / 3 + 60  # the 30 s slack above included
        await keeper.refresh()
        rotated = await _read_secret(kmock)
        assert rotated is not None
        assert rotated["metadata"]["annotations"][TOKEN_ID] != annotations[TOKEN_ID]
        new_token = base64.b64decode(rotated["data"][TOKEN_KEY]).decode()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await enroll(controller, token, "boot-n2", "198.18.70.2")
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        await enroll(controller, new_token, "boot-n2", "198.18.70.2")
    finally:
        await sync.close()


async def test_nothing_written_without_the_site_or_with_a_foreign_ca(
    kmock: Any, controller: Controller, tmp_path: Path
) -> None:
    assert controller.config.admin_socket is not None
    sync = ControllerSync.unix(controller.config.admin_socket)
    try:
        secrets = _secrets(kmock)
        keeper = BootstrapKeeper(sync, secrets, _config(controller, site="boot-missing"))
        assert await keeper.refresh() == RETRY_SECONDS
        assert await _read_secret(kmock) is None

        await _site(sync, "boot-missing")
        foreign = tmp_path / "foreign-ca.pem"
        foreign.write_bytes(ThrowawayCA("not-the-controller").cert_pem)
        keeper = BootstrapKeeper(sync, secrets, _config(controller, site="boot-missing", ca_file=foreign))
        assert await keeper.refresh() == RETRY_SECONDS
        assert await _read_secret(kmock) is None

        keeper = BootstrapKeeper(sync, secrets, _config(controller, site="boot-missing"))
        assert await keeper.refresh() == 300.0
        assert await _read_secret(kmock) is not None
    finally:
        await sync.close()


def test_renewal_reasons() -> None:
    good = {SITE: "dc1", "meshsec.io/ca-sha256": "ab", EXPIRES_AT: "10000"}
    assert renewal_reason(good, "dc1", "ab", 10000 - TTL / 3 - 1, TTL) is None
    assert renewal_reason(good, "dc1", "ab", 10000 - TTL / 3 + 1, TTL) == "the token expires soon"
    assert renewal_reason(None, "dc1", "ab", 0, TTL) == "no Secret yet"
    assert renewal_reason(good, "dc2", "ab", 0, TTL) == "site changed to dc2"
    assert renewal_reason(good, "dc1", "cd", 0, TTL) == "the controller CA changed"
    assert renewal_reason({**good, EXPIRES_AT: "soon"}, "dc1", "ab", 0, TTL) == "no readable expiry"
