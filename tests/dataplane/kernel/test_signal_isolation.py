"""pyroute2 reaches namespaces through forked helper processes and stops them with SIGTERM. A child
that inherited asyncio's signal wakeup fd once made the agent stop itself right after the kernel
probe (seen as `meshsec-agent --config` with `dataplane: auto` exiting within a second)."""

from __future__ import annotations

import asyncio
import signal

import pytest

from meshsec.agent.dataplane.kernel.capabilities import detect
from tests.harness.netns import Lab

pytestmark = pytest.mark.netns


async def test_probe_children_do_not_signal_the_agents_event_loop(lab: Lab) -> None:
    loop = asyncio.get_running_loop()
    told_to_stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, told_to_stop.set)
    try:
        await detect(f"{lab.run_prefix}sig")
        await asyncio.sleep(0.5)  # a stray wakeup byte would be handled by now
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
    assert not told_to_stop.is_set()
