"""Mesh index at scale: cost of one node join (and leave) in full-mesh and hub-and-spoke meshes.

For N existing nodes it measures, per join: wall and CPU time of `MeshIndex.apply` (delta
computation, validation included), the number of tunnel ends in the returned deltas, the number
of nodes touched, and the memory the index holds for N nodes (tracemalloc, measured separately so that
tracing does not slow the timed runs). Usage: python bench/mesh_scale.py [--sizes 1000,5000,10000]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
import tracemalloc
from typing import Any

from meshsec.controller.mesh import Delete, MeshIndex, Upsert
from meshsec.controller.resources import parse_resource
from meshsec.controller.resources.model import Kind, Resource

API = "meshsec.io/v1alpha1"


def _site(name: str, prefix: str) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "Site",
        "metadata": {"name": name},
        "spec": {"prefixes": [prefix], "gatewaySelector": {"matchLabels": {"role": "gateway"}}},
    }


def _node(i: int, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "Node",
        "metadata": {"name": f"node-{i:06d}", "labels": labels},
        "spec": {
            "site": f"site-{i % 4}",
            "endpoints": {
                "public": [f"198.18.{i // 250 % 256}.{i % 250 + 1}"],
                "private": [f"198.19.{i // 250 % 256}.{i % 250 + 1}"],
            },
            "identity": {"ikeId": f"node-{i:06d}.meshsec.test"},
        },
    }


def _policy(topology: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"topology": topology, "scope": "node", "members": {}, "auth": {"method": "psk"}}
    if topology == "hub-and-spoke":
        spec["hubs"] = {"selector": {"matchLabels": {"hub": "yes"}}}
    return {"apiVersion": API, "kind": "MeshPolicy", "metadata": {"name": topology}, "spec": spec}


def _resources(topology: str, n: int, hubs: int) -> list[Resource]:
    docs = [_site(f"site-{i}", f"198.19.{200 + i}.0/24") for i in range(4)] + [_policy(topology)]
    docs += [_node(i, {"hub": "yes"} if topology == "hub-and-spoke" and i < hubs else {}) for i in range(n)]
    return [parse_resource(d) for d in docs]


def _build(resources: list[Resource]) -> MeshIndex:
    index = MeshIndex()
    index.apply((Upsert(r) for r in resources), deltas=False)
    return index


def run(topology: str, n: int, hubs: int, joins: int) -> dict[str, Any]:
    resources = _resources(topology, n, hubs)
    tracemalloc.start()
    gc.collect()
    base = tracemalloc.get_traced_memory()[0]
    index = _build(resources)
    gc.collect()
    memory = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del index
    gc.collect()

    t0 = time.perf_counter()
    index = _build(resources)
    build_s = time.perf_counter() - t0
    # A long-running controller keeps its index in the permanent GC generation so that each
    # change's short-lived tunnel objects do not trigger rescans of the whole index.
    gc.freeze()
    join_ms, join_cpu_ms, leave_ms, ends, touched = [], [], [], 0, 0
    for j in range(joins):
        joiner = parse_resource(_node(n + j, {}))
        t0, c0 = time.perf_counter(), time.process_time()
        deltas = index.apply([Upsert(joiner)])
        join_ms.append((time.perf_counter() - t0) * 1e3)
        join_cpu_ms.append((time.process_time() - c0) * 1e3)
        ends = sum(len(d.upserts) + len(d.removals) for d in deltas.values())
        touched = len(deltas)
        t0 = time.perf_counter()
        index.apply([Delete(Kind.NODE, joiner.metadata.name)])
        leave_ms.append((time.perf_counter() - t0) * 1e3)
    gc.unfreeze()
    t0 = time.perf_counter()
    full = index.desired_tunnels(resources[-1].metadata.name)
    list_ms = (time.perf_counter() - t0) * 1e3
    return {
        "topology": topology,
        "n": n,
        "build_s": build_s,
        "join_ms": statistics.median(join_ms),
        "join_cpu_ms": statistics.median(join_cpu_ms),
        "leave_ms": statistics.median(leave_ms),
        "ends": ends,
        "us_per_end": statistics.median(join_cpu_ms) * 1e3 / max(ends, 1),
        "touched": touched,
        "mem_mb": memory / 2**20,
        "list_ms": list_ms,
        "list_len": len(full),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,5000,10000")
    parser.add_argument("--hubs", type=int, default=2)
    parser.add_argument("--joins", type=int, default=5)
    args = parser.parse_args()
    header = (
        f"{'topology':<14} {'nodes':>6} {'build s':>8} {'join ms':>8} {'join CPU':>8} {'leave ms':>8} "
        f"{'ends':>6} {'us/end':>7} {'nodes touched':>13} {'index MB':>8} {'list ms':>8} {'list len':>8}"
    )
    print(header)
    print("-" * len(header))
    for topology in ("full-mesh", "hub-and-spoke"):
        for n in (int(s) for s in args.sizes.split(",")):
            r = run(topology, n, args.hubs, args.joins)
            cells = [
                f"{r['topology']:<14}",
                f"{r['n']:>6}",
                f"{r['build_s']:>8.2f}",
                f"{r['join_ms']:>8.2f}",
                f"{r['join_cpu_ms']:>8.2f}",
                f"{r['leave_ms']:>8.2f}",
                f"{r['ends']:>6}",
                f"{r['us_per_end']:>7.1f}",
                f"{r['touched']:>13}",
                f"{r['mem_mb']:>8.1f}",
                f"{r['list_ms']:>8.2f}",
                f"{r['list_len']:>8}",
            ]
            print(" ".join(cells), flush=True)
    print(f"load average at end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(
        "join/leave: median of --joins runs (wall ms; join CPU: process CPU ms, steadier on a shared "
        "machine; us/end is from it), validation included; ends: tunnel ends in the deltas of one "
        "join; index MB: memory the index adds for N nodes on top of the parsed resources (no tunnels "
        "are stored); list: desired_tunnels() of one node."
    )


if __name__ == "__main__":
    main()
