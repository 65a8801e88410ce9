"""CHILD_SA byte and packet counters that alerts can use: monotonic across rekeys (the bytes of a
retired SA stay in the total), one series per tunnel, CHILD_SA name and direction, gone when the
tunnel is removed. Real engines, adapters and reconcilers on 127.77.0.x (the `pair` fixture)
over the recording data plane, whose reported counters the test sets (no packets flow here)."""

from __future__ import annotations

from meshsec.agent.adapters.ike import IkeAdapter
from meshsec.agent.dataplane.api import SaCounters
from meshsec.agent.node.metrics import AgentMetrics
from meshsec.agent.node.report import ReportBuilder
from tests.agent.test_reconciler import Side, desire, end, until


def installed_pair(side: Side) -> tuple[object, object]:
    installer = side.adapter.installer
    assert installer is not None
    ((_, plan),) = installer.installed.items()
    return plan.inbound.id, plan.outbound.id


async def scrape(side: Side, metrics: AgentMetrics) -> dict[tuple[str, str], float]:
    tunnels = await ReportBuilder(side.reconciler).tunnels()
    installer = side.adapter.installer
    assert installer is not None
    installer.traffic.retain({t.tunnel_id for t in tunnels})
    metrics.observe(tunnels, await installer.traffic_totals())
    out = {}
    for family in metrics.registry.collect():
        for s in family.samples:
            if s.name in ("meshsec_agent_child_sa_bytes_total", "meshsec_agent_child_sa_packets_total"):
                key = (s.name.removeprefix("meshsec_agent_child_sa_"), s.labels["direction"])
                assert (s.labels["tunnel"], s.labels["child"]) == ("t1", "mesh")  # the child's name
                out[key] = s.value
    return out


def rekey(adapter: IkeAdapter, inbound: object) -> None:
    assert adapter.child_expired(inbound, hard=False)  # type: ignore[arg-type]


async def test_traffic_counters_survive_rekeys_and_go_with_the_tunnel(pair: list[Side]) -> None:
    a, b = pair
    desire(a, end("t1", "a", "b", a.addr, b.addr, initiator=True))
    desire(b, end("t1", "b", "a", b.addr, a.addr, initiator=False))
    await until("t1 up", lambda: a.established() and b.established() and len(a.dataplane.sas) == 2)
    await a.adapter.settle()
    metrics = AgentMetrics()
    seen = []
    for round_ in range(3):
        inbound, outbound = installed_pair(a)
        a.dataplane.counted[inbound] = SaCounters(bytes=1000, packets=10)  # type: ignore[index]
        a.dataplane.counted[outbound] = SaCounters(bytes=300, packets=3)  # type: ignore[index]
        seen.append(await scrape(a, metrics))
        rekey(a.adapter, inbound)
        await until(
            f"rekey {round_} done, the old pair removed",
            lambda inbound=inbound: inbound not in a.dataplane.sas and len(a.dataplane.sas) == 2,  # type: ignore[misc]
        )
        await a.adapter.settle()
        seen.append(await scrape(a, metrics))  # the fresh pair counts from zero
    expected = [
        {("bytes_total", "in"): 1000.0 * n, ("bytes_total", "out"): 300.0 * n,
         ("packets_total", "in"): 10.0 * n, ("packets_total", "out"): 3.0 * n}
        for n in (1, 1, 2, 2, 3, 3)
    ]  # fmt: skip
    assert seen == expected

    desire(a)
    await until("t1 gone", lambda: not a.dataplane.sas)
    assert await scrape(a, metrics) == {}
    installer = a.adapter.installer
    assert installer is not None and installer.traffic.retired == {}
