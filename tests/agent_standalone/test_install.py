"""The data-plane hook's translation of a CHILD_SA into SAs and policies (pure), and the
installer's bookkeeping against the recording data plane."""

from __future__ import annotations

import ipaddress

import pytest

from meshsec.agent.adapters.install import ChildInstaller, InstallError, plan_child, selectors
from meshsec.agent.adapters.recording import RecordingDataPlane
from meshsec.agent.dataplane.api import Direction, IpsecProtocol, Mode, SaCounters, UdpEncapsulation
from meshsec.agent.ike.address import Address
from meshsec.agent.ike.constants import EncrId, EsnId, IntegId, ProtocolId
from meshsec.agent.ike.events import Algorithms, ChildSaEstablished
from meshsec.agent.ike.keys import DirectionKeys
from meshsec.agent.ike.ts import Ts
from meshsec.common.secrets import Secret

LOCAL, REMOTE = Address("198.18.60.1", 4500), Address("198.18.60.2", 4500)
K_IN = DirectionKeys(Secret(b"i" * 36), Secret(b""))
K_OUT = DirectionKeys(Secret(b"o" * 36), Secret(b""))
GCM = Algorithms(EncrId.AES_GCM_16, 256, None, esn=EsnId.NO_ESN)


def event(**kw: object) -> ChildSaEstablished:
    base: dict[str, object] = dict(
        name="net", spi_in=0xC0000001, spi_out=0x0A0B0C0D, protocol=ProtocolId.ESP, mode="tunnel",
        keys_in=K_IN, keys_out=K_OUT, ts_local=(Ts.from_cidr("198.19.60.0/24"),),
        ts_remote=(Ts.from_cidr("198.19.61.0/24"),), algorithms=GCM, udp_encap=True,
        lifetime_soft=3600, lifetime_hard=3960,
    )  # fmt: skip
    base.update(kw)
    return ChildSaEstablished(**base)  # type: ignore[arg-type]


def test_tunnel_gcm_with_udp_encapsulation() -> None:
    plan = plan_child(event(), LOCAL, REMOTE, reqid=7)
    me, peer = ipaddress.ip_address(LOCAL.host), ipaddress.ip_address(REMOTE.host)
    inb, out = plan.inbound, plan.outbound
    assert (inb.id.dst, inb.id.spi, inb.id.protocol, inb.src) == (me, 0xC0000001, IpsecProtocol.ESP, peer)
    assert (out.id.dst, out.id.spi, out.src) == (peer, 0x0A0B0C0D, me)
    assert inb.direction is Direction.IN and out.direction is Direction.OUT
    assert (
        inb.encryption is not None and inb.encryption.name == "aes-gcm-16" and inb.encryption.icv_bits == 128
    )
    assert inb.encryption.key == K_IN.encr and out.encryption is not None and out.encryption.key == K_OUT.encr
    assert inb.integrity is None and not inb.esn
    assert inb.encap == out.encap == UdpEncapsulation(4500, 4500)
    assert inb.lifetime.soft_seconds == 3600 and inb.lifetime.hard_seconds == 3960
    limited = plan_child(event(lifetime_soft_bytes=10**9, lifetime_hard_packets=10**7), LOCAL, REMOTE, 7)
    assert (limited.outbound.lifetime.soft_bytes, limited.outbound.lifetime.hard_packets) == (10**9, 10**7)
    assert inb.mode is Mode.TUNNEL and inb.reqid == out.reqid == 7
    kinds = sorted((p.direction.value, str(p.selector.src), str(p.selector.dst)) for p in plan.policies)
    assert kinds == [
        ("fwd", "198.19.61.0/24", "198.19.60.0/24"),
        ("in", "198.19.61.0/24", "198.19.60.0/24"),
        ("out", "198.19.60.0/24", "198.19.61.0/24"),
    ]
    out_policy = next(p for p in plan.policies if p.direction is Direction.OUT)
    assert out_policy.template is not None
    assert (out_policy.template.src, out_policy.template.dst, out_policy.template.reqid) == (me, peer, 7)


