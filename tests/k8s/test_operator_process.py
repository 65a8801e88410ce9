"""`python -m meshsec.controller.operator` as its own process, the way the chart runs it: kopf
logs in through a kubeconfig (pointing at kmock), talks to a real controller over its admin
socket, keeps the cluster's Site and a meshsec Node per core Node (`--cluster-site`), serves its
liveness probe, and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meshsec.controller.operator.sync import ControllerSync
from meshsec.controller.resources import Kind
from meshsec.controller.server import Controller

pytest.importorskip("kopf", reason="kopf not installed (k8s extra)")
kmock_lib = pytest.importorskip("kmock", reason="kmock not installed (k8s test dependency)")

from tests.k8s.test_cluster_sites import CoreNodes, core_node  # noqa: E402
from tests.k8s.test_operator_kmock import SITE, Cluster, declare_resources, eventually, ready_of  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_operator_process(kmock: Any, controller: Controller, tmp_path: Path) -> None:
    declare_resources(kmock)
    nodes = CoreNodes(kmock)
    await nodes.create(core_node("proc-n1", internal="198.18.35.1", pod_cidrs=("198.19.35.0/24",)))
    kmock.resources["v1/events"] = kmock_lib.ResourceInfo(kind="Event", namespaced=True)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: kmock, cluster: {{server: '{str(kmock.url).rstrip('/')}'}}}}]\n"
        "users: [{name: test, user: {}}]\n"
        "contexts: [{name: test, context: {cluster: kmock, user: test}}]\n"
        "current-context: test\n"
    )
    assert controller.config.admin_socket is not None
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "meshsec.controller.operator",
        "--admin-socket",
        controller.config.admin_socket,
        "--resync",
        "1",
        "--liveness",
        f"http://127.0.0.1:{port}/healthz",
        "--cluster-site",
        "k8s-proc",
        "--service-cidr",
        "198.19.236.0/22",
        env={**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(tmp_path)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    sync = ControllerSync.unix(controller.config.admin_socket)
    try:
        k8s = Cluster(kmock)
        await k8s.create(SITE)
        assert await eventually("the Site in the controller", lambda: sync.get(Kind.SITE, "k8s-dc1"))

        async def ready() -> bool:
            condition = ready_of(await k8s.get(Kind.SITE, "k8s-dc1"), "Applied")
            return bool(condition and condition["status"] == "True")

        await eventually("Applied on the Site CR", ready)
        assert await eventually("the core Node's meshsec Node", lambda: sync.get(Kind.NODE, "proc-n1"))
        cluster_site = await sync.get(Kind.SITE, "k8s-proc")
        assert cluster_site is not None
        assert [p.string_value for p in cluster_site.spec.fields["prefixes"].list_value.values] == [
            "198.19.35.0/24",
            "198.19.236.0/22",
        ]
        await nodes.delete("proc-n1")

        async def gone() -> bool:
            return await sync.get(Kind.NODE, "proc-n1") is None

        await eventually("the deleted core Node's meshsec Node to go", gone)

        async def alive() -> bool:
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"http://127.0.0.1:{port}/healthz") as response,
                ):
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await eventually("the liveness endpoint", alive)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        await sync.close()
        if process.returncode is None:
            process.kill()
            await process.wait()
        output = (await process.stdout.read()).decode() if process.stdout else ""
        with contextlib.suppress(Exception):
            print(output[-4000:])
