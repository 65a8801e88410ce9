#!/usr/bin/env python3
"""IKE handshake capacity: IKE_SA + first CHILD_SA per second, and responder CPU per SA.

One initiator - meshsec's own IKE engine and asyncio adapter, in its own namespace - drives
the same number of handshakes (PSK, aes256gcm16-prfsha256-x25519, ESP aes256gcm16, tunnel) with
the same window of concurrent handshakes against each responder in turn, in the same run:

  meshsec   `meshsec-agent --config` (standalone) with the userspace data plane, which installs
            every CHILD_SA (and with `--meshsec-dataplane none` only records it)
  strongSwan charon-systemd 5.9.8 with kernel-libipsec, which installs every CHILD_SA too

With --hybrid, two more rows run the post-quantum hybrid aes256gcm16-prfsha256-x25519-ke1_mlkem768
(X25519 in IKE_SA_INIT, ML-KEM-768 in IKE_INTERMEDIATE, RFC 9370) against meshsec and against
strongSwan 6.1 from the Debian unstable chroot of scripts/strongswan-pq-peer.sh; the classical
rows stay.

Responder CPU is utime+stime of the responder process from /proc/PID/stat (all its threads)
across the measured handshakes, after a warm-up batch; rate is completed handshakes per second
of wall time at the initiator. Both ends share this machine's cores, so the initiator's own
CPU (also printed) competes with the responder's. DoS protection (COOKIEs) is off on both
responders: this measures the handshake, not the cookie path.

    sudo /work/venv/bin/python bench/ike_handshake.py [--count 500] [--window 32] [--rounds 3]

Namespaces are "io-..." and are removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

IKE_PROPOSAL = "aes256gcm16-prfsha256-x25519"
HYBRID_PROPOSAL = "aes256gcm16-prfsha256-x25519-ke1_mlkem768"
ESP_PROPOSAL = "aes256gcm16"
INI_UNDER, RSP_UNDER = "198.18.80.1", "198.18.80.2"
INI_INNER, RSP_INNER = "198.19.80.1", "198.19.80.2"
INI_ID, RSP_ID = "bench-initiator.test", "bench-responder.test"
PSK = "bench-psk-0123456789abcdef"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Processes under test run at this niceness, both responders alike, so that other load on a
# shared machine disturbs them less.
NICE = -10


# ------------------------------------------------------------------ the initiator (in its namespace)


async def drive(count: int, window: int, timeout: float, proposal: str = IKE_PROPOSAL) -> dict[str, Any]:
    """Runs `count` handshakes with at most `window` in flight; returns counts and timings."""
    from meshsec.agent.adapters.ike import AdapterSettings, IkeAdapter, SaRecord
    from meshsec.agent.ike.address import Address
    from meshsec.agent.ike.config import ChildConfig, IkeConfig, RetransmitConfig
    from meshsec.agent.ike.events import ChildSaEstablished, ChildSaFailed, Event, IkeSaDeleted, IkeSaFailed
    from meshsec.agent.ike.ts import Ts
    from meshsec.common.secrets import Secret

    config = IkeConfig(
        "bench", INI_ID, RSP_ID, Secret(PSK), proposal,
        children=(ChildConfig("net", (Ts.from_cidr(f"{INI_INNER}/32"),), (Ts.from_cidr(f"{RSP_INNER}/32"),),
                              ESP_PROPOSAL),),
        retransmit=RetransmitConfig(timeout=2.0, base=1.5, tries=3),
        send_initial_contact=False,  # else each new SA would make the responder drop the previous ones
    )  # fmt: skip
    done = asyncio.Event()
    results = {"ok": 0, "failed": 0}
    reasons: dict[str, int] = {}
    in_flight = asyncio.Semaphore(window)
    finished = 0

    latencies: list[float] = []

    def on_event(record: SaRecord, ev: Event) -> None:
        nonlocal finished
        if isinstance(ev, ChildSaEstablished):
            results["ok"] += 1
            latencies.append(time.time() - record.created)
        elif isinstance(ev, (IkeSaFailed, ChildSaFailed, IkeSaDeleted)):
            results["failed"] += 1
            reason = getattr(ev, "reason", type(ev).__name__)
            reasons[reason] = reasons.get(reason, 0) + 1
        else:
            return
        finished += 1
        in_flight.release()
        if finished >= count:
            done.set()

    adapter = IkeAdapter(
        lambda local, remote: [], settings=AdapterSettings(bind=(INI_UNDER,)), on_event=on_event
    )
    await adapter.start()
    cpu0 = os.times()
    t0 = time.perf_counter()

    async def run_all() -> None:
        for _ in range(count):
            await in_flight.acquire()
            await adapter.initiate(config, Address(RSP_UNDER, 500), Address(INI_UNDER, 500))
        await done.wait()

    with contextlib.suppress(TimeoutError):  # a stuck responder shows as missing handshakes
        await asyncio.wait_for(run_all(), timeout)
    elapsed = time.perf_counter() - t0
    cpu1 = os.times()
    await adapter.close(graceful=False)
    return {
        **results,
        "elapsed": elapsed,
        "initiator_cpu": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
        "reasons": reasons,
        "retransmits": sum(rec.sa.stats["retransmits"] for rec in adapter.records.values()),
        "latency_ms": [1000 * x for x in sorted(latencies)],
    }


# ------------------------------------------------------------------ orchestration (root namespace)


@dataclass
class Measured:
    responder: str
    count: int
    ok: int
    failed: int
    elapsed: float
    responder_cpu: float
    initiator_cpu: float
    retransmits: int
    latency_ms: list[float]

    def latency(self, q: float) -> float:
        """Handshake latency quantile (initiate -> CHILD_SA established), in ms."""
        lat = self.latency_ms
        return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    @property
    def cpu_per_sa_ms(self) -> float:
        return 1000 * self.responder_cpu / self.ok if self.ok else float("nan")

    @property
    def initiator_cpu_per_sa_ms(self) -> float:
        return 1000 * self.initiator_cpu / self.ok if self.ok else float("nan")


def process_cpu(pid: int) -> float:
    """utime + stime of the whole process (all threads), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def run_driver(host: Any, count: int, window: int, timeout: float, proposal: str) -> dict[str, Any]:
    argv = ["nice", "-n", str(NICE), sys.executable, str(Path(__file__).resolve()), "drive",
            "--count", str(count), "--window", str(window), "--timeout", str(timeout),
            "--ike-proposal", proposal]  # fmt: skip
    proc = host.run(argv, timeout=timeout + 60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"initiator failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def renice(pid: int) -> None:
    """Every thread of the responder (nice is per thread on Linux), like the initiator's `nice`."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.setpriority(os.PRIO_PROCESS, int(tid), NICE)


def measure(name: str, lab: Any, pid: int, count: int, window: int, warmup: int, proposal: str) -> Measured:
    ini = lab.hosts["ini"]
    renice(pid)
    if warmup:
        run_driver(ini, warmup, window, 60, proposal)
    time.sleep(0.3)
    cpu0 = process_cpu(pid)
    res = run_driver(ini, count, window, 120, proposal)
    time.sleep(0.3)  # let the responder finish installing the last CHILD_SAs
    cpu1 = process_cpu(pid)
    if res["failed"]:
        print(f"  {name}: {res['failed']} failed: {res['reasons']}", file=sys.stderr)
    return Measured(name, count, res["ok"], res["failed"], res["elapsed"], cpu1 - cpu0, res["initiator_cpu"],
                    res["retransmits"], res["latency_ms"])  # fmt: skip


def meshsec_responder(lab: Any, dataplane: str, tag: str, proposal: str) -> Any:
    from tests.interop.meshsec_agent import MeshsecAgent

    config = {
        "agent": {
            "bind": [RSP_UNDER], "dataplane": dataplane, "log_level": "warning", "tun_name": f"ms{tag}",
            # One initiator address opens every SA: no COOKIEs, no per-address cap in the benchmark.
            "responder": {
                "cookie_threshold": 1_000_000, "block_threshold": 1_000_000,
                "cookie_threshold_per_address": 1_000_000, "block_threshold_per_address": 1_000_000,
            },
        },
        "connections": {
            "bench": {
                "local_addrs": [RSP_UNDER], "remote_addrs": [INI_UNDER],
                "local": {"id": RSP_ID}, "remote": {"id": INI_ID}, "psk": PSK,
                "proposals": [proposal], "start_action": "wait",
                "children": {"net": {"local_ts": [f"{RSP_INNER}/32"], "remote_ts": [f"{INI_INNER}/32"],
                                     "esp_proposals": [ESP_PROPOSAL]}},
            }
        },
    }  # fmt: skip
    return MeshsecAgent(lab.hosts["rsp"], config, name=f"meshsec-{tag}").start()


def strongswan_responder(lab: Any, proposal: str, root: Path | None = None) -> Any:
    from meshsec.common.secrets import Secret
    from tests.harness.strongswan import Charon, CharonSettings, Child, Connection, Psk

    conn = Connection(
        name="bench", local_addrs=(RSP_UNDER,), remote_addrs=(INI_UNDER,), local_id=RSP_ID, remote_id=INI_ID,
        auth=Psk(Secret(PSK)), proposals=(proposal,), unique="never",
        children=(Child("net", local_ts=(f"{RSP_INNER}/32",), remote_ts=(f"{INI_INNER}/32",),
                        esp_proposals=(ESP_PROPOSAL,)),),
    )  # fmt: skip
    settings = CharonSettings(
        dos_protection=False, ikesa_table_size=4096, init_limit_half_open=0,
        log_levels={"default": 0, "ike": 0, "cfg": 0, "knl": 0, "net": 0, "esp": 0},
    )  # fmt: skip
    return Charon(lab.hosts["rsp"], [conn], settings, root=root).start()


def orchestrate(args: argparse.Namespace) -> list[Measured]:
    from tests.harness.netns import Lab
    from tests.harness.strongswan import pq_root

    rows = [("meshsec", IKE_PROPOSAL), ("meshsec-none", IKE_PROPOSAL), ("strongswan", IKE_PROPOSAL)]
    root = None
    if args.hybrid:
        root = pq_root()
        if root is None:
            raise SystemExit("--hybrid needs the strongSwan 6.1 chroot: run scripts/install.sh")
        rows += [("meshsec", HYBRID_PROPOSAL), ("strongswan61", HYBRID_PROPOSAL)]
    results: list[Measured] = []
    for rnd in range(args.rounds):
        # A fresh lab per round and responder: no responder carries the previous one's SAs.
        for kind, proposal in rows:
            if kind == "meshsec-none" and not args.with_none:
                continue
            suite = "x25519+ML-KEM-768" if proposal == HYBRID_PROPOSAL else "x25519"
            with Lab(prefix="io-") as lab:
                ini, rsp = lab.host("ini"), lab.host("rsp")
                lab.link(ini, rsp, f"{INI_UNDER}/24", f"{RSP_UNDER}/24")
                ini.add_loopback_address(f"{INI_INNER}/32")
                rsp.add_loopback_address(f"{RSP_INNER}/32")
                if kind.startswith("strongswan"):
                    charon = strongswan_responder(lab, proposal, root if kind == "strongswan61" else None)
                    version = "6.1" if kind == "strongswan61" else "5.9.8"
                    pid, label = charon.pid, f"strongSwan {version} (libipsec), {suite}"
                else:
                    dataplane = "none" if kind == "meshsec-none" else args.meshsec_dataplane
                    agent = meshsec_responder(lab, dataplane, str(rnd), proposal)
                    pid, label = agent.proc.pid, f"meshsec ({dataplane} data plane), {suite}"
                try:
                    m = measure(label, lab, pid, args.count, args.window, args.warmup, proposal)
                finally:
                    if kind.startswith("strongswan"):
                        charon.stop()
                    else:
                        agent.stop()
                results.append(m)
                print(
                    f"round {rnd + 1}: {m.responder}: {m.ok}/{m.count} in {m.elapsed:.2f}s, "
                    f"{m.rate:.0f}/s, responder {m.cpu_per_sa_ms:.2f} ms CPU/SA",
                    file=sys.stderr,
                )
    return results


def table(results: list[Measured]) -> str:
    by: dict[str, list[Measured]] = {}
    for m in results:
        by.setdefault(m.responder, []).append(m)
    lines = [
        "| responder | rounds | SAs ok/attempted | IKE_SA+CHILD_SA per s (median, min-max) "
        "| responder CPU ms/SA (median, min-max) | initiator CPU ms/SA | latency ms p50/p99 | retransmits |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, ms in by.items():
        rates = [m.rate for m in ms]
        cpu = [m.cpu_per_sa_ms for m in ms]
        lines.append(
            f"| {name} | {len(ms)} | {sum(m.ok for m in ms)}/{sum(m.count for m in ms)} "
            f"| {statistics.median(rates):.0f} ({min(rates):.0f}-{max(rates):.0f}) "
            f"| {statistics.median(cpu):.2f} ({min(cpu):.2f}-{max(cpu):.2f}) "
            f"| {statistics.median(m.initiator_cpu_per_sa_ms for m in ms):.2f} "
            f"| {statistics.median(m.latency(0.5) for m in ms):.1f}"
            f"/{statistics.median(m.latency(0.99) for m in ms):.1f} "
            f"| {sum(m.retransmits for m in ms)} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd")
    d = sub.add_parser("drive", help="internal: the initiator, run inside its namespace")
    d.add_argument("--count", type=int, required=True)
    d.add_argument("--window", type=int, required=True)
    d.add_argument("--timeout", type=float, default=120)
    d.add_argument("--ike-proposal", default=IKE_PROPOSAL)
    parser.add_argument("--count", type=int, default=500, help="measured handshakes per responder and round")
    parser.add_argument("--window", type=int, default=32, help="handshakes in flight at once")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--meshsec-dataplane", default="userspace", choices=("userspace", "none"))
    parser.add_argument("--with-none", action="store_true", help="also measure meshsec with dataplane none")
    parser.add_argument(
        "--hybrid", action="store_true", help="add x25519+ML-KEM-768 rows (meshsec, strongSwan 6.1)"
    )
    parser.add_argument("--write", action="store_true", help="put the results into docs/benchmarks.md")
    args = parser.parse_args()
    if args.cmd == "drive":
        print(json.dumps(asyncio.run(drive(args.count, args.window, args.timeout, args.ike_proposal))))
        return 0
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    load_before = os.getloadavg()[0]
    results = orchestrate(args)
    setup = (
        f"PSK, {IKE_PROPOSAL}, ESP {ESP_PROPOSAL} tunnel; {args.count} handshakes measured per responder "
        f"and round after {args.warmup} warm-up ones, {args.window} in flight; {machine()}; "
        f"load average before the run {load_before:.1f}"
    )
    print(f"\nIKE handshakes: {setup}\n")
    print(table(results))
    if args.write:
        write_section(DOCS, section(args, setup, table(results)))
        print(f"\nwritten to {DOCS}")
    return 0


DOCS = REPO / "docs" / "benchmarks.md"
SECTION = "## IKE handshakes"


def machine() -> str:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        "unknown CPU",
    )  # fmt: skip
    return f"{os.cpu_count()} cores ({model}), Python {sys.version.split()[0]}, both ends on this machine"


def section(args: argparse.Namespace, setup: str, results: str) -> str:
    cmd = "python bench/ike_handshake.py" + (
        f" --count {args.count} --window {args.window} --warmup {args.warmup} --rounds {args.rounds}"
        + (" --with-none" if args.with_none else "")
        + (" --hybrid" if args.hybrid else "")
    )
    return f"""{SECTION}

`{cmd} --write` (root). {setup}.

One initiator, meshsec's own engine and asyncio adapter in its own namespace, drives the same
handshakes (IKE_SA_INIT + IKE_AUTH with the first CHILD_SA) against each responder in turn, in
the same run, each responder in a fresh pair of namespaces: `meshsec-agent --config` (standalone)
and strongSwan's charon-systemd with kernel-libipsec. Both responders install every CHILD_SA in
their data plane (meshsec: the userspace data plane; `none` only records it). Rate is completed
handshakes per second of the initiator's wall time; responder CPU is utime+stime of the whole
responder process (all threads) from /proc/PID/stat over the measured handshakes; COOKIEs and
strongSwan's DoS protection are off, so this measures handshakes, not the cookie path. The
initiator and every responder thread run at nice {NICE}.

{results}

Rates depend on the whole machine (the initiator competes with the responder for two cores) and
vary with other load; CPU per SA is the steadier figure for comparing the responders.
"""


def write_section(path: Path, text: str) -> None:
    """Replaces the section (up to the next `## ` heading) or appends it."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    start = old.find(SECTION + "\n")
    if start < 0:
        path.write_text(old.rstrip("\n") + "\n\n" + text)
        return
    end = old.find("\n## ", start + len(SECTION))
    rest = old[end + 1 :] if end >= 0 else ""
    path.write_text(old[:start] + text + ("\n" + rest if rest else ""))


if __name__ == "__main__":
    sys.exit(main())
