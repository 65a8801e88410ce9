"""Per-operation latency of the two stores: put, get, 5-op transaction, sequential, one client.

    /work/venv/bin/python bench/store_latency.py [--ops 2000]

The embedded store fsyncs every write to a file in a temporary directory (pass --dir to pick the
disk); etcd is a real single-member server on 127.0.0.1 started by tests/harness/etcd.py.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from meshsec.controller.store import Compare, EmbeddedStore, Put, Store
from meshsec.controller.store.etcd import EtcdStore
from tests.harness.etcd import EtcdServer

VALUE = b'{"apiVersion":"meshsec.io/v1","kind":"Node","metadata":{"name":"n"},"spec":{}}' * 4


async def measure(ops: int, op: Callable[[int], Awaitable[object]]) -> list[float]:
    for i in range(min(50, ops)):  # warm up connections, caches and the file
        await op(i)
    samples = []
    for i in range(ops):
        start = time.perf_counter()
        await op(i)
        samples.append(time.perf_counter() - start)
    return samples


async def bench(name: str, store: Store, ops: int) -> list[tuple[str, str, list[float]]]:
    p = "/bench/"
    rows = [(name, "put", await measure(ops, lambda i: store.put(f"{p}k{i % 100}", VALUE)))]
    rows.append((name, "get", await measure(ops, lambda i: store.get(f"{p}k{i % 100}"))))

    async def txn(i: int) -> object:
        guard = await store.get(f"{p}k0")
        assert guard is not None
        puts = [Put(f"{p}batch{i % 20}/{j}", VALUE) for j in range(5)]
        result = await store.txn([Compare.mod_revision(f"{p}k0", guard.mod_revision)], puts)
        assert result.succeeded
        return result

    rows.append((name, "get+txn(5 puts)", await measure(ops, txn)))
    return rows


def table(rows: list[tuple[str, str, list[float]]]) -> str:
    lines = [f"{'store':<10} {'operation':<16} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'ops/s':>8}"]
    for store, op, samples in rows:
        ordered = sorted(samples)
        p50 = ordered[len(ordered) // 2] * 1e3
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3
        mean = statistics.fmean(samples)
        lines.append(f"{store:<10} {op:<16} {p50:8.3f} {p99:8.3f} {mean * 1e3:8.3f} {1 / mean:8.0f}")
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--dir", type=Path, default=None, help="where the embedded store's file goes")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as workdir:
        async with await EmbeddedStore.open(Path(workdir) / "bench.log") as embedded:
            rows += await bench("embedded", embedded, args.ops)
        with EtcdServer.start(Path(workdir)) as server:
            async with await EtcdStore.connect([server.endpoint]) as etcd:
                rows += await bench("etcd", etcd, args.ops)
    print(f"{args.ops} sequential operations each, one client, value {len(VALUE)} bytes")
    print(table(rows))


if __name__ == "__main__":
    asyncio.run(main())
