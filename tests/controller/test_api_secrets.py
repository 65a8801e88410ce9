"""AdminService secrets: ExternalGateway PSKs are write-only through the API, checked for length,
and a change reaches the agents of the tunnels to the gateways that use it as a delta."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from meshsec.controller.server import Controller
from meshsec.v1 import admin_pb2, agent_pb2
from tests.controller.ctl_harness import (
    CALL_TIMEOUT,
    Watcher,
    admin_channel,
    admin_stub,
    core_of,
    join,
    running_controller,
)
from tests.controller.test_mesh_support import external, site

pytestmark = pytest.mark.timeout(60)

PSK_1 = b"first-psk-0123456789"
PSK_2 = b"second-psk-abcdefghij"


@pytest.fixture
async def ctl(tmp_path: Path) -> AsyncIterator[Controller]:
    async with running_controller(
        tmp_path,
        site("dc1", ["198.19.1.0/24"]),
        external("vgw", ["dc1"], ["198.19.200.0/24"]),  # uses secret vgw-psk
    ) as controller:
        yield controller


async def _error(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value


async def test_set_list_delete_never_return_the_value(ctl: Controller) -> None:
    async with admin_channel(ctl) as channel:
        admin = admin_stub(channel)
        put = await admin.PutSecret(
            admin_pb2.PutSecretRequest(name="vgw-psk", value=PSK_1), timeout=CALL_TIMEOUT
        )
        assert put.created and put.secret.name == "vgw-psk" and list(put.secret.used_by) == ["vgw"]
        again = await admin.PutSecret(
            admin_pb2.PutSecretRequest(name="vgw-psk", value=PSK_2), timeout=CALL_TIMEOUT
        )
        assert not again.created
        await admin.PutSecret(admin_pb2.PutSecretRequest(name="spare", value=PSK_1), timeout=CALL_TIMEOUT)
        listed = await admin.ListSecrets(admin_pb2.ListSecretsRequest(), timeout=CALL_TIMEOUT)
        assert [(s.name, list(s.used_by)) for s in listed.secrets] == [("spare", []), ("vgw-psk", ["vgw"])]
        for response in (put, again, listed):
            raw = response.SerializeToString()
            assert PSK_1 not in raw and PSK_2 not in raw
        # The value is stored where the controller reads PSKs from, and resolves for the tunnels.
        stored = await core_of(ctl).state.store.get(f"{core_of(ctl).state.keys.secrets}vgw-psk")
        assert stored is not None and stored.value == PSK_2
        events = admin.WatchEvents(admin_pb2.WatchEventsRequest(since_sequence=1, kinds=["Secret"]))
        seen = [await asyncio.wait_for(events.read(), 10) for _ in range(3)]
        events.cancel()
        assert [e.message for e in seen] == ["secret vgw-psk set", "secret vgw-psk set", "secret spare set"]
        assert all(PSK_1 not in e.SerializeToString() and PSK_2 not in e.SerializeToString() for e in seen)

        await admin.DeleteSecret(admin_pb2.DeleteSecretRequest(name="spare"), timeout=CALL_TIMEOUT)
        listed = await admin.ListSecrets(admin_pb2.ListSecretsRequest(), timeout=CALL_TIMEOUT)
        assert [s.name for s in listed.secrets] == ["vgw-psk"]
        missing = await _error(
            admin.DeleteSecret(admin_pb2.DeleteSecretRequest(name="spare"), timeout=CALL_TIMEOUT)
        )
        assert missing.code() == grpc.StatusCode.NOT_FOUND


async def test_short_long_and_misnamed_secrets_are_refused(ctl: Controller) -> None:
    async with admin_channel(ctl) as channel:
        admin = admin_stub(channel)
        short = await _error(
            admin.PutSecret(admin_pb2.PutSecretRequest(name="vgw-psk", value=b"x" * 15), timeout=CALL_TIMEOUT)
        )
        assert short.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert short.details() == "secret vgw-psk: a PSK must be at least 16 bytes (got 15)"
        long = await _error(
            admin.PutSecret(admin_pb2.PutSecretRequest(name="vgw-psk", value=b"x" * 65), timeout=CALL_TIMEOUT)
        )
        assert long.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most 64 bytes" in (
            long.details() or ""
        )
        bad = await _error(
            admin.PutSecret(admin_pb2.PutSecretRequest(name="Bad_Name", value=PSK_1), timeout=CALL_TIMEOUT)
        )
        assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
        listed = await admin.ListSecrets(admin_pb2.ListSecretsRequest(), timeout=CALL_TIMEOUT)
    assert list(listed.secrets) == []


async def test_an_agent_of_a_tunnel_to_the_gateway_gets_a_delta_with_the_new_psk(ctl: Controller) -> None:
    gw = await join(ctl, "dc1", "gw1", "198.18.0.1", node_labels={"role": "gateway"})
    watcher = Watcher(gw)
    async with gw.channel(ctl) as channel, admin_channel(ctl) as admin_ch:
        admin = admin_stub(admin_ch)
        updates = watcher.updates(channel)
        snapshot = await asyncio.wait_for(updates.__anext__(), 10)
        assert snapshot.kind == agent_pb2.UPDATE_KIND_SNAPSHOT
        (tunnel,) = snapshot.upserted_tunnels
        assert tunnel.peer_name == "vgw" and tunnel.auth.psk.key == b""  # nobody set it yet
        for value in (PSK_1, PSK_2):
            await admin.PutSecret(
                admin_pb2.PutSecretRequest(name="vgw-psk", value=value), timeout=CALL_TIMEOUT
            )
            delta = await asyncio.wait_for(updates.__anext__(), 10)
            assert delta.kind == agent_pb2.UPDATE_KIND_DELTA
            assert [t.tunnel_id for t in delta.upserted_tunnels] == [tunnel.tunnel_id]
            assert delta.upserted_tunnels[0].auth.psk.key == value
        await admin.DeleteSecret(admin_pb2.DeleteSecretRequest(name="vgw-psk"), timeout=CALL_TIMEOUT)
        delta = await asyncio.wait_for(updates.__anext__(), 10)
        assert delta.upserted_tunnels[0].auth.psk.key == b""
        await updates.aclose()  # type: ignore[attr-defined]
