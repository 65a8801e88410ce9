"""The reconciler's handlers called directly (as kopf calls them) against a real controller."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from meshsec.controller.operator.sync import ControllerSync, Verdict
from meshsec.controller.resources import Kind
from meshsec.controller.server import Controller

kopf = pytest.importorskip("kopf", reason="kopf not installed (k8s extra)")

from meshsec.controller.operator.handlers import OperatorConfig, Reconciler  # noqa: E402

LOG = logging.getLogger("test")


def _body(**meta: Any) -> Any:
    return kopf.Body(
        {
            "apiVersion": "meshsec.io/v1alpha1",
            "kind": "Site",
            "metadata": {"name": "gate-dc", "uid": "uid-1", "generation": 1, **meta},
            "spec": {"prefixes": ["198.19.80.0/24"], "gatewaySelector": {}},
        }
    )


async def test_a_resync_that_read_the_object_before_its_deletion_applies_nothing(
    controller: Controller,
) -> None:
    assert controller.config.admin_socket is not None
    sync = ControllerSync.unix(controller.config.admin_socket)
    try:
        reconciler = Reconciler(Kind.SITE, sync, OperatorConfig())
        stale = _body()  # what a timer pass read just before the deletion began
        patch = kopf.Patch()
        await reconciler.reconcile(body=stale, patch=patch, logger=LOG)
        assert patch["status"]["conditions"][0]["reason"] == "Applied"
        assert await sync.get(Kind.SITE, "gate-dc") is not None

        await reconciler.delete(
            body=_body(deletionTimestamp="2026-01-01T00:00:00Z"), patch=kopf.Patch(), logger=LOG
        )
        assert await sync.get(Kind.SITE, "gate-dc") is None
        late = kopf.Patch()
        await reconciler.resync(body=stale, patch=late, logger=LOG)
        assert await sync.get(Kind.SITE, "gate-dc") is None
        assert dict(late) == {}

        # A new object of the same name (new uid) is applied as usual.
        await reconciler.reconcile(
            body=kopf.Body({**stale, "metadata": {**stale["metadata"], "uid": "uid-2"}}),
            patch=kopf.Patch(),
            logger=LOG,
        )
        assert await sync.get(Kind.SITE, "gate-dc") is not None
    finally:
        await sync.close()


async def test_controller_unavailable_is_a_temporary_error(tmp_path: Any) -> None:
    sync = ControllerSync.unix(str(tmp_path / "nobody.sock"))
    try:
        reconciler = Reconciler(Kind.SITE, sync, OperatorConfig(retry_seconds=3))
        patch = kopf.Patch()
        with pytest.raises(kopf.TemporaryError) as info:
            await reconciler.reconcile(body=_body(), patch=patch, logger=LOG)
        assert info.value.delay == 3
        ready = patch["status"]["conditions"][0]
        assert (ready["status"], ready["reason"]) == ("Unknown", "ControllerUnavailable")
    finally:
        await sync.close()


async def test_guarded_delete_refuses_a_changed_resource(controller: Controller) -> None:
    assert controller.config.admin_socket is not None
    sync = ControllerSync.unix(controller.config.admin_socket)
    try:
        reconciler = Reconciler(Kind.SITE, sync, OperatorConfig())
        await reconciler.reconcile(body=_body(), patch=kopf.Patch(), logger=LOG)
        read = await sync.get(Kind.SITE, "gate-dc")
        assert read is not None
        changed = _body(labels={"owner": "meshctl"})
        await reconciler.reconcile(
            body=kopf.Body({**changed, "metadata": {**changed["metadata"], "uid": "uid-9"}}),
            patch=kopf.Patch(),
            logger=LOG,
        )
        outcome = await sync.delete(Kind.SITE, "gate-dc", resource_version=read.metadata.resource_version)
        assert outcome.verdict is Verdict.BLOCKED
        assert await sync.get(Kind.SITE, "gate-dc") is not None
        current = await sync.get(Kind.SITE, "gate-dc")
        assert current is not None
        outcome = await sync.delete(Kind.SITE, "gate-dc", resource_version=current.metadata.resource_version)
        assert outcome.verdict is Verdict.DONE
    finally:
        await sync.close()
