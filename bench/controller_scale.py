#!/usr/bin/env python3
"""Controller scale: thousands of simulated agents watching their desired state, one node joins.

    /work/venv/bin/python bench/controller_scale.py [--sizes 1000,5000,10000]
        [--topologies full-mesh,hub-and-spoke] [--joins 5] [--auth certificate|psk]
        [--bdp-probe] [--no-pin] [--write]

--write replaces the table in docs/benchmarks.md, section "Controller" (the prose around it is
kept as is below the heading's first paragraph).

For each size and topology: the store (embedded, a temp file) is filled with one Site, one
MeshPolicy and N Nodes, the controller CA is created in it and a client certificate issued per
node (as enrollment would; this skips N enrollments), then `meshsec-controller` starts as its
own process on that store. N lightweight agents in this process (one grpc.aio mTLS channel and
one WatchDesiredState stream each) resume at the version of the loaded state, as after a
controller restart, so the run measures change propagation rather than N initial snapshots.
Then a node joins (AdminService.Apply of one Node over the admin socket) `--joins` times:

  join->all  time from the Apply call until every affected agent has received its delta
             (full mesh: all N; hub-and-spoke: the hubs), median over the joins
  ctl CPU    controller process CPU (utime+stime from /proc) per join
  agents CPU this process's CPU per join: the simulated agents receiving their deltas
  bytes      serialized delta bytes received by all agents per join
  RSS        controller resident memory with all agents connected
  load       1-minute load average at the end of the run (the machine may be shared)

Real agents run on their own hosts; here they share the machine with the controller. With two or
more CPUs the controller is pinned to CPU 0 and this process (the simulated agents) to the others,
so neither preempts the other mid-join (`--no-pin` lets the scheduler mix them, as earlier runs
did: ~40% more wall time per join on 2 cores). Addresses: node underlay 198.18.0.0/16, site
prefix 198.19.0.0/16, loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# Thousands of channels closing at the end would each log a GOAWAY at grpc's default verbosity.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509 import CertificateSigningRequestBuilder, Name, NameAttribute  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402
from google.protobuf import struct_pb2  # noqa: E402

from meshsec.controller.ca import CertificateAuthority  # noqa: E402
from meshsec.controller.resources import Kind  # noqa: E402
from meshsec.controller.service.keys import Keys  # noqa: E402
from meshsec.controller.service.secrets import TunnelSecrets  # noqa: E402
from meshsec.controller.store import EmbeddedStore, Put  # noqa: E402
from meshsec.v1 import admin_pb2, admin_pb2_grpc, agent_pb2, agent_pb2_grpc, common_pb2  # noqa: E402

API = "meshsec.io/v1alpha1"
HUBS = 4
TICK = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _address(i: int) -> str:
    return str(IPv4Address("198.18.0.0") + 10 + i)


def _doc(kind: str, name: str, spec: dict[str, object], labels: dict[str, str] | None = None) -> bytes:
    meta = {
        "name": name,
        "labels": labels or {},
        "annotations": {},
        "uid": str(uuid.uuid4()),
        "generation": 1,
        "creationTimestamp": "2026-01-01T00:00:00Z",
    }
    return json.dumps({"apiVersion": API, "kind": kind, "metadata": meta, "spec": spec}).encode()


def _node_spec(i: int) -> dict[str, object]:
    return {"site": "dc1", "endpoints": {"private": [_address(i)]}, "identity": {"ikeId": f"n{i:05d}"}}


def _labels(i: int, topology: str) -> dict[str, str]:
    return {"role": "hub"} if topology == "hub-and-spoke" and i < HUBS else {"role": "spoke"}


def _policy(topology: str, auth: str) -> dict[str, object]:
    spec: dict[str, object] = {"topology": topology, "scope": "node", "members": {}, "auth": {"method": auth}}
    if topology == "hub-and-spoke":
        spec["hubs"] = {"selector": {"matchLabels": {"role": "hub"}}}
    return spec


@dataclass
class Credentials:
    ca_pem: bytes
    nodes: list[tuple[bytes, bytes]]  # (key PEM, certificate PEM) per node
    revision: int


async def prepare(path: Path, n: int, topology: str, auth: str) -> Credentials:
    keys = Keys()
    store = await EmbeddedStore.open(path, compact_after_records=10**9)
    try:
        ca = await CertificateAuthority.load_or_create(store, keys.prefix, None)
        secrets = TunnelSecrets(store, keys)
        await secrets.start()
        await secrets.stop()
        ops = [
            Put(
                keys.resource(Kind.SITE, "dc1"),
                _doc("Site", "dc1", {"prefixes": ["198.19.0.0/16"], "gatewaySelector": {}}),
            ),
            Put(keys.resource(Kind.MESH_POLICY, "mesh"), _doc("MeshPolicy", "mesh", _policy(topology, auth))),
        ]
        ops += [
            Put(
                keys.resource(Kind.NODE, f"n{i:05d}"),
                _doc("Node", f"n{i:05d}", _node_spec(i), _labels(i, topology)),
            )
            for i in range(n)
        ]
        for start in range(0, len(ops), 2000):
            await store.txn([], ops[start : start + 2000])
        nodes = []
        for i in range(n):
            key = ec.generate_private_key(ec.SECP256R1())
            csr = (
                CertificateSigningRequestBuilder()
                .subject_name(Name([NameAttribute(NameOID.COMMON_NAME, f"n{i:05d}")]))
                .sign(key, hashes.SHA256())
            )
            issued = ca.sign_node(
                csr,
                f"n{i:05d}",
                f"n{i:05d}",
                datetime.timedelta(hours=2),
                datetime.datetime.now(datetime.UTC),
            )
            key_pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            nodes.append((key_pem, issued.certificate_pem.encode()))
        return Credentials(ca.certificate_pem.encode(), nodes, store.revision)
    finally:
        await store.close()


@dataclass
class Agents:
    target_version: int = 0
    waiting: set[int] = field(default_factory=set)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    bytes: int = 0
    connected: int = 0
    in_sync: asyncio.Event = field(default_factory=asyncio.Event)
    total: int = 0
    errors: list[str] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)  # last complete version per agent
    arrived: list[float] = field(default_factory=list)  # when it arrived (monotonic)
    options: list[tuple[str, int]] = field(default_factory=list)  # grpc channel options


async def run_agent(
    i: int,
    target: str,
    creds: Credentials,
    resume: int,
    agents: Agents,
    gate: asyncio.Semaphore,
    channels: list[grpc.aio.Channel],
) -> None:
    key_pem, cert_pem = creds.nodes[i]
    async with gate:
        channel = grpc.aio.secure_channel(
            target, grpc.ssl_channel_credentials(creds.ca_pem, key_pem, cert_pem), options=agents.options
        )
        channels.append(channel)
        call = agent_pb2_grpc.AgentServiceStub(channel).WatchDesiredState(
            agent_pb2.WatchRequest(node_name=f"n{i:05d}", resume_from_version=resume)
        )
        first = await call.read()
    if first is grpc.aio.EOF or first.kind != agent_pb2.UPDATE_KIND_DELTA or first.upserted_tunnels:
        agents.errors.append(f"n{i:05d}: did not resume in sync: {first}")
    agents.connected += 1
    if agents.connected == agents.total:
        agents.in_sync.set()
    while True:
        try:
            message = await call.read()
        except grpc.aio.AioRpcError:
            return
        if message is grpc.aio.EOF:
            return
        agents.bytes += message.ByteSize()
        if message.more:
            continue
        agents.versions[i], agents.arrived[i] = message.version, time.monotonic()
        if message.version >= agents.target_version and i in agents.waiting:
            agents.waiting.discard(i)
            if not agents.waiting:
                agents.done.set()


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _rss_mib(pid: int) -> float:
    match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) / 1024 if match else 0.0


def _cpu_split(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """(controller CPUs, agents CPUs), or (None, None) to leave placement to the scheduler."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


