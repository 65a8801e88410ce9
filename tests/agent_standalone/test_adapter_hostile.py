"""Unauthenticated input through the adapter's data-plane IKE entry (no sockets, no namespaces):
what it may cost the data plane. The recording data plane shows every call the adapter makes."""

from __future__ import annotations

from meshsec.agent.adapters.ike import AdapterSettings, IkeAdapter
from meshsec.agent.adapters.recording import RecordingDataPlane
from meshsec.agent.ike.address import Address
from meshsec.agent.ike.config import ChildConfig, IkeConfig
from meshsec.agent.ike.random import DeterministicRandom
from meshsec.agent.ike.sa import IkeSa
from meshsec.agent.ike.ts import Ts
from meshsec.common.secrets import Secret

LOCAL, REMOTE = Address("198.18.62.1", 500), Address("198.18.62.2", 500)


def _config(local_id: str, remote_id: str, proposals: str) -> IkeConfig:
    ts_a, ts_b = (Ts.from_cidr("198.19.62.1/32"),), (Ts.from_cidr("198.19.62.2/32"),)
    return IkeConfig(
        "conn", local_id, remote_id, Secret("hostile-psk"), proposals=proposals,
        children=(ChildConfig("net", ts_a, ts_b),),
    )  # fmt: skip


def _ike_sa_init(proposals: str, seed: str) -> bytes:
    config = _config("a.test", "b.test", proposals)
    sa = IkeSa(config, REMOTE, LOCAL, initiator=True, rnd=DeterministicRandom(seed))
    sa.initiate(0.0)
    (out,) = sa.datagrams_to_send()
    return out.data


def _responder(dp: RecordingDataPlane, proposals: str) -> IkeAdapter:
    """Started without sockets: datagrams come in through the data plane's IKE receiver."""
    config = _config("b.test", "a.test", proposals)
    return IkeAdapter(lambda local, remote: [config], dataplane=dp, settings=AdapterSettings(bind=()))


def _feed(adapter: IkeAdapter, datagram: bytes) -> None:
    adapter._from_dataplane(datagram, (LOCAL.host, LOCAL.port), (REMOTE.host, REMOTE.port))


async def test_rejected_ike_sa_init_reserves_no_spi_in_the_dataplane() -> None:
    """An IKE_SA_INIT the responder refuses at once (here NO_PROPOSAL_CHOSEN) leaves no SA behind,
    so it must not reserve inbound SPIs in the data plane either: otherwise every spoofed packet
    costs an ALLOCSPI and a DELETE, and cookies (which only count half-open SAs) never kick in."""
    dp = RecordingDataPlane()
    adapter = _responder(dp, "aes256gcm16-prfsha256-x25519")
    await adapter.start()
    try:
        for n in range(20):
            _feed(adapter, _ike_sa_init("aes128-sha256-ecp256", f"i{n}"))
        await adapter.settle()
        assert adapter.responder.stats["internal_error"] == 0
        assert adapter.active() == []
        refused = [r.outcome for r in adapter.history]
        assert len(refused) == 20 and all("NO_PROPOSAL_CHOSEN" in (o or "") for o in refused)
        assert [op for op in dp.log if op.startswith(("allocate_spi", "delete_sa"))] == []
    finally:
        await adapter.close(graceful=False)


async def test_accepted_ike_sa_init_still_reserves_its_spi() -> None:
    """The half-open SA of an acceptable IKE_SA_INIT keeps its reservation for IKE_AUTH."""
    dp = RecordingDataPlane()
    adapter = _responder(dp, "aes128-sha256-ecp256")
    await adapter.start()
    try:
        _feed(adapter, _ike_sa_init("aes128-sha256-ecp256", "ok"))
        await adapter.settle()
        (record,) = adapter.active()
        assert record.stock is not None and len(dp.reserved) == 1
    finally:
        await adapter.close(graceful=False)
