"""AdminService of a real controller: over its Unix socket (what meshctl uses) and over mTLS with
an admin certificate. Apply is all-or-nothing with field-path errors; nothing invalid is stored.
"""

from __future__ import annotations

import stat
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from meshsec.common.version import VERSION
from meshsec.controller.api.admin import VALIDATION_TRAILER
from meshsec.controller.server import Controller
from meshsec.v1 import admin_pb2, common_pb2
from tests.controller.ctl_harness import (
    CALL_TIMEOUT,
    admin_channel,
    admin_mtls_channel,
    admin_stub,
    apply,
    core_of,
    join,
    running_controller,
    to_resource,
)
from tests.controller.test_mesh_support import node, policy, site

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def ctl(tmp_path: Path) -> AsyncIterator[Controller]:
    async with running_controller(tmp_path) as controller:
        yield controller


def validation_errors(error: grpc.aio.AioRpcError) -> list[admin_pb2.ValidationError]:
    raw = [v for k, v in error.trailing_metadata() or () if k == VALIDATION_TRAILER]
    assert raw, "INVALID_ARGUMENT without the validation trailer"
    return list(admin_pb2.ValidationErrors.FromString(raw[0]).errors)


async def stored_names(controller: Controller, kind: str) -> list[str]:
    async with admin_channel(controller) as channel:
        listed = await admin_stub(channel).List(admin_pb2.ListRequest(kind=kind), timeout=CALL_TIMEOUT)
    return [r.metadata.name for r in listed.resources]


async def test_admin_socket_is_private_to_its_owner(ctl: Controller) -> None:
    assert ctl.config.admin_socket is not None
    mode = Path(ctl.config.admin_socket).stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


async def test_apply_creates_configures_and_reports_unchanged(ctl: Controller) -> None:
    created = await apply(ctl, site("dc1", ["198.19.1.0/24"], labels={"region": "eu"}))
    assert [r.action for r in created.results] == [admin_pb2.APPLY_ACTION_CREATED]
    first = created.results[0].resource
    assert first.metadata.uid and first.metadata.generation == 1 and first.metadata.resource_version
    assert first.metadata.annotations["meshsec.io/last-applied-by"] == "test"
    same = await apply(ctl, site("dc1", ["198.19.1.0/24"], labels={"region": "eu"}))
    assert [r.action for r in same.results] == [admin_pb2.APPLY_ACTION_UNCHANGED]
    assert same.results[0].resource.metadata.resource_version == first.metadata.resource_version
    changed = await apply(ctl, site("dc1", ["198.19.1.0/24", "198.19.10.0/24"], labels={"region": "eu"}))
    result = changed.results[0]
    assert result.action == admin_pb2.APPLY_ACTION_CONFIGURED
    assert result.resource.metadata.generation == 2 and result.resource.metadata.uid == first.metadata.uid
    assert list(result.resource.spec["prefixes"]) == ["198.19.1.0/24", "198.19.10.0/24"]


async def test_invalid_resource_fails_with_field_path_and_nothing_is_stored(ctl: Controller) -> None:
    bad = site("dc2", ["198.19.2.0/24", "not-a-prefix"])
    async with admin_channel(ctl) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await admin_stub(channel).Apply(
                admin_pb2.ApplyRequest(
                    resources=[to_resource(site("dc1", ["198.19.1.0/24"])), to_resource(bad)]
                ),
                timeout=CALL_TIMEOUT,
            )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    errors = validation_errors(info.value)
    assert [(e.kind, e.name, e.index) for e in errors] == [("Site", "dc2", 1)]
    assert errors[0].path == "spec.prefixes[1]"
    assert "spec.prefixes[1]" in (info.value.details() or "")
    assert await stored_names(ctl, "Site") == []  # the valid dc1 was not written either


