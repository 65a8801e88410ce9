"""Target: the admin API's request handlers (controller/api/admin.py), in process: a real
Controller on an embedded store in a temporary folder (holding two Sites, two Nodes and a
MeshPolicy), its AdminApi servicer called with fuzzed request messages through a context whose
abort() raises like grpc's does. Input: method byte, then the serialized request.
Bad input: a protobuf DecodeError, or an abort() with a status (the API's answer to bad requests).
The controller lives for the whole process, so applied inputs accumulate like on a real one; a
finding replays on a fresh controller (python -m tests.fuzz.runner admin_api --replay FILE)."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from meshsec.controller.api.admin import AdminApi
from meshsec.controller.store import EmbeddedStore
from meshsec.v1 import admin_pb2
from tests.controller.ctl_harness import start_controller, to_resource
from tests.controller.test_mesh_support import node, policy, site

METHODS: tuple[tuple[str, type[Message]], ...] = (
    ("Apply", admin_pb2.ApplyRequest),
    ("Delete", admin_pb2.DeleteRequest),
    ("Get", admin_pb2.GetRequest),
    ("List", admin_pb2.ListRequest),
    ("ListTunnels", admin_pb2.ListTunnelsRequest),
    ("GetTopology", admin_pb2.GetTopologyRequest),
    ("CreateBootstrapToken", admin_pb2.CreateBootstrapTokenRequest),
    ("RevokeBootstrapToken", admin_pb2.RevokeBootstrapTokenRequest),
    ("PutSecret", admin_pb2.PutSecretRequest),
    ("DeleteSecret", admin_pb2.DeleteSecretRequest),
    ("ListSecrets", admin_pb2.ListSecretsRequest),
    ("GetVersion", admin_pb2.GetVersionRequest),
    ("IssueAdminCertificate", admin_pb2.IssueAdminCertificateRequest),
    ("ListAdminCertificates", admin_pb2.ListAdminCertificatesRequest),
    ("RevokeAdminCertificates", admin_pb2.RevokeAdminCertificatesRequest),
)
MAX_LEN = 4096


def _fixture() -> list[dict[str, Any]]:
    return [
        site("dc1", ["198.19.1.0/24"]),
        site("dc2", ["198.19.2.0/24"]),
        node("dc1-gw1", "dc1", public=["198.18.1.1"], labels={"role": "gateway"}),
        node("dc2-gw1", "dc2", public=["198.18.2.1"], labels={"role": "gateway"}),
        policy("mesh", "full-mesh", "node", auth={"method": "psk"}),
    ]


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code


class Context:
    """What the handlers use of grpc.aio.ServicerContext."""

    def __init__(self) -> None:
        self.trailers: tuple[tuple[str, bytes], ...] = ()

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        if code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL):
            raise AssertionError(f"handler answered {code.name}: {details}")
        raise Aborted(code, details)

    def set_trailing_metadata(self, md: tuple[tuple[str, bytes], ...]) -> None:
        self.trailers = md

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}


def make() -> Callable[[bytes], None]:
    loop = asyncio.new_event_loop()
    folder = Path(tempfile.mkdtemp(prefix="fuzz-admin-"))

    async def start() -> AdminApi:
        store = await EmbeddedStore.open(folder / "store.log")
        controller = await start_controller(store, folder / "ctl")
        assert controller.core is not None
        api = AdminApi(controller.core, local=True)
        request = admin_pb2.ApplyRequest(resources=[to_resource(d) for d in _fixture()])
        await api.Apply(request, Context())  # type: ignore[arg-type]
        return api

    api = loop.run_until_complete(start())

    def one_input(data: bytes) -> None:
        if not data:
            return
        name, cls = METHODS[data[0] % len(METHODS)]
        try:
            request = cls.FromString(data[1:])
        except DecodeError:
            return
        with contextlib.suppress(Aborted):
            loop.run_until_complete(asyncio.wait_for(getattr(api, name)(request, Context()), 10))

    return one_input


def seeds() -> Iterator[tuple[str, bytes]]:
    index = {name: i for i, (name, _) in enumerate(METHODS)}
    docs = _fixture()

    def seed(method: str, request: Message) -> tuple[str, bytes]:
        return method, bytes((index[method],)) + request.SerializeToString()

    everything = [to_resource(d) for d in docs]
    yield seed("Apply", admin_pb2.ApplyRequest(resources=everything, field_manager="fuzz"))
    yield seed("Apply", admin_pb2.ApplyRequest(resources=[to_resource(site("dc3", ["198.19.3.0/24"]))],
                                               dry_run=True))  # fmt: skip
    yield seed("Delete", admin_pb2.DeleteRequest(kind="Node", name="dc2-gw1", dry_run=True))
    yield seed("Get", admin_pb2.GetRequest(kind="Site", name="dc1"))
    yield seed("List", admin_pb2.ListRequest(kind="Node", label_selector="role=gateway", page_size=1))
    yield seed("ListTunnels", admin_pb2.ListTunnelsRequest(node="dc1-gw1"))
    yield seed("GetTopology", admin_pb2.GetTopologyRequest())
    yield seed("CreateBootstrapToken", admin_pb2.CreateBootstrapTokenRequest(site="dc1", node_name="dc1-gw2"))
    yield seed("RevokeBootstrapToken", admin_pb2.RevokeBootstrapTokenRequest(token_id="abc"))
    yield seed("PutSecret", admin_pb2.PutSecretRequest(name="mesh-psk", value=b"0123456789abcdef" * 2))
    yield seed("DeleteSecret", admin_pb2.DeleteSecretRequest(name="mesh-psk"))
    yield seed("ListSecrets", admin_pb2.ListSecretsRequest())
    yield seed("GetVersion", admin_pb2.GetVersionRequest())
    yield seed("ListAdminCertificates", admin_pb2.ListAdminCertificatesRequest())
