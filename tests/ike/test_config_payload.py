"""The Configuration Payload in IKE_AUTH (RFC 7296 2.19): a gateway with an address pool gives
each road warrior its own address, DNS and split routes, narrows the client's traffic selectors
to that address (also in later CHILD_SAs and across an IKE rekey), and refuses clearly when the
pool is full or the client asks for no address."""

from __future__ import annotations

import ipaddress

from meshsec.agent.gateway.pool import LocalPool
from meshsec.agent.ike import cp
from meshsec.agent.ike.config import IkeConfig
from meshsec.agent.ike.events import (
    ChildSaEstablished,
    Event,
    IkeSaDeleted,
    IkeSaFailed,
    IkeSaRekeyed,
    VirtualAddressesAssigned,
    VirtualAddressRefused,
)
from meshsec.agent.ike.exchanges.child_create import ChildCreate
from meshsec.agent.ike.failures import FailureReason
from meshsec.agent.ike.revocation import RevocationList, serial_text
from meshsec.agent.ike.sa import IkeSa, State
from meshsec.agent.ike.ts import Ts
from meshsec.agent.ike.virtual_ip import Client
from tests.ike.peers import Pair, child, ike_config, of_type, responder_config
from tests.ike.pki import Authority, credentials

POOL = ipaddress.ip_network("198.19.60.0/29")  # 6 usable addresses
POOL6 = ipaddress.ip_network("2001:db8:60::/126")


def _pool(**kw: object) -> LocalPool:
    kw.setdefault("ranges", (POOL,))
    kw.setdefault("dns", ("198.19.50.53",))
    kw.setdefault("subnets", ("198.19.50.0/24",))
    return LocalPool("staff", **kw)  # type: ignore[arg-type]


def _gateway(pool: LocalPool) -> list[IkeConfig]:
    # remote 0.0.0.0/0 is only what the config needs; every client is narrowed to its address.
    return [
        responder_config(
            remote_id="%any",
            address_pool=pool,
            children=(
                child(local="198.19.50.0/24", remote="0.0.0.0/0"),
                child("v6", local="2001:db8:50::/64", remote="::/0"),
            ),
        )
    ]


def _client(name: str, vip: str = "4") -> IkeConfig:
    return ike_config(
        local_id=f"{name}.example",
        remote_id="bob.example",
        request_virtual_ip=vip,
        children=(child(local="0.0.0.0/0", remote="198.19.50.0/24"),),
    )


def _connect(pool: LocalPool, name: str, vip: str = "4") -> Pair:
    pair = Pair(_client(name, vip), _gateway(pool))
    pair.connect()
    return pair


def test_client_gets_an_address_dns_and_split_routes_and_its_selectors_are_narrowed() -> None:
    pool = _pool()
    pair = _connect(pool, "carol")
    assert pair.initiator.state is State.ESTABLISHED
    gw = pair.responder
    assert gw.virtual_addresses == (ipaddress.ip_address("198.19.60.1"),)
    assert of_type(pair.events_r, VirtualAddressesAssigned) == [
        VirtualAddressesAssigned("carol.example", ("198.19.60.1",))
    ]
    reply = pair.initiator.cfg_reply
    assert reply is not None
    assert reply.dns == (ipaddress.ip_address("198.19.50.53"),)
    assert reply.subnets == (ipaddress.ip_network("198.19.50.0/24"),)
    (gw_child,) = of_type(pair.events_r, ChildSaEstablished)
    assert gw_child.ts_remote == (Ts.from_cidr("198.19.60.1/32"),)
    (rw_child,) = of_type(pair.events_i, ChildSaEstablished)
    assert rw_child.ts_local == (Ts.from_cidr("198.19.60.1/32"),)
    assert rw_child.ts_remote == (Ts.from_cidr("198.19.50.0/24"),)


def test_clients_get_distinct_addresses_and_one_client_keeps_its_own() -> None:
    pool = _pool()
    pairs = [_connect(pool, f"user{i}") for i in range(4)]
    addresses = [p.responder.virtual_addresses for p in pairs]
    assert len(set(addresses)) == 4
    again = _connect(pool, "user2")  # a reconnect while the old SA still lives
    assert again.responder.virtual_addresses == pairs[2].responder.virtual_addresses
    assert pool.leases["user2.example"].holders == 2


def test_a_full_pool_refuses_the_next_client_with_internal_address_failure() -> None:
    """RFC 7296 2.21.2: the IKE SA stands, INTERNAL_ADDRESS_FAILURE replaces its CHILD_SA, and
    the gateway deletes the IKE SA at once."""
    pool = _pool()
    for i in range(6):
        assert _connect(pool, f"user{i}").initiator.state is State.ESTABLISHED
    seventh = _connect(pool, "late")
    (refused,) = of_type(seventh.events_r, VirtualAddressRefused)
    assert refused.notify == "INTERNAL_ADDRESS_FAILURE"
    assert refused.reason == (
        "late.example: pool staff: all 6 addresses of 198.19.60.0/29 are leased; "
        "release a lease or enlarge the pool"
    )
    assert not of_type(seventh.events_r, ChildSaEstablished)
    (client_failed,) = of_type(seventh.events_i, IkeSaFailed)
    assert client_failed.code is FailureReason.INTERNAL_ADDRESS_FAILURE
    seventh.advance(200)  # our client forgot the SA; the gateway's DELETE times out
    assert of_type(seventh.events_r, IkeSaDeleted)
    assert "late.example" not in pool.leases
    pool.release(Client("user0.example"))
    assert _connect(pool, "late").responder.virtual_addresses == (ipaddress.ip_address("198.19.60.1"),)