def test_cbc_hmac_esn_and_asymmetric_ports() -> None:
    alg = Algorithms(EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_512_256, esn=EsnId.ESN)
    keys = DirectionKeys(Secret(b"k" * 16), Secret(b"a" * 64))
    plan = plan_child(event(algorithms=alg, keys_in=keys), Address("198.18.60.1", 4500),
                      Address("198.18.60.2", 31000), 1)  # fmt: skip
    assert plan.inbound.encryption is not None and plan.inbound.encryption.name == "aes-cbc"
    assert plan.inbound.integrity is not None
    assert (plan.inbound.integrity.name, plan.inbound.integrity.truncation_bits) == ("hmac-sha512", 256)
    assert plan.inbound.integrity.key == keys.integ and plan.inbound.esn
    # Ports as on the wire: inbound comes from the peer's NAT mapping to our 4500.
    assert plan.inbound.encap == UdpEncapsulation(31000, 4500)
    assert plan.outbound.encap == UdpEncapsulation(4500, 31000)


def test_ah_transport_without_encapsulation() -> None:
    alg = Algorithms(None, None, IntegId.HMAC_SHA2_256_128)
    keys = DirectionKeys(Secret(b""), Secret(b"a" * 32))
    ev = event(protocol=ProtocolId.AH, mode="transport", algorithms=alg, keys_in=keys, keys_out=keys,
               udp_encap=False, ts_local=(Ts.from_cidr("198.18.60.1/32"),),
               ts_remote=(Ts.from_cidr("198.18.60.2/32"),))  # fmt: skip
    plan = plan_child(ev, Address("198.18.60.1", 500), Address("198.18.60.2", 500), 3)
    assert plan.inbound.id.protocol is IpsecProtocol.AH and plan.inbound.encryption is None
    assert plan.inbound.mode is Mode.TRANSPORT and plan.inbound.encap is None
    assert plan.outbound.selector is not None and str(plan.outbound.selector.src) == "198.18.60.1/32"
    assert plan.inbound.selector is not None and str(plan.inbound.selector.src) == "198.18.60.2/32"
    assert {p.direction for p in plan.policies} == {Direction.IN, Direction.OUT}  # no FWD in transport
    assert all(p.template is not None and p.template.src is None for p in plan.policies)


def test_address_ranges_become_prefixes_and_families_pair_up() -> None:
    ranges = (Ts(ipaddress.ip_address("198.19.0.1"), ipaddress.ip_address("198.19.0.6"), 6, 80, 80),
              Ts.from_cidr("::/0"))  # fmt: skip
    sels = selectors(ranges, (Ts.from_cidr("198.19.9.0/24"),))
    assert [str(s.src) for s in sels] == ["198.19.0.1/32", "198.19.0.2/31", "198.19.0.4/31", "198.19.0.6/32"]
    assert all(s.protocol == 6 and s.src_ports == (80, 80) and s.dst_ports == (0, 65535) for s in sels)
    with pytest.raises(InstallError, match="one address family"):
        plan_child(event(ts_remote=(Ts.from_cidr("::/0"),)), LOCAL, REMOTE, 1)


async def test_installer_shares_policies_and_restores_the_older_template() -> None:
    dp = RecordingDataPlane()
    inst = ChildInstaller(dp)
    first = await inst.install(event(spi_in=0x1001, spi_out=0x2001), LOCAL, REMOTE)
    # Another tunnel endpoint (the peer moved): another template, so a reqid of its own.
    second = await inst.install(event(spi_in=0x1002, spi_out=0x2002), LOCAL, Address("198.18.60.3", 4500))
    assert second.inbound.reqid != first.inbound.reqid
    assert len(dp.sas) == 4 and len(dp.policies) == 3
    out_sel = next(p.selector for p in first.policies if p.direction is Direction.OUT)
    assert dp.policies[(out_sel, Direction.OUT)].template.reqid == second.inbound.reqid  # type: ignore[union-attr]
    assert await inst.remove((LOCAL.host, ProtocolId.ESP, 0x1002))
    assert dp.policies[(out_sel, Direction.OUT)].template.reqid == first.inbound.reqid  # type: ignore[union-attr]
    assert len(dp.sas) == 2
    assert await inst.remove((LOCAL.host, ProtocolId.ESP, 0x1001))
    assert dp.sas == {} and dp.policies == {}
    assert not await inst.remove((LOCAL.host, ProtocolId.ESP, 0x1001))


