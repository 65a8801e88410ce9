"""The data-plane hook: a ChildSaEstablished event becomes two SAs (inbound, outbound) and
the policies that steer traffic into them; ChildSaDeleted removes them again.

`plan_child` is pure (event + IKE addresses -> DataPlane objects) so the translation is tested
without a data plane; `ChildInstaller` carries the plan out and remembers what to remove."""

from __future__ import annotations

import functools
import ipaddress
from collections import Counter
from dataclasses import dataclass, replace

from meshsec.agent.adapters.traffic import Traffic, TrafficLedger, TrafficOwner
from meshsec.agent.dataplane.api import (
    DataPlane,
    DataPlaneError,
    Direction,
    Encryption,
    Integrity,
    IPAddress,
    IpsecProtocol,
    Lifetime,
    Mode,
    Policy,
    SaId,
    SecurityAssociation,
    Template,
    TrafficSelector,
    UdpEncapsulation,
)
from meshsec.agent.ike.address import Address
from meshsec.agent.ike.constants import EncrId, EsnId, IntegId, ProtocolId
from meshsec.agent.ike.events import ChildSaEstablished
from meshsec.agent.ike.keys import DirectionKeys
from meshsec.agent.ike.ts import Ts

_INTEG = {
    IntegId.HMAC_SHA2_256_128: ("hmac-sha256", 128),
    IntegId.HMAC_SHA2_384_192: ("hmac-sha384", 192),
    IntegId.HMAC_SHA2_512_256: ("hmac-sha512", 256),
}
# Both AEADs negotiate only their 16-byte-ICV variant (ENCR_AES_GCM_16, RFC 7634 section 2).
AEAD_ICV_BITS = 128
_AEAD_NAMES = {EncrId.AES_GCM_16: "aes-gcm-16", EncrId.CHACHA20_POLY1305: "chacha20-poly1305"}


class InstallError(ValueError):
    """The negotiated CHILD_SA cannot be expressed for the data plane."""


def ipsec_protocol(protocol: int) -> IpsecProtocol:
    if protocol == ProtocolId.ESP:
        return IpsecProtocol.ESP
    if protocol == ProtocolId.AH:
        return IpsecProtocol.AH
    raise InstallError(f"CHILD_SA protocol {protocol} is neither ESP nor AH")


def _networks(ts: Ts) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return list(ipaddress.summarize_address_range(ts.start, ts.end))


@functools.lru_cache(maxsize=4096)
def ip(host: str) -> IPAddress:
    """Parsed once per address: at thousands of CHILD_SAs per second, parsing shows up."""
    return ipaddress.ip_address(host)


@functools.lru_cache(maxsize=1024)
def selectors(local: tuple[Ts, ...], remote: tuple[Ts, ...]) -> tuple[TrafficSelector, ...]:
    """Outbound selectors (src = our side): every local x remote pair of the same family,
    each address range split into the prefixes XFRM selectors can express. Cached: the
    CHILD_SAs of one connection all carry the same selectors."""
    out: list[TrafficSelector] = []
    for lt in local:
        for rt in remote:
            if lt.start.version != rt.start.version:
                continue
            if lt.protocol and rt.protocol and lt.protocol != rt.protocol:
                continue
            proto = lt.protocol or rt.protocol
            for src in _networks(lt):
                for dst in _networks(rt):
                    out.append(
                        TrafficSelector(
                            src, dst, proto, (lt.start_port, lt.end_port), (rt.start_port, rt.end_port)
                        )
                    )
    return tuple(out)


def reverse(sel: TrafficSelector) -> TrafficSelector:
    return TrafficSelector(sel.dst, sel.src, sel.protocol, sel.dst_ports, sel.src_ports)


def _transforms(ev: ChildSaEstablished, keys: DirectionKeys) -> tuple[Encryption | None, Integrity | None]:
    alg = ev.algorithms
    enc: Encryption | None = None
    integ: Integrity | None = None
    if alg.encr in _AEAD_NAMES:
        enc = Encryption(_AEAD_NAMES[EncrId(alg.encr)], keys.encr, AEAD_ICV_BITS)
    elif alg.encr == EncrId.AES_CBC:
        enc = Encryption("aes-cbc", keys.encr)
    elif alg.encr is not None:
        raise InstallError(f"cipher {alg.encr} has no data-plane name")
    if alg.integ is not None and alg.integ != IntegId.NONE:
        if alg.integ not in _INTEG:
            raise InstallError(f"integrity algorithm {alg.integ} has no data-plane name")
        name, bits = _INTEG[IntegId(alg.integ)]
        integ = Integrity(name, keys.integ, bits)
    if enc is None and integ is None:
        raise InstallError("CHILD_SA has neither a cipher nor integrity")
    return enc, integ


