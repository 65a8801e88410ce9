"""XFRM install rate: meshsec's kernel data plane vs `ip -batch` for the same set of policies/SAs.

Runs in a throwaway network namespace (kx-bench-<pid>) and prints a table. Policies work on any
kernel with XFRM; SAs need ESP (`--sas`; run it inside the kernel lane:
`.ci/kernel-lane -- /work/venv/bin/python bench/xfrm_install.py --sas`). The policy rows compare
policies alone (the plane is built with `route_table=None`); "+ routes" rows add what the agent
really does for outbound tunnel policies: one route per remote prefix in table 220.

    python bench/xfrm_install.py [--count 2000] [--sas] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import resource
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator

from meshsec.agent.dataplane.api import (
    Direction,
    Encryption,
    IpsecProtocol,
    Mode,
    Policy,
    SaId,
    SecurityAssociation,
    Template,
    TrafficSelector,
)
from meshsec.agent.dataplane.kernel.backend import KernelDataPlane
from meshsec.agent.dataplane.kernel.mtu import tunnel_mtu
from meshsec.agent.dataplane.kernel.routes import DEFAULT_ROUTE_TABLE
from meshsec.common.secrets import Secret

A, B = ipaddress.IPv4Address("198.18.0.1"), ipaddress.IPv4Address("198.18.0.2")
KEY = "0x" + "11" * 20  # bench-only key material, never used for traffic
MARK = "mark 0 mask 0x4d530000"
LINK = "kxb0"  # towards the (absent) peer B, so routes to it have a next hop


def _selectors(n: int) -> Iterator[TrafficSelector]:
    base = int(ipaddress.IPv4Address("198.19.0.0"))
    for i in range(n):
        yield TrafficSelector(ipaddress.ip_network(f"{ipaddress.IPv4Address(base + i)}/32"),
                              ipaddress.ip_network(f"{ipaddress.IPv4Address(base + 0x8000 + i)}/32"))


def _policies(n: int) -> list[Policy]:
    return [Policy(sel, Direction.OUT, template=Template(IpsecProtocol.ESP, Mode.TUNNEL, A, B, 1 + i % 1000))
            for i, sel in enumerate(_selectors(n))]


def _sas(n: int) -> list[SecurityAssociation]:
    key = Secret(bytes.fromhex(KEY[2:]))
    return [SecurityAssociation(SaId(B, 0x1000 + i, IpsecProtocol.ESP), A, Direction.OUT, Mode.TUNNEL,
                                1 + i % 1000, Encryption("aes-gcm-16", key, 128), esn=False, replay_window=32)
            for i in range(n)]


def _policy_batch(policies: list[Policy]) -> str:
    return "".join(
        f"xfrm policy add src {p.selector.src} dst {p.selector.dst} dir out priority 0 "
        f"tmpl src {A} dst {B} proto esp reqid {p.template.reqid} mode tunnel {MARK}\n"
        for p in policies if p.template is not None)


def _route_batch(policies: list[Policy]) -> str:
    mtu = tunnel_mtu(1500, ipv6_outer=False, udp_encap=True)
    t = DEFAULT_ROUTE_TABLE
    return _policy_batch(policies) + "".join(
        f"route replace {p.selector.dst} via {B} dev {LINK} table {t.table} proto {t.protocol} mtu {mtu}\n"
        for p in policies)


def _sa_batch(sas: list[SecurityAssociation]) -> str:
    return "".join(
        f"xfrm state add src {A} dst {B} proto esp spi {sa.id.spi} reqid {sa.reqid} mode tunnel "
        f"replay-window 32 aead 'rfc4106(gcm(aes))' {KEY} 128 {MARK}\n" for sa in sas)


Timing = tuple[float, float]  # (wall seconds, CPU seconds incl. kernel time of the installer)


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _ip_batch(ns: str, commands: str) -> Timing:
    with tempfile.NamedTemporaryFile("w", suffix=".batch") as f:
        f.write(commands)
        f.flush()
        start, cpu = time.perf_counter(), _child_cpu()
        subprocess.run(["ip", "-n", ns, "-batch", f.name], check=True)
        return time.perf_counter() - start, _child_cpu() - cpu


def _flush(ns: str) -> None:
    # The bench namespace is ours alone, so flushing all of it is right here (never in the agent).
    subprocess.run(["ip", "-n", ns, "xfrm", "policy", "flush"], check=True)
    subprocess.run(["ip", "-n", ns, "xfrm", "state", "flush"], check=True)
    subprocess.run(["ip", "-n", ns, "route", "flush", "table", str(DEFAULT_ROUTE_TABLE.table)],
                   check=False, stderr=subprocess.DEVNULL)  # "table does not exist" before the first route


async def _timed(items: list[object], install: Callable[[object], Awaitable[None]],
                 concurrency: int) -> Timing:
    # Netlink requests are processed in the sender's context, so process CPU time includes the
    # kernel's share; on a busy machine it is steadier than wall time.
    start, cpu = time.perf_counter(), time.process_time()
    if concurrency <= 1:
        for item in items:
            await install(item)
    else:
        for i in range(0, len(items), concurrency):
            await asyncio.gather(*(install(item) for item in items[i:i + concurrency]))
    return time.perf_counter() - start, time.process_time() - cpu


async def run(count: int, with_sas: bool, concurrency: int) -> list[tuple[str, str, int, Timing]]:
    ns = f"kx-bench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    for cmd in (f"link add {LINK} mtu 1500 type veth peer name kxb1", f"addr add {A}/24 dev {LINK}",
                f"link set {LINK} up", "link set kxb1 up", f"rule add table {DEFAULT_ROUTE_TABLE.table} "
                f"priority {DEFAULT_ROUTE_TABLE.rule_priority}"):
        subprocess.run(["ip", "-n", ns, *cmd.split()], check=True)
    rows: list[tuple[str, str, int, Timing]] = []
    try:
        dp = KernelDataPlane(netns=ns, scratch_netns=f"{ns}-probe", route_table=None)
        await dp.start()
        try:
            kinds: list[tuple[str, list[object], Callable[[object], Awaitable[None]], str]] = [
                ("policies", list(_policies(count)), dp.ensure_policy, _policy_batch(_policies(count)))]  # type: ignore[list-item]
            if with_sas:
                if not dp.capabilities.esp:
                    raise SystemExit("--sas needs a kernel with ESP (run inside .ci/kernel-lane)")
                kinds.append(("SAs", list(_sas(count)), dp.add_sa, _sa_batch(_sas(count))))  # type: ignore[arg-type]
            for kind, items, install, batch in kinds:
                rows.append((kind, "ip -batch", count, _ip_batch(ns, batch)))
                _flush(ns)
                rows.append((kind, "meshsec sequential", count, await _timed(items, install, 1)))
                _flush(ns)
                rows.append((kind, f"meshsec {concurrency} in flight", count,
                             await _timed(items, install, concurrency)))
                _flush(ns)
                if kind == "policies":
                    start, cpu = time.perf_counter(), time.process_time()
                    await dp.ensure_policies(items)  # type: ignore[arg-type]
                    rows.append((kind, "meshsec ensure_policies", count,
                                 (time.perf_counter() - start, time.process_time() - cpu)))
                    _flush(ns)
                    rows.append(("+ routes", "ip -batch", count, _ip_batch(ns, _route_batch(items))))  # type: ignore[arg-type]
                    _flush(ns)
                    routed = KernelDataPlane(netns=ns, capabilities=dp.capabilities)
                    await routed.start()
                    try:
                        # The routes go through `ip -batch`: count that child's CPU too.
                        start, cpu = time.perf_counter(), time.process_time() + _child_cpu()
                        await routed.ensure_policies(items)  # type: ignore[arg-type]
                        rows.append(("+ routes", "meshsec ensure_policies", count,
                                     (time.perf_counter() - start,
                                      time.process_time() + _child_cpu() - cpu)))
                        if routed.route_errors:
                            raise SystemExit(f"{routed.route_errors} routes failed")
                    finally:
                        await routed.flush_owned()
                        await routed.close()
        finally:
            await dp.close()
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--sas", action="store_true", help="also SAs (needs ESP)")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    rows = asyncio.run(run(args.count, args.sas, args.concurrency))
    print(f"kernel {os.uname().release}")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'object':<10} {'installer':<24} {'count':>7} {'seconds':>9} {'per second':>11} "
          f"{'per CPU-second':>15}")
    for kind, who, n, (wall, cpu) in rows:
        print(f"{kind:<10} {who:<24} {n:>7} {wall:>9.3f} {n / wall:>11.0f} {n / max(cpu, 1e-9):>15.0f}")


if __name__ == "__main__":
    main()
