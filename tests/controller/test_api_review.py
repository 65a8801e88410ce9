"""Admin and agent API edge cases found in review: bad input refused up front, naming the field."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from meshsec.v1 import admin_pb2
from tests.controller.ctl_harness import (
    CALL_TIMEOUT,
    admin_channel,
    admin_stub,
    core_of,
    create_token,
    enroll,
    running_controller,
)
from tests.controller.test_mesh_support import site

pytestmark = pytest.mark.timeout(60)


async def test_a_token_with_invalid_node_labels_is_refused_when_created(tmp_path: Path) -> None:
    async with running_controller(tmp_path, site("dc1", ["198.19.1.0/24"])) as ctl:
        async with admin_channel(ctl) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await admin_stub(channel).CreateBootstrapToken(
                    admin_pb2.CreateBootstrapTokenRequest(
                        site="dc1", node_labels={"tier": "edge", "bad key!": "x"}
                    ),
                    timeout=CALL_TIMEOUT,
                )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "node_labels.bad key!: invalid label key" in (refused.value.details() or "")
        tokens = core_of(ctl).tokens
        assert (await core_of(ctl).state.store.range(tokens.prefix)).kvs == []
        # Valid labels still reach the enrolled Node.
        token = await create_token(ctl, "dc1", "node-a", node_labels={"tier": "edge"})
        enrolled = await enroll(ctl, token, "node-a", "198.18.0.1")
        assert dict(enrolled.response.node.metadata.labels) == {"tier": "edge"}


async def test_secret_calls_answer_unavailable_when_the_store_is_down(tmp_path: Path) -> None:
    async with running_controller(tmp_path, site("dc1", ["198.19.1.0/24"])) as ctl:
        await ctl.store.inner.close()  # the store goes away under a running replica
        async with admin_channel(ctl) as channel:
            stub = admin_stub(channel)
            calls = [
                stub.PutSecret(admin_pb2.PutSecretRequest(name="aws", value=b"k" * 32), timeout=CALL_TIMEOUT),
                stub.DeleteSecret(admin_pb2.DeleteSecretRequest(name="aws"), timeout=CALL_TIMEOUT),
            ]
            for call in calls:
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await call
                assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
                assert (failed.value.details() or "").startswith("store: ")