@dataclass(frozen=True, slots=True)
class ChildPlan:
    inbound: SecurityAssociation
    outbound: SecurityAssociation
    policies: tuple[Policy, ...]


def plan_child(ev: ChildSaEstablished, local: Address, remote: Address, reqid: int) -> ChildPlan:
    """`local`/`remote` are the IKE SA's current addresses: in tunnel mode they are the outer
    addresses of ESP, and with UDP encapsulation their ports are the ESP-in-UDP ports."""
    proto = ipsec_protocol(ev.protocol)
    mode = Mode.TUNNEL if ev.mode == "tunnel" else Mode.TRANSPORT
    me, peer = ip(local.host), ip(remote.host)
    sels = selectors(ev.ts_local, ev.ts_remote)
    if not sels:
        raise InstallError("traffic selectors have no local/remote pair of one address family")
    lifetime = Lifetime(
        soft_seconds=ev.lifetime_soft,
        hard_seconds=ev.lifetime_hard,
        soft_bytes=ev.lifetime_soft_bytes,
        hard_bytes=ev.lifetime_hard_bytes,
        soft_packets=ev.lifetime_soft_packets,
        hard_packets=ev.lifetime_hard_packets,
    )
    esn = ev.algorithms.esn == EsnId.ESN
    enc_in, integ_in = _transforms(ev, ev.keys_in)
    enc_out, integ_out = _transforms(ev, ev.keys_out)
    encap_in = UdpEncapsulation(remote.port, local.port) if ev.udp_encap else None
    encap_out = UdpEncapsulation(local.port, remote.port) if ev.udp_encap else None
    transport_sel = sels[0] if mode is Mode.TRANSPORT else None
    inbound = SecurityAssociation(
        SaId(me, ev.spi_in, proto), peer, Direction.IN, mode, reqid, enc_in, integ_in, encap_in,
        esn=esn, lifetime=lifetime, selector=reverse(transport_sel) if transport_sel else None,
    )  # fmt: skip
    outbound = SecurityAssociation(
        SaId(peer, ev.spi_out, proto), me, Direction.OUT, mode, reqid, enc_out, integ_out, encap_out,
        esn=esn, lifetime=lifetime, selector=transport_sel,
    )  # fmt: skip
    tunnel = mode is Mode.TUNNEL
    out_tpl = Template(proto, mode, me if tunnel else None, peer if tunnel else None, reqid)
    in_tpl = Template(proto, mode, peer if tunnel else None, me if tunnel else None, reqid)
    policies: list[Policy] = []
    for sel in sels:
        policies.append(Policy(sel, Direction.OUT, template=out_tpl))
        policies.append(Policy(reverse(sel), Direction.IN, template=in_tpl))
        if tunnel:  # forwarded traffic for a site behind us passes the FWD policy
            policies.append(Policy(reverse(sel), Direction.FWD, template=in_tpl))
    return ChildPlan(inbound, outbound, tuple(policies))


ChildKey = tuple[str, int, int]  # (our address, protocol, inbound SPI): unique per data plane