async def test_cross_resource_conflicts_are_rejected_all_or_nothing(ctl: Controller) -> None:
    await apply(ctl, site("dc1", ["198.19.0.0/20"]))
    async with admin_channel(ctl) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await admin_stub(channel).Apply(
                admin_pb2.ApplyRequest(
                    resources=[
                        to_resource(site("dc3", ["198.19.200.0/24"])),  # fine alone
                        to_resource(site("dc2", ["198.19.1.0/24"])),  # overlaps dc1
                    ]
                ),
                timeout=CALL_TIMEOUT,
            )
    errors = validation_errors(info.value)
    assert [(e.name, e.index, e.path) for e in errors] == [("dc2", 1, "spec.prefixes")]
    assert "Site/dc1" in errors[0].message
    assert await stored_names(ctl, "Site") == ["dc1"]


async def test_dry_run_validates_and_writes_nothing(ctl: Controller) -> None:
    response = await apply(ctl, site("dc1", ["198.19.1.0/24"]), dry_run=True)
    assert [r.action for r in response.results] == [admin_pb2.APPLY_ACTION_CREATED]
    assert await stored_names(ctl, "Site") == []


async def test_stale_resource_version_is_aborted(ctl: Controller) -> None:
    first = (await apply(ctl, site("dc1", ["198.19.1.0/24"]))).results[0].resource
    await apply(ctl, site("dc1", ["198.19.3.0/24"]))
    stale = to_resource(site("dc1", ["198.19.4.0/24"]))
    stale.metadata.resource_version = first.metadata.resource_version
    async with admin_channel(ctl) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await admin_stub(channel).Apply(admin_pb2.ApplyRequest(resources=[stale]), timeout=CALL_TIMEOUT)
        assert info.value.code() == grpc.StatusCode.ABORTED
        got = await admin_stub(channel).Get(
            admin_pb2.GetRequest(kind="Site", name="dc1"), timeout=CALL_TIMEOUT
        )
    assert list(got.resource.spec["prefixes"]) == ["198.19.3.0/24"]


async def test_delete_refuses_a_site_nodes_still_use(ctl: Controller) -> None:
    await apply(ctl, site("dc1", ["198.19.1.0/24"]), node("n1", "dc1", private=["198.18.0.1"]))
    async with admin_channel(ctl) as channel:
        stub = admin_stub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Delete(admin_pb2.DeleteRequest(kind="Site", name="dc1"), timeout=CALL_TIMEOUT)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "Node/n1" in (info.value.details() or "")
        deleted = await stub.Delete(admin_pb2.DeleteRequest(kind="Node", name="n1"), timeout=CALL_TIMEOUT)
        assert deleted.resource.metadata.name == "n1"
        await stub.Delete(admin_pb2.DeleteRequest(kind="Site", name="dc1"), timeout=CALL_TIMEOUT)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Get(admin_pb2.GetRequest(kind="Site", name="dc1"), timeout=CALL_TIMEOUT)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_list_by_label_selector_with_pages(ctl: Controller) -> None:
    await apply(
        ctl,
        site("a", ["198.19.1.0/24"], labels={"region": "eu", "provider": "aws"}),
        site("b", ["198.19.2.0/24"], labels={"region": "eu", "provider": "gcp", "legacy": "yes"}),
        site("c", ["198.19.3.0/24"], labels={"region": "us", "provider": "aws"}),
        site("d", ["198.19.4.0/24"], labels={"region": "eu", "provider": "azure"}),
    )
    async with admin_channel(ctl) as channel:
        stub = admin_stub(channel)

        async def names(selector: str) -> list[str]:
            listed = await stub.List(
                admin_pb2.ListRequest(kind="Site", label_selector=selector), timeout=CALL_TIMEOUT
            )
            return [r.metadata.name for r in listed.resources]

        assert await names("region=eu") == ["a", "b", "d"]
        assert await names("region=eu,provider in (aws,gcp),!legacy") == ["a"]
        assert await names("provider!=aws") == ["b", "d"]
        page = await stub.List(admin_pb2.ListRequest(kind="Site", page_size=3), timeout=CALL_TIMEOUT)
        assert [r.metadata.name for r in page.resources] == ["a", "b", "c"] and page.next_page_token == "c"
        rest = await stub.List(
            admin_pb2.ListRequest(kind="Site", page_size=3, page_token=page.next_page_token),
            timeout=CALL_TIMEOUT,
        )
        assert [r.metadata.name for r in rest.resources] == ["d"] and not rest.next_page_token
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await names("region in eu")
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_admin_certificate_works_on_mtls_and_events_replay(ctl: Controller) -> None:
    async with await admin_mtls_channel(ctl, "alice") as channel:
        stub = admin_stub(channel)
        await stub.Apply(
            admin_pb2.ApplyRequest(
                resources=[to_resource(site("dc1", ["198.19.1.0/24"]))], field_manager="alice"
            ),
            timeout=CALL_TIMEOUT,
        )
        call = stub.WatchEvents(admin_pb2.WatchEventsRequest(since_sequence=1, kinds=["Site"]))
        event = await call.read()
        call.cancel()
    assert (event.reason, event.involved.kind, event.involved.name) == ("Applied", "Site", "dc1")
    assert "alice" in event.message and event.source == "controller/ctl-a"