async def test_a_pair_with_the_same_policies_takes_the_reqid_in_force() -> None:
    """Another IKE SA's CHILD_SA of the tunnel (or, after a restart without IKE state, the pair
    an earlier run left) keeps its reqid for the new pair: the policies stay as they are, so the
    old pair's inbound packets still pass the inbound policy check while traffic moves over."""
    dp = RecordingDataPlane()
    inst = ChildInstaller(dp, first_reqid=10)
    first = await inst.install(event(spi_in=0x1001, spi_out=0x2001), LOCAL, REMOTE)
    policies = dict(dp.policies)
    second = await inst.install(event(spi_in=0x1002, spi_out=0x2002), LOCAL, REMOTE)
    assert second.inbound.reqid == second.outbound.reqid == first.inbound.reqid == 10
    assert dp.policies == policies
    assert await inst.remove((LOCAL.host, ProtocolId.ESP, 0x1001))
    assert dp.policies == policies and len(dp.sas) == 2  # the policies are the second pair's now
    # Other selectors: no pair carries them, a new reqid.
    elsewhere = (Ts.from_cidr("198.19.62.0/24"),)
    other = await inst.install(event(spi_in=0x1003, ts_remote=elsewhere), LOCAL, REMOTE)
    assert other.inbound.reqid == 11

    # Adopted: only the data plane holds the policies (reqid 7), no plan of this run.
    dp = RecordingDataPlane()
    inst = ChildInstaller(dp, first_reqid=8)
    adopted = plan_child(event(), LOCAL, REMOTE, 7)
    inst.adopted_reqids = {(p.selector, p.direction): 7 for p in adopted.policies}
    assert (await inst.install(event(spi_in=0x1004), LOCAL, REMOTE)).inbound.reqid == 7
    partial = {k: 7 for k in list(inst.adopted_reqids)[:1]}  # one policy of three: not that pair's
    inst = ChildInstaller(RecordingDataPlane(), first_reqid=8)
    inst.adopted_reqids = partial
    assert (await inst.install(event(spi_in=0x1005), LOCAL, REMOTE)).inbound.reqid == 8


async def test_move_updates_ports_in_place_and_reinstalls_for_new_hosts() -> None:
    dp = RecordingDataPlane()
    inst = ChildInstaller(dp)
    ev = event()
    await inst.install(ev, LOCAL, REMOTE)
    key = (LOCAL.host, ProtocolId.ESP, ev.spi_in)
    same = await inst.move(key, ev, LOCAL, Address(REMOTE.host, 31000))
    assert same == key and inst.stats["children_updated"] == 1
    assert [op for op in dp.log if op.startswith("update_sa")] == [
        f"update_sa {ev.spi_in:#010x}",
        f"update_sa {ev.spi_out:#010x}",
    ]
    (outbound,) = [s for s in dp.sas.values() if s.direction is Direction.OUT]
    assert outbound.encap == UdpEncapsulation(4500, 31000)
    dp.log.clear()
    roamed = await inst.move(key, ev, LOCAL, Address("198.18.60.9", 4500))
    assert roamed == key and inst.stats["children_migrated"] == 1  # our address stayed
    (outbound,) = [s for s in dp.sas.values() if s.direction is Direction.OUT]
    assert str(outbound.id.dst) == "198.18.60.9"
    assert all(p.template is not None and str(p.template.dst) in ("198.18.60.9", LOCAL.host)
               for p in dp.policies.values())  # fmt: skip
    assert len(dp.sas) == 2 and len(dp.policies) == 3
    # Make-before-break: the SAs at the new address first, then the policies, then the old
    # outbound SA goes (the inbound one kept its id: our address did not change).
    kinds = [op.split()[0] for op in dp.log]
    assert kinds[:2] == ["migrate_sa", "migrate_sa"] and kinds[-1] == "delete_sa", dp.log
    assert set(kinds[2:-1]) == {"ensure_policy"}, dp.log


async def test_move_to_a_new_local_address_keeps_the_pair_and_its_counters() -> None:
    dp = RecordingDataPlane()
    inst = ChildInstaller(dp)
    ev = event()
    await inst.install(ev, LOCAL, REMOTE, tunnel="t")
    key = (LOCAL.host, ProtocolId.ESP, ev.spi_in)
    plan = inst.installed[key]
    dp.counted[plan.inbound.id] = SaCounters(bytes=700, packets=7)
    roamed_to = Address("198.18.61.5", LOCAL.port)
    new_key = await inst.move(key, ev, roamed_to, REMOTE)
    assert new_key == (roamed_to.host, ProtocolId.ESP, ev.spi_in) and key not in inst.installed
    assert {str(sa.id.dst) for sa in dp.sas.values()} == {roamed_to.host, REMOTE.host}
    assert len(dp.sas) == 2  # the old inbound SA is gone, after the policies moved
    totals = await inst.traffic_totals()
    assert totals[("t", ev.name)].bytes_in == 700  # counters carried over, not retired twice
    assert await inst.remove(new_key) and dp.sas == {} and dp.policies == {}
