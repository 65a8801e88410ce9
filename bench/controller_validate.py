#!/usr/bin/env python3
"""Controller validation cost: one dry-run Apply of N Sites, and a Get issued while it runs.

    .venv/bin/python bench/controller_validate.py [--sizes 1000,2000,3000,27000]

A real controller (in this process, embedded store in a temp dir) on its admin socket. Each Site
has one /30 from 198.18.0.0/15, none overlapping, so every Site is checked against all the others.

  apply   wall time of the dry-run Apply (read, parse, cross-resource checks, response)
  get     latency of a Get sent 50 ms after the Apply: how long the event loop was unavailable
  bytes   size of the ApplyRequest
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from meshsec.v1 import admin_pb2  # noqa: E402
from tests.controller.ctl_harness import admin_channel, admin_stub, apply, running_controller, to_resource  # noqa: E402
from tests.controller.test_mesh_support import site  # noqa: E402


def _prefix(i: int) -> str:
    return f"198.{18 + (i >> 14)}.{(i >> 6) & 0xFF}.{(i & 0x3F) * 4}/30"  # i < 32767


async def measure(count: int) -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory() as workdir:
        async with running_controller(Path(workdir)) as ctl:
            await apply(ctl, site("probe", ["198.19.255.252/30"]))
            request = admin_pb2.ApplyRequest(
                resources=[to_resource(site(f"s{i}", [_prefix(i)])) for i in range(count)], dry_run=True
            )
            async with admin_channel(ctl) as channel:
                stub = admin_stub(channel)

                async def get_later() -> float:
                    await asyncio.sleep(0.05)
                    started = time.perf_counter()
                    await stub.Get(admin_pb2.GetRequest(kind="Site", name="probe"), timeout=600)
                    return time.perf_counter() - started

                started = time.perf_counter()
                getter = asyncio.create_task(get_later())
                await stub.Apply(request, timeout=600)
                took = time.perf_counter() - started
                return took, await getter, request.ByteSize()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,2000,3000,27000")
    args = parser.parse_args()
    print("| Sites | request bytes | dry-run Apply (s) | concurrent Get (s) |")
    print("|---:|---:|---:|---:|")
    for count in (int(s) for s in args.sizes.split(",")):
        took, get, size = asyncio.run(measure(count))
        print(f"| {count} | {size} | {took:.2f} | {get:.3f} |", flush=True)


if __name__ == "__main__":
    main()