async def test_topology_and_metrics_reflect_the_mesh(ctl: Controller) -> None:
    await apply(
        ctl,
        site("dc1", ["198.19.1.0/24"]),
        site("dc2", ["198.19.2.0/24"]),
        policy("mesh", "full-mesh", "node", {}),
    )
    for i in range(3):
        await join(ctl, "dc1" if i else "dc2", f"n{i}", f"198.18.0.{i + 1}")
    async with admin_channel(ctl) as channel:
        topology = await admin_stub(channel).GetTopology(
            admin_pb2.GetTopologyRequest(site="dc1"), timeout=CALL_TIMEOUT
        )
    assert [s.name for s in topology.sites] == ["dc1"]
    assert [n.name for n in topology.nodes] == ["n1", "n2"]
    assert all(not n.online for n in topology.nodes)  # never reported
    assert len(topology.links) == 3  # every tunnel touching dc1's two nodes
    assert all(link.state == common_pb2.TUNNEL_STATE_DOWN for link in topology.links)
    text = urllib.request.urlopen(f"http://127.0.0.1:{ctl.metrics_port}/metrics", timeout=5).read().decode()
    samples = dict(
        line.rsplit(" ", 1)
        for line in text.splitlines()
        if line and not line.startswith("#") and "{" not in line
    )
    assert float(samples["meshsec_controller_nodes"]) == 3
    assert float(samples["meshsec_controller_tunnels_desired"]) == 3
    assert float(samples["meshsec_controller_leader"]) in (0.0, 1.0)
    assert 'meshsec_controller_store_seconds_count{op="txn"}' in text
    assert float(samples["meshsec_controller_unknown_tunnel_statuses_total"]) == 0
    assert float(samples["meshsec_controller_nodes_online"]) == 0  # none reported yet
    ca_not_after = core_of(ctl).ca.certificate.not_valid_after_utc.timestamp()
    assert float(samples["meshsec_controller_ca_certificate_expiry_timestamp_seconds"]) == ca_not_after
    assert f'meshsec_build_info{{version="{VERSION}"}} 1.0' in text


async def test_bulk_apply_events_have_distinct_increasing_sequences(ctl: Controller) -> None:
    sites = [site(f"s{i}", [f"198.19.{i}.0/24"]) for i in range(5)]
    await apply(ctl, *sites)  # five Applied events written in one transaction
    async with admin_channel(ctl) as channel:
        call = admin_stub(channel).WatchEvents(admin_pb2.WatchEventsRequest(since_sequence=1, kinds=["Site"]))
        events = [await call.read() for _ in range(5)]
        sequences = [e.sequence for e in events]
        assert sequences == sorted(set(sequences)) and [e.involved.name for e in events] == [
            f"s{i}" for i in range(5)
        ]
        # Resuming after the third replays exactly the last two.
        tail = admin_stub(channel).WatchEvents(
            admin_pb2.WatchEventsRequest(since_sequence=sequences[2], kinds=["Site"])
        )
        assert [(await tail.read()).involved.name for _ in range(2)] == ["s3", "s4"]
        await apply(ctl, site("s9", ["198.19.9.0/24"]))  # live, after the replay
        live = await tail.read()
        assert live.involved.name == "s9" and live.sequence > sequences[-1]
        call.cancel()
        tail.cancel()
