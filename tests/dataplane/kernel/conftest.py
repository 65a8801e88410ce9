"""Fixtures for the kernel data plane tests: a namespace per test and a started backend in it.

Tests marked ``kernelvm`` need a kernel with ESP and run only inside the qemu kernel lane
(.ci/kernel-lane sets MESHSEC_KERNEL_LANE=1); everywhere else they are skipped.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

from meshsec.agent.dataplane.api import DataPlaneEvent
from meshsec.agent.dataplane.kernel.backend import KernelDataPlane
from tests.harness.netns import Host, Lab

IN_LANE = os.environ.get("MESHSEC_KERNEL_LANE") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="needs a kernel with ESP: runs in the kernel lane (.ci/kernel-lane)")
    for item in items:
        if item.get_closest_marker("kernelvm") is not None and not IN_LANE:
            item.add_marker(skip)


@pytest.fixture
def netns_prefix() -> str:
    return "kx-"


@pytest.fixture
def host(lab: Lab) -> Host:
    return lab.host("a")


@pytest.fixture
async def dp(lab: Lab, host: Host) -> AsyncIterator[KernelDataPlane]:
    plane = KernelDataPlane(netns=host.ns, scratch_netns=f"{lab.run_prefix}probe")
    await plane.start()
    try:
        yield plane
    finally:
        await plane.flush_owned()
        await plane.close()


async def next_event(events: AsyncIterator[DataPlaneEvent], timeout: float) -> DataPlaneEvent:
    return await asyncio.wait_for(anext(events), timeout)