def _pin_this_process(cpus: set[int]) -> None:
    # Every thread: grpc started its own before this ran, and affinity is per thread.
    for task in Path("/proc/self/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)


async def one_run(
    n: int, topology: str, joins: int, auth: str, bdp_probe: bool, pin: bool
) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="ctl-bench-") as tmp:
        work = Path(tmp)
        t0 = time.monotonic()
        creds = await prepare(work / "store.log", n, topology, auth)
        prepared = time.monotonic() - t0
        port, sock = _free_port(), work / "admin.sock"
        controller_cpus, agent_cpus = _cpu_split(pin)
        if agent_cpus is not None:
            _pin_this_process(agent_cpus)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "meshsec.controller.cli",
                "--store",
                f"embedded:{work / 'store.log'}",
                "--data-dir",
                str(work),
                "--listen",
                f"127.0.0.1:{port}",
                "--bootstrap-listen",
                f"127.0.0.1:{_free_port()}",
                "--admin-socket",
                str(sock),
                "--metrics",
                "",
                "--log-level",
                "WARNING",
                "--replica",
                "bench",
            ],
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=(lambda: os.sched_setaffinity(0, controller_cpus)) if controller_cpus else None,
        )
        channels: list[grpc.aio.Channel] = []
        tasks: list[asyncio.Task[None]] = []
        try:
            assert proc.stdout is not None
            await asyncio.to_thread(proc.stdout.readline)
            agents = Agents(
                total=n,
                versions=[0] * n,
                arrived=[0.0] * n,
                options=[] if bdp_probe else [("grpc.http2.bdp_probe", 0)],
            )
            gate = asyncio.Semaphore(256)
            t0 = time.monotonic()
            tasks = [
                asyncio.create_task(
                    run_agent(i, f"127.0.0.1:{port}", creds, creds.revision, agents, gate, channels)
                )
                for i in range(n)
            ]
            await asyncio.wait_for(agents.in_sync.wait(), 600)
            connect_s = time.monotonic() - t0
            # Real agents are separate processes; keep this one's collector from rescanning 10k
            # channels while it measures (the controller tunes its own, see meshsec.controller.cli).
            gc.collect()
            gc.freeze()
            gc.set_threshold(50_000, 20, 100)
            if agents.errors:
                raise RuntimeError(agents.errors[0])
            rss_connected = _rss_mib(proc.pid)
            latencies, cpus, agent_cpus, sizes = [], [], [], []
            async with grpc.aio.insecure_channel(f"unix:{sock}") as admin:
                stub = admin_pb2_grpc.AdminServiceStub(admin)
                for j in range(joins):
                    i = n + j
                    spec = struct_pb2.Struct()
                    spec.update(_node_spec(i))
                    resource = common_pb2.Resource(api_version=API, kind="Node", spec=spec)
                    resource.metadata.name = f"n{i:05d}"
                    resource.metadata.labels.update(_labels(i, topology))
                    affected = range(n) if topology == "full-mesh" else range(HUBS)
                    agents.done.clear()
                    agents.target_version = 1 << 62  # known once Apply returns, see below
                    bytes_before, cpu_before = agents.bytes, _cpu(proc.pid)
                    agent_cpu_before = time.process_time()
                    started = time.monotonic()
                    applied = await stub.Apply(admin_pb2.ApplyRequest(resources=[resource]), timeout=60)
                    # The join's deltas carry the store revision of the write as their version.
                    target = int(applied.results[0].resource.metadata.resource_version)
                    agents.target_version = target
                    agents.waiting = {i for i in affected if agents.versions[i] < target}
                    if agents.waiting:
                        await asyncio.wait_for(agents.done.wait(), 120)
                    latencies.append(max(agents.arrived[i] for i in affected) - started)
                    agent_cpus.append(time.process_time() - agent_cpu_before)
                    await asyncio.sleep(0.3)  # let the controller finish writing (CPU accounting)
                    cpus.append(_cpu(proc.pid) - cpu_before)
                    sizes.append(agents.bytes - bytes_before)
            return {
                "nodes": n,
                "topology": topology,
                "affected": n if topology == "full-mesh" else HUBS,
                "prepare_s": prepared,
                "connect_s": connect_s,
                "join_p50_ms": statistics.median(latencies) * 1000,
                "join_max_ms": max(latencies) * 1000,
                "join_ms": [round(x * 1000) for x in latencies],
                "cpu_ms": statistics.median(cpus) * 1000,
                "agents_cpu_ms": statistics.median(agent_cpus) * 1000,
                "bytes": statistics.median(sizes),
                "rss_mib": rss_connected,
                "load": os.getloadavg()[0],
                "pinned": controller_cpus is not None,
            }
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for channel in channels:
                await channel.close()
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def table(rows: list[dict[str, object]]) -> str:
    head = (
        "| nodes | topology | affected agents | join->all p50 (ms) | max (ms) | ctl CPU/join (ms) "
        "| agents CPU/join (ms) | bytes/join | ctl RSS (MiB) | agents connect (s) | load |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r['nodes']} | {r['topology']} | {r['affected']} "
            f"| {r['join_p50_ms']:.0f} | {r['join_max_ms']:.0f} "
            f"| {r['cpu_ms']:.0f} | {r['agents_cpu_ms']:.0f} | {r['bytes']:.0f} | {r['rss_mib']:.0f} "
            f"| {r['connect_s']:.1f} | {r['load']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,5000,10000")
    parser.add_argument("--topologies", default="full-mesh,hub-and-spoke")
    parser.add_argument("--joins", type=int, default=5)
    parser.add_argument("--auth", choices=("certificate", "psk"), default="certificate")
    parser.add_argument(
        "--bdp-probe",
        action="store_true",
        help="agents' channels with HTTP/2 BDP probing (grpc's default, off in meshsec-agent): each "
        "delta then draws a PING the controller must answer, a second write per agent",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin the controller to CPU 0 and the simulated agents to the other CPUs",
    )
    parser.add_argument("--write", action="store_true", help="put the table into docs/benchmarks.md")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a single row, as JSON
    args = parser.parse_args()
    if args.one:
        row = asyncio.run(
            one_run(int(args.sizes), args.topologies, args.joins, args.auth, args.bdp_probe, not args.no_pin)
        )
        print(json.dumps(row), flush=True)
        return
    rows = []
    for n in args.sizes.split(","):
        for topology in args.topologies.split(","):
            # Each row in a fresh process: 10k closed channels of an earlier row, and the heap
            # frozen around them, slowed the next row's agents (a 10k join measured 1.5 s after
            # the 1k and 5k rows, 0.7-0.9 s on its own).
            flags = ["--bdp-probe"] * args.bdp_probe + ["--no-pin"] * args.no_pin
            command = [sys.executable, __file__, "--one", "--sizes", n, "--topologies", topology]
            command += ["--joins", str(args.joins), "--auth", args.auth, *flags]
            out = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    if args.write:
        write_table(table(rows))


def write_table(text: str) -> None:
    """Replace the table under "## Controller" in docs/benchmarks.md (append the section if absent)."""
    path = REPO / "docs" / "benchmarks.md"
    doc = path.read_text() if path.exists() else "# Benchmarks\n"
    heading = "## Controller\n"
    if heading not in doc:
        doc = doc.rstrip() + "\n\n" + heading + "\n" + text + "\n"
    else:
        start = doc.index(heading)
        end = doc.find("\n## ", start + len(heading))
        section = doc[start : end if end != -1 else len(doc)]
        old = re.search(r"^\| nodes \|.*?(?=\n(?!\|)|\Z)", section, re.S | re.M)
        section = section.replace(old.group(0), text) if old else section.rstrip() + "\n\n" + text + "\n"
        doc = doc[:start] + section + (doc[end:] if end != -1 else "")
    path.write_text(doc)


if __name__ == "__main__":
    main()
