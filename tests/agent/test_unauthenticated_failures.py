"""A refused IKE_SA_INIT proves nothing about who sent it: the responder's first candidate tunnel
must not show it as its last error (a spoofer would paint errors on healthy tunnels, and each
one would trigger a status report); it is counted in the agent's metrics instead. Real adapters
and reconcilers on 127.77.0.x (the `pair` fixture), the spoofer a plain UDP socket on 127.77.0.9."""

from __future__ import annotations

import asyncio
import socket

from meshsec.agent.ike.random import DeterministicRandom
from meshsec.agent.ike.sa import IkeSa
from meshsec.agent.node.metrics import AgentMetrics
from tests.agent.test_reconciler import PORT, Side, desire, end, until
from tests.ike.peers import I_ADDR, R_ADDR, ike_config

SPOOFER = "127.77.0.9"


def refused_init() -> bytes:
    """An IKE_SA_INIT whose only proposal no tunnel accepts (they want AES-GCM with ECP-384)."""
    sa = IkeSa(ike_config(proposals="aes128-sha256-modp2048"), I_ADDR, R_ADDR, initiator=True,
               rnd=DeterministicRandom("spoofer"))  # fmt: skip
    sa.initiate(0.0)
    (d,) = sa.datagrams_to_send()
    return d.data


def unauthenticated(metrics: AgentMetrics, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "meshsec_agent_ike_unauthenticated_failures_total", {"reason": reason}
    )
    return value or 0.0


async def test_a_refused_ike_sa_init_is_counted_not_blamed_on_a_tunnel(pair: list[Side]) -> None:
    a, b = pair
    metrics = AgentMetrics()
    a.reconciler.metrics = metrics
    desire(a, end("t1", "a", "b", a.addr, b.addr, initiator=True))
    desire(b, end("t1", "b", "a", b.addr, a.addr, initiator=False))
    await until("t1 up", lambda: a.established() and b.established() and a.live_children() == 1)
    await a.adapter.settle()
    await asyncio.sleep(0.3)  # the reconciler's pass after the last event
    a.reconciler.changed.clear()

    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as spoof:
        spoof.bind((SPOOFER, 0))
        spoof.setblocking(False)
        for _ in range(3):
            await loop.sock_sendto(spoof, refused_init(), (a.addr, PORT))
            answer = await asyncio.wait_for(loop.sock_recv(spoof, 2048), 5)
            # Next payload N (41), version 2.0, IKE_SA_INIT (34), flags: Response.
            assert answer[16:20] == bytes([41, 0x20, 34, 0x20])
    await until("the refusals counted", lambda: unauthenticated(metrics, "NO_PROPOSAL_CHOSEN") == 3)

    assert a.reconciler.runtime["t1"].last_error is None
    assert not a.reconciler.changed.is_set()  # nothing new to report
    assert a.established()
