"""Issue 18 (hostile probe): what a client can make the controller store, echo or choke on is
bounded, and every refusal is a clear INVALID_ARGUMENT within gRPC's limits (docs/resources.md,
"Limits"). A real controller over its admin socket and bootstrap listener."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from meshsec.controller.resources.limits import MAX_ANNOTATIONS_BYTES
from meshsec.controller.server import Controller
from meshsec.controller.service.events import MAX_MESSAGE_CHARS
from meshsec.v1 import admin_pb2, agent_pb2, agent_pb2_grpc
from tests.controller.ctl_harness import (
    CALL_TIMEOUT,
    VALIDATION_TRAILER,
    admin_channel,
    admin_stub,
    apply,
    bootstrap_channel,
    create_token,
    facts,
    retained_events,
    running_controller,
    to_resource,
)
from tests.controller.test_mesh_support import site
from tests.harness.tls import new_key_and_csr

pytestmark = pytest.mark.timeout(120)
MB = 1024 * 1024


@pytest.fixture
async def ctl(tmp_path: Path) -> AsyncIterator[Controller]:
    async with running_controller(tmp_path) as controller:
        yield controller


def _annotated(name: str, prefix: str, annotations: dict[str, str]) -> Any:
    resource = to_resource(site(name, [prefix]))
    resource.metadata.annotations.update(annotations)
    return resource


async def _refused(controller: Controller, *resources: Any) -> grpc.aio.AioRpcError:
    async with admin_channel(controller) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await admin_stub(channel).Apply(admin_pb2.ApplyRequest(resources=resources), timeout=CALL_TIMEOUT)
    return info.value


def _trailer(error: grpc.aio.AioRpcError) -> admin_pb2.ValidationErrors:
    raw = [v for k, v in error.trailing_metadata() or () if k == VALIDATION_TRAILER]
    assert raw, f"no validation trailer: {error.code()} {error.details()}"
    return admin_pb2.ValidationErrors.FromString(raw[0])


async def test_a_huge_bad_label_is_refused_with_its_validation_error_and_not_stored(ctl: Controller) -> None:
    bad = to_resource(site("dc1", ["198.19.1.0/24"]))
    bad.metadata.labels["region"] = "x" * (600 * 1024)
    bad.metadata.labels["k" * (300 * 1024)] = "v"
    error = await _refused(ctl, bad)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # not RESOURCE_EXHAUSTED (metadata)
    problems = sorted(_trailer(error).errors, key=lambda e: e.path)
    assert problems[1].path == "metadata.labels.region" and problems[0].path.startswith(
        "metadata.labels.kkkk"
    )
    assert all(len(e.path) < 400 and len(e.message) < 600 for e in problems)
    assert len(error.details() or "") <= 512
    huge = to_resource(site("dc1", ["198.19.1.0/24"]))
    huge.metadata.labels["region"] = "x" * (3 * MB)
    error = await _refused(ctl, huge)
    [problem] = _trailer(error).errors
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most 1048576 (1 MiB)" in problem.message
    refusals = [e for e in await retained_events(ctl) if e.reason == "ValidationFailed"]
    assert len(refusals) == 2 and all(len(e.message) <= MAX_MESSAGE_CHARS + 64 for e in refusals)


async def test_thousands_of_problems_fit_the_trailer_and_say_how_many_were_left_out(ctl: Controller) -> None:
    bad = [to_resource(site(f"s{i}", [f"198.19.{i % 256}.1/24"])) for i in range(3000)]  # host bits
    error = await _refused(ctl, *bad)
    listed = _trailer(error)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert listed.errors and len(listed.errors) + listed.omitted == 3000
    assert "(and 2999 more)" in (error.details() or "")


async def test_annotations_are_limited_to_256_kib_in_all(ctl: Controller) -> None:
    error = await _refused(ctl, _annotated("dc1", "198.19.1.0/24", {"note": "x" * (300 * 1024)}))
    assert [e.path for e in _trailer(error).errors] == ["metadata.annotations"]
    half = "x" * (MAX_ANNOTATIONS_BYTES // 2)
    error = await _refused(ctl, _annotated("dc1", "198.19.1.0/24", {"a": half, "b": half}))
    assert "256 KiB" in _trailer(error).errors[0].message
    error = await _refused(ctl, _annotated("dc1", "198.19.1.0/24", {"not a key!": "v"}))
    assert _trailer(error).errors[0].message == "invalid annotation key"
    fits = {"a": "x" * (MAX_ANNOTATIONS_BYTES - 100)}
    async with admin_channel(ctl) as channel:
        response = await admin_stub(channel).Apply(
            admin_pb2.ApplyRequest(resources=[_annotated("dc1", "198.19.1.0/24", fits)]), timeout=CALL_TIMEOUT
        )
    assert response.results[0].action == admin_pb2.APPLY_ACTION_CREATED


async def test_list_pages_by_bytes_so_big_resources_do_not_break_listing(ctl: Controller) -> None:
    note = {"note": "x" * (MAX_ANNOTATIONS_BYTES - 1024)}
    async with admin_channel(ctl) as channel:
        stub = admin_stub(channel)
        for batch in range(4):  # 24 Sites of ~255 KiB: 6 MiB, more than one message may carry
            resources = [_annotated(f"s{batch}-{i}", f"198.19.{batch * 6 + i}.0/24", note) for i in range(6)]
            await stub.Apply(admin_pb2.ApplyRequest(resources=resources), timeout=CALL_TIMEOUT)
        names: list[str] = []
        token, pages = "", 0
        while True:
            page = await stub.List(admin_pb2.ListRequest(kind="Site", page_token=token), timeout=CALL_TIMEOUT)
            assert page.ByteSize() <= 4 * MB
            names += [r.metadata.name for r in page.resources]
            pages += 1
            token = page.next_page_token
            if not token:
                break
    assert len(names) == 24 and names == sorted(names) and pages >= 2


async def test_an_accepted_apply_always_gets_its_response(ctl: Controller) -> None:
    # ~4.1 MB of Sites: the request fits gRPC's 4 MiB, their echo with server metadata would not.
    note = {"note": "x" * 2000}
    resources = [_annotated(f"s{i}", f"198.18.{i // 16}.{i % 16 * 16}/28", note) for i in range(1900)]
    request = admin_pb2.ApplyRequest(resources=resources, field_manager="test")
    assert 4_000_000 < request.ByteSize() < 4 * MB
    async with admin_channel(ctl) as channel:  # the default 4 MiB receive limit, as meshctl's
        response = await admin_stub(channel).Apply(request, timeout=60)
        assert [r.name for r in response.results] == [f"s{i}" for i in range(1900)]
        assert {r.action for r in response.results} == {admin_pb2.APPLY_ACTION_CREATED}
        echoed = [r for r in response.results if r.HasField("resource")]
        assert 0 < len(echoed) < 1900 and response.results[0].resource.metadata.uid
        assert response.ByteSize() < 4 * MB
        last = await admin_stub(channel).Get(admin_pb2.GetRequest(kind="Site", name="s1899"), timeout=10)
    assert last.resource.metadata.annotations["note"] == note["note"]


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
async def test_non_finite_numbers_are_a_validation_error(ctl: Controller, value: float) -> None:
    bad = to_resource(site("dc1", ["198.19.1.0/24"]))
    bad.spec["gatewaySelector"] = {"matchLabels": {"role": "gw"}, "weights": [1, value]}
    error = await _refused(ctl, bad)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    [problem] = _trailer(error).errors
    assert problem.path == "spec.gatewaySelector.weights[1]" and "finite" in problem.message


async def test_undecodable_requests_are_invalid_argument(ctl: Controller) -> None:
    get = admin_pb2.GetRequest(kind="Site", name="abc").SerializeToString().replace(b"abc", b"a\xffc")
    async with admin_channel(ctl) as channel:
        raw = channel.unary_unary("/meshsec.v1.AdminService/Get")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await raw(get, timeout=CALL_TIMEOUT)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "UTF-8" in (info.value.details() or "")
        watch = channel.unary_stream("/meshsec.v1.AdminService/WatchEvents")
        events = admin_pb2.WatchEventsRequest(name="abc").SerializeToString().replace(b"abc", b"a\xffc")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in watch(events, timeout=CALL_TIMEOUT):
                pass
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    async with bootstrap_channel(ctl) as channel:
        enroll = agent_pb2.EnrollRequest(node_name="abc").SerializeToString().replace(b"abc", b"a\xffc")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary("/meshsec.v1.AgentService/Enroll")(enroll, timeout=CALL_TIMEOUT)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_enrollment_facts_are_bounded(ctl: Controller) -> None:
    await apply(ctl, site("dc1", ["198.19.1.0/24"]))
    token = await create_token(ctl, "dc1", "n1")
    _, csr = new_key_and_csr("n1")
    huge = facts("198.18.1.1")
    huge.hostname = "h" * (3 * MB)
    async with bootstrap_channel(ctl) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await agent_pb2_grpc.AgentServiceStub(channel).Enroll(
                agent_pb2.EnrollRequest(
                    bootstrap_token=token, node_name="n1", csr_pem=csr.decode(), facts=huge
                ),
                timeout=CALL_TIMEOUT,
            )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "facts.hostname" in (info.value.details() or "")
    async with admin_channel(ctl) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await admin_stub(channel).Get(admin_pb2.GetRequest(kind="Node", name="n1"), timeout=CALL_TIMEOUT)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_big_apply_does_not_stall_other_calls(ctl: Controller) -> None:
    await apply(ctl, site("dc0", ["198.18.255.0/24"]))
    sites = [to_resource(site(f"s{i}", [f"198.18.{i // 16}.{i % 16 * 16}/28"])) for i in range(4000)]
    finished: list[str] = []
    async with admin_channel(ctl) as channel:
        stub = admin_stub(channel)

        async def big() -> None:
            await stub.Apply(admin_pb2.ApplyRequest(resources=sites, dry_run=True), timeout=120)
            finished.append("apply")

        async def small() -> None:
            await asyncio.sleep(0.2)  # the Apply has arrived and is being read
            await stub.Get(admin_pb2.GetRequest(kind="Site", name="dc0"), timeout=120)
            finished.append("get")

        await asyncio.gather(big(), small())
    assert finished == ["get", "apply"]