def test_a_client_that_asks_for_no_address_is_refused() -> None:
    pool = _pool()
    pair = _connect(pool, "plain", vip="")
    (refused,) = of_type(pair.events_r, VirtualAddressRefused)
    assert refused.notify == "FAILED_CP_REQUIRED"
    assert not of_type(pair.events_r, ChildSaEstablished)
    assert not pool.leases


def test_dual_stack_client_gets_both_families() -> None:
    pool = _pool(ranges=(POOL, POOL6))
    pair = Pair(
        ike_config(
            local_id="dual.example",
            remote_id="bob.example",
            request_virtual_ip="46",
            children=(
                child(local="0.0.0.0/0", remote="198.19.50.0/24"),
                child("v6", local="::/0", remote="2001:db8:50::/64"),
            ),
        ),
        _gateway(pool),
    )
    pair.connect()
    assert pair.responder.virtual_addresses == (
        ipaddress.ip_address("198.19.60.1"),
        ipaddress.ip_address("2001:db8:60::"),
    )
    pair.initiator.start_task(ChildCreate(pair.init_cfg.children[1]), pair.now)
    pair.pump()
    v6 = [e for e in of_type(pair.events_r, ChildSaEstablished) if e.name == "v6"]
    assert v6 and v6[0].ts_remote == (Ts.from_cidr("2001:db8:60::/128"),)


def test_an_ike_rekey_keeps_the_address_and_a_later_child_sa_is_narrowed_too() -> None:
    pool = _pool()
    pair = _connect(pool, "carol")
    pair.advance(pair.init_cfg.rekey_time + 60)
    assert of_type(pair.events_i + pair.events_r, IkeSaRekeyed)
    current = [sa for sa in pair.table if sa.state is State.ESTABLISHED]
    assert [sa.virtual_addresses for sa in current] == [(ipaddress.ip_address("198.19.60.1"),)]
    assert pool.leases["carol.example"].holders == 1


def test_pool_without_the_asked_family_refuses() -> None:
    pool = _pool(ranges=(POOL6,))
    answer = pool.assign(Client("x"), cp.Request(ip4=ipaddress.IPv4Address(0)))
    assert not isinstance(answer, cp.Reply)
    assert "has no IPv4 range" in answer.reason


CA = Authority.root()
GW_CERT, GW_KEY = CA.issue("bob.example")
RW_CERT, RW_KEY = CA.issue("carol.example")


def _cert_pair(pool: LocalPool, revocations: RevocationList) -> Pair:
    gateway = responder_config(
        remote_id="%any", psk=None, credentials=credentials([GW_CERT], GW_KEY, [CA.cert]), address_pool=pool,
        revocations=revocations, children=(child(local="198.19.50.0/24", remote="0.0.0.0/0"),),
    )  # fmt: skip
    client = ike_config(
        local_id="carol.example", remote_id="bob.example", psk=None,
        credentials=credentials([RW_CERT], RW_KEY, [CA.cert]), request_virtual_ip="4",
        children=(child(local="0.0.0.0/0", remote="198.19.50.0/24"),),
    )  # fmt: skip
    return Pair(client, [gateway])


def test_a_revoked_client_certificate_is_refused_and_gets_no_address() -> None:
    pool, revoked = _pool(), RevocationList()
    pair = _cert_pair(pool, revoked)
    pair.connect()
    assert pair.responder.peer_serial == serial_text(RW_CERT)
    assert pair.responder.state is State.ESTABLISHED
    assert revoked.update([format(RW_CERT.serial_number, "X")]) == {serial_text(RW_CERT)}  # any case
    assert revoked.is_revoked(RW_CERT) and serial_text(RW_CERT) in revoked
    pool.release(Client("carol.example", "carol.example"))
    again = _cert_pair(pool, revoked)
    failed_sas: list[IkeSa] = []  # the table forgets a failed SA once its events are read
    drain = again.table.events

    def keep_failed() -> list[tuple[IkeSa, Event]]:
        out = drain()
        failed_sas.extend(sa for sa, ev in out if isinstance(ev, IkeSaFailed))
        return out

    again.table.events = keep_failed  # type: ignore[method-assign]
    again.connect()
    (failed,) = of_type(again.events_r, IkeSaFailed)
    assert failed.code is FailureReason.AUTHENTICATION_FAILED
    assert f"certificate serial {serial_text(RW_CERT)} is revoked" in failed.reason
    assert not of_type(again.events_r, VirtualAddressesAssigned) and not pool.leases
    # Which verified certificate was refused, for the gateway's report; not an authenticated peer.
    (refused,) = failed_sas
    assert refused.revoked_serial == serial_text(RW_CERT) and refused.peer_serial is None
    assert pair.responder.revoked_serial is None