class ChildInstaller:
    """Carries out plans in order. Policies are shared by (selector, direction): when two
    CHILD_SAs have equal selectors the newest one's template is in force, and deleting it
    restores the previous one's instead of leaving traffic unprotected."""

    def __init__(self, dataplane: DataPlane, first_reqid: int = 1) -> None:
        self.dataplane = dataplane
        self.installed: dict[ChildKey, ChildPlan] = {}
        self.stats: Counter[str] = Counter()
        self._next_reqid = first_reqid
        self._policy_users: dict[tuple[TrafficSelector, Direction], list[Policy]] = {}
        self._held: dict[ChildKey, SecurityAssociation] = {}  # outbound SAs not yet in use
        self.traffic = TrafficLedger()
        # The reqids of the policies an earlier run left (adopted; no plan of ours uses them).
        self.adopted_reqids: dict[tuple[TrafficSelector, Direction], int] = {}

    def next_reqid(self) -> int:
        reqid, self._next_reqid = self._next_reqid, self._next_reqid + 1
        return reqid

    def reqid_of(self, key: ChildKey) -> int | None:
        plan = self.installed.get(key)
        return plan.inbound.reqid if plan is not None else None

    async def install(
        self,
        ev: ChildSaEstablished,
        local: Address,
        remote: Address,
        *,
        reqid: int | None = None,
        outbound: bool = True,
        tunnel: str = "",
    ) -> ChildPlan:
        """A rekeyed CHILD_SA passes the reqid of the pair it replaces: both pairs then match
        the same policies, inbound packets of either pass the policy check, and the newest
        outbound SA of the reqid carries traffic. With `outbound` False the outbound SA waits
        for `activate` (the rekey responder's make-before-break). Its traffic counts toward
        (`tunnel`, CHILD_SA name) in `traffic`."""
        if reqid is None:
            reqid = self.reqid_in_force(ev, local, remote)
        plan = plan_child(ev, local, remote, reqid if reqid is not None else self.next_reqid())
        key = (local.host, ev.protocol, ev.spi_in)
        await self.dataplane.add_sa(plan.inbound)
        try:
            if outbound:
                await self.dataplane.add_sa(plan.outbound)
            else:
                self._held[key] = plan.outbound
            for pol in plan.policies:
                await self.dataplane.ensure_policy(pol)
                self._policy_users.setdefault((pol.selector, pol.direction), []).append(pol)
        except BaseException:
            self.installed[key] = plan
            await self.remove(key)
            raise
        self.installed[key] = plan
        self.traffic.installed(key, (tunnel, ev.name))
        self.stats["children_installed"] += 1
        return plan

    def reqid_in_force(self, ev: ChildSaEstablished, local: Address, remote: Address) -> int | None:
        """The reqid of the pair already carrying exactly these policies (another IKE SA's
        CHILD_SA of the same tunnel, or one an earlier run left: the agent restarted without
        its IKE state), if every policy names the same one. A new pair that takes it leaves the
        policies as they are, so the old pair's inbound packets still pass the policy check
        and neither direction loses a packet while traffic moves over (make-before-break)."""
        found: set[int] = set()
        for pol in plan_child(ev, local, remote, 0).policies:
            users = self._policy_users.get((pol.selector, pol.direction))
            if users:
                tpl = users[-1].template
                if tpl is None or pol.template is None or replace(tpl, reqid=0) != pol.template:
                    return None  # another tunnel endpoint or mode: its own reqid
                found.add(tpl.reqid)
            elif (adopted := self.adopted_reqids.get((pol.selector, pol.direction))) is not None:
                found.add(adopted)
            else:
                return None
        return found.pop() if len(found) == 1 else None

    def bind(self, ev: ChildSaEstablished, local: Address, remote: Address, reqid: int, *,
             tunnel: str = "") -> ChildPlan:  # fmt: skip
        """Takes up a CHILD_SA an earlier run of this agent installed (a resumed IKE SA's; the
        data plane kept it): remembered as if `install` had put it there, without touching the
        data plane, so it is removed, moved and counted like any other."""
        plan = plan_child(ev, local, remote, reqid)
        key = (local.host, ev.protocol, ev.spi_in)
        for pol in plan.policies:
            self._policy_users.setdefault((pol.selector, pol.direction), []).append(pol)
        self.installed[key] = plan
        self.traffic.installed(key, (tunnel, ev.name))
        self.stats["children_resumed"] += 1
        return plan

    async def move(self, key: ChildKey, ev: ChildSaEstablished, local: Address, remote: Address) -> ChildKey:
        """The IKE SA's addresses changed (a NAT mapping moved, the peer floated, or MOBIKE moved
        either end): same hosts means new UDP encapsulation ports, updated in place; other hosts
        mean other SA ids and templates. Either way make-before-break and as one SA to the peer:
        the SAs at the new addresses continue the old ones' sequence numbers, replay windows and
        counters (`migrate_sa`), the policies switch to the new tunnel endpoints, and only then
        do the old SAs go. Returns the pair's key at its new address."""
        plan = self.installed.get(key)
        if plan is None:
            return key
        moved = plan_child(ev, local, remote, plan.inbound.reqid)
        if moved == plan:
            return key
        new_key: ChildKey = (local.host, ev.protocol, ev.spi_in)
        same_ids = (moved.inbound.id, moved.outbound.id) == (plan.inbound.id, plan.outbound.id)
        if same_ids and moved.policies == plan.policies:
            await self.dataplane.update_sa(moved.inbound)
            if key in self._held:
                self._held[key] = moved.outbound
            else:
                await self.dataplane.update_sa(moved.outbound)
            self.installed[key] = moved
            self.stats["children_updated"] += 1
            return key
        await self.dataplane.migrate_sa(plan.inbound.id, moved.inbound)
        held = self._held.pop(key, None) is not None
        if held:
            self._held[new_key] = moved.outbound
        else:
            await self.dataplane.migrate_sa(plan.outbound.id, moved.outbound)
        for old_pol, new_pol in zip(plan.policies, moved.policies, strict=True):
            ref = (old_pol.selector, old_pol.direction)
            users = self._policy_users.get(ref, [])
            # (By value: an in-place update above made equal, not identical, objects.)
            was_current = bool(users) and users[-1] == old_pol
            users[:] = [new_pol if u == old_pol else u for u in users]
            if was_current:
                await self.dataplane.ensure_policy(new_pol)
        del self.installed[key]
        self.installed[new_key] = moved
        self.traffic.moved(key, new_key)
        if not held and moved.outbound.id != plan.outbound.id:
            await self.dataplane.delete_sa(plan.outbound.id)
        if moved.inbound.id != plan.inbound.id:
            await self.dataplane.delete_sa(plan.inbound.id)
        self.stats["children_migrated"] += 1
        return new_key

    async def activate(self, key: ChildKey) -> bool:
        """Installs a held outbound SA; being the newest of its reqid, it takes the traffic."""
        sa = self._held.pop(key, None)
        if sa is None:
            return False
        await self.dataplane.add_sa(sa)
        self.stats["outbound_activated"] += 1
        return True

    async def remove(self, key: ChildKey) -> bool:
        """Removes what `install` created for `key`; False if nothing was installed."""
        plan = self.installed.get(key)
        if plan is None:
            return False
        final = await self.counters(key)
        del self.installed[key]
        self.traffic.removed(key, final)
        held = self._held.pop(key, None) is not None
        for pol in plan.policies:
            ref = (pol.selector, pol.direction)
            users = self._policy_users.get(ref, [])
            was_current = bool(users) and users[-1] is pol
            if pol in users:
                users.remove(pol)
            if not users:
                self._policy_users.pop(ref, None)
                self.adopted_reqids.pop(ref, None)  # (the adopted policy goes with it)
                await self.dataplane.delete_policy(pol.selector, pol.direction)
            elif was_current:
                await self.dataplane.ensure_policy(users[-1])
        if not held:
            await self.dataplane.delete_sa(plan.outbound.id)
        await self.dataplane.delete_sa(plan.inbound.id)
        self.stats["children_removed"] += 1
        return True

    async def counters(self, key: ChildKey) -> Traffic | None:
        """The pair's counters now (a held outbound SA has carried nothing); None if it is not
        installed or the data plane cannot read it (e.g. it dropped the SA at its hard lifetime)."""
        plan = self.installed.get(key)
        if plan is None:
            return None
        try:
            cin = await self.dataplane.counters(plan.inbound.id)
            held = key in self._held
            cout = None if held else await self.dataplane.counters(plan.outbound.id)
        except DataPlaneError:
            return None
        traffic = Traffic(cin.bytes, cin.packets, cout.bytes if cout else 0, cout.packets if cout else 0)
        self.traffic.read(key, traffic)
        return traffic

    async def traffic_totals(self) -> dict[TrafficOwner, Traffic]:
        """Bytes and packets per (tunnel, CHILD_SA name), retired pairs included (monotonic)."""
        readings = [(key, await self.counters(key)) for key in list(self.installed)]
        return self.traffic.totals(readings)
