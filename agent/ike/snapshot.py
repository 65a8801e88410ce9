"""An established IKE SA as plain data, and back: what a restarted agent needs to go on with the
same IKE SA (and its CHILD_SAs) so the peer notices nothing.

`to_dict(sa, now)` takes a quiescent SA (ESTABLISHED, no exchange of ours in flight or queued, no
rekey or reauthentication under way, every CHILD_SA INSTALLED): SPIs, the negotiated transforms
and SK_* keys, nonces, message IDs both ways, the peer's last request and our cached response
(a retransmit of it is answered, not processed twice), identities, NAT-T state and ports, the
lifetime deadlines as seconds from `now`, and each CHILD_SA's SPIs, selectors, keys and
deadlines. Anything else raises `SnapshotError` saying why, and the caller falls back to a new IKE
SA. `from_dict(doc, config, now, elapsed)` rebuilds it with the deadlines moved on by `elapsed`
(the seconds the agent was away, from a wall clock: the engine's clock is the caller's).

Pure (no I/O, no clock): the agent's state dir writes the result (agent/node/statedir.py). The
dict holds keys: it must only ever reach a 0600 file, never a log or status. Versioned:
`SNAPSHOT_VERSION` changes whenever a field's meaning does; `from_dict` reads the versions in
`READABLE`."""

from __future__ import annotations

import ipaddress
from typing import Any

from meshsec.agent.ike import cp
from meshsec.agent.ike.address import Address
from meshsec.agent.ike.child import ChildSa
from meshsec.agent.ike.config import IkeConfig
from meshsec.agent.ike.crypto import CryptoError
from meshsec.agent.ike.features.key_exchange import use_transforms
from meshsec.agent.ike.identity import Identity
from meshsec.agent.ike.keys import DirectionKeys, IkeKeys
from meshsec.agent.ike.payloads import Transform
from meshsec.agent.ike.proposals import Chosen
from meshsec.agent.ike.random import Random
from meshsec.agent.ike.sa import IkeSa, SpiAllocator
from meshsec.agent.ike.states import ChildState, State
from meshsec.agent.ike.ts import Ts
from meshsec.common.secrets import Secret

# 2: a chosen transform set carries its RFC 9370 additional key exchanges ("addke"); a version-1
# document has none.
# 3: a road warrior's SA (gateway side) can be captured: its virtual addresses, the CFG_REPLY
# they were granted with, and the client's certificate serial and CN (its lease is held by
# identity + device, its revocation checked by serial). Earlier documents hold no road warrior.
SNAPSHOT_VERSION = 3
READABLE = frozenset({1, 2, 3})
_IKE_KEYS = ("sk_d", "sk_ai", "sk_ar", "sk_ei", "sk_er", "sk_pi", "sk_pr")


class SnapshotError(ValueError):
    """This SA cannot be captured now, or this document cannot be restored; the text says why
    (never a key)."""


def to_dict(sa: IkeSa, now: float) -> dict[str, Any]:
    _check_quiescent(sa)
    assert sa.chosen is not None and sa.keys is not None
    tm = sa.tasks
    cached = tm._cached_response
    return {
        "version": SNAPSHOT_VERSION,
        "local": _addr(sa.local),
        "remote": _addr(sa.remote),
        "origin": [_addr(a) for a in sa._origin],
        "initiator": sa.initiator,
        "originator": sa.originator,
        "spawned": sa.spawned,
        "restarts": sa.restarts,
        "spi_i": sa.spi_i.hex(),
        "spi_r": sa.spi_r.hex(),
        "nonce_i": sa.nonce_i.hex(),
        "nonce_r": sa.nonce_r.hex(),
        "chosen": _chosen(sa.chosen),
        "keys": {k: getattr(sa.keys, k).reveal().hex() for k in _IKE_KEYS},
        "remote_identity": _identity(sa.remote_identity),
        "eap_identity": sa.eap_identity,
        "peer_hashes": sorted(sa.peer_hashes) if sa.peer_hashes is not None else None,
        "nat_local": sa.nat_local,
        "nat_remote": sa.nat_remote,
        "frag_peer": sa.frag_peer,
        "mobike": sa.mobike,
        "peer_additional": list(sa.peer_additional),
        "my_mid": tm._my_mid,
        "peer_mid": tm._peer_mid,
        "cached_request": tm._cached_request.hex(),
        "cached_response": [p.hex() for p in cached] if cached is not None else None,
        "ike_rekey_attempts": sa.lifetime.rekey_attempts,
        # Deadlines and ages relative to `now`: the engine's clock means nothing to the next process.
        "ike_rekey_in": _rel(sa.lifetime.rekey_at, now),
        "ike_expire_in": _rel(sa.lifetime.expire_at, now),
        "reauth_in": _rel(sa.lifetime.reauth_at, now),
        "created_ago": None if sa.created_at is None else now - sa.created_at,
        "inbound_ago": now - sa.last_inbound,
        "sent_ago": now - sa._last_sent,
        "children": [_child(c, now) for c in sa.children.values()],
        "virtual_addresses": [str(a) for a in sa.virtual_addresses],
        "cfg_reply": _reply(sa.cfg_reply),
        "peer_serial": sa.peer_serial,
        "peer_common_name": sa.peer_common_name,
    }


def from_dict(doc: dict[str, Any], config: IkeConfig, now: float, elapsed: float, *,
              rnd: Random | None = None, allocate_spi: SpiAllocator | None = None) -> IkeSa:  # fmt: skip
    """`config`: the connection's current configuration (CHILD_SAs find theirs by name; a child
    whose name it no longer has keeps running without one until it is deleted or replaced)."""
    version = doc.get("version") if isinstance(doc, dict) else None
    if version not in READABLE:
        raise SnapshotError(f"IKE SA snapshot version {version!r}; this build reads "
                            f"{', '.join(map(str, sorted(READABLE)))}")  # fmt: skip
    try:
        return _restore(doc, config, now, max(0.0, elapsed), rnd, allocate_spi)
    except (KeyError, TypeError, ValueError, CryptoError) as exc:
        raise SnapshotError(f"IKE SA snapshot is malformed ({type(exc).__name__}: {_safe(exc)})") from None


def _restore(doc: dict[str, Any], config: IkeConfig, now: float, elapsed: float,
             rnd: Random | None, allocate_spi: SpiAllocator | None) -> IkeSa:  # fmt: skip
    def at(rel: float | None) -> float | None:
        return None if rel is None else now + float(rel) - elapsed

    sa = IkeSa(config, _address(doc["local"]), _address(doc["remote"]), initiator=bool(doc["initiator"]),
               rnd=rnd, allocate_spi=allocate_spi)  # fmt: skip
    sa._origin = (_address(doc["origin"][0]), _address(doc["origin"][1]))
    sa.originator = bool(doc["originator"])
    sa.spawned = bool(doc["spawned"])
    sa.restarts = int(doc["restarts"])
    sa.spi_i, sa.spi_r = bytes.fromhex(doc["spi_i"]), bytes.fromhex(doc["spi_r"])
    if len(sa.spi_i) != 8 or len(sa.spi_r) != 8:
        raise ValueError("IKE SPIs must be 8 bytes")
    sa.nonce_i, sa.nonce_r = bytes.fromhex(doc["nonce_i"]), bytes.fromhex(doc["nonce_r"])
    use_transforms(sa, _chosen_from(doc["chosen"]))
    sa.keys = IkeKeys(**{k: Secret(bytes.fromhex(doc["keys"][k])) for k in _IKE_KEYS})
    sa.install_protection()
    ident = doc["remote_identity"]
    sa.remote_identity = None if ident is None else Identity(int(ident[0]), bytes.fromhex(ident[1]))
    eap_identity = doc.get("eap_identity")  # absent from snapshots written before EAP
    sa.eap_identity = eap_identity if isinstance(eap_identity, str) else None
    hashes = doc["peer_hashes"]
    sa.peer_hashes = None if hashes is None else frozenset(int(h) for h in hashes)
    sa.nat_local, sa.nat_remote = bool(doc["nat_local"]), bool(doc["nat_remote"])
    sa.frag_peer = bool(doc["frag_peer"])
    # Optional keys, so earlier snapshots of the same versions stay readable: one without them
    # predates MOBIKE, and for it "not negotiated" is the truth.
    sa.mobike = bool(doc.get("mobike", False))
    sa.peer_additional = tuple(str(a) for a in doc.get("peer_additional", ()))
    tm = sa.tasks
    tm._my_mid, tm._peer_mid = int(doc["my_mid"]), int(doc["peer_mid"])
    cached = doc["cached_response"]
    tm._cached_request = bytes.fromhex(doc["cached_request"])
    tm._cached_response = None if cached is None else [bytes.fromhex(p) for p in cached]
    sa.lifetime.rekey_attempts = int(doc["ike_rekey_attempts"])
    sa.lifetime.rekey_at, sa.lifetime.expire_at = at(doc["ike_rekey_in"]), at(doc["ike_expire_in"])
    sa.lifetime.reauth_at = at(doc["reauth_in"])
    created = doc["created_ago"]
    sa.created_at = None if created is None else now - float(created) - elapsed
    sa.last_inbound = now - float(doc["inbound_ago"]) - elapsed
    sa._last_sent = now - float(doc["sent_ago"]) - elapsed
    by_name = {c.name: c for c in config.children}
    for c in doc["children"]:
        child = ChildSa(
            name=str(c["name"]), config=by_name.get(str(c["name"])), protocol=int(c["protocol"]),
            spi_in=int(c["spi_in"]), spi_out=int(c["spi_out"]), mode=str(c["mode"]),
            ts_local=tuple(_ts_from(t) for t in c["ts_local"]),
            ts_remote=tuple(_ts_from(t) for t in c["ts_remote"]),
            keys_in=_dir_keys_from(c["keys_in"]), keys_out=_dir_keys_from(c["keys_out"]),
            chosen=_chosen_from(c["chosen"]), rekey_at=at(c["rekey_in"]), expire_at=at(c["expire_in"]),
            rekey_attempts=int(c["rekey_attempts"]),
        )  # fmt: skip
        sa.children[child.spi_in] = child
    # Absent before version 3 (no road warrior was captured): none.
    sa.virtual_addresses = tuple(ipaddress.ip_address(str(a)) for a in doc.get("virtual_addresses", ()))
    sa.cfg_reply = _reply_from(doc.get("cfg_reply"))
    serial, cn = doc.get("peer_serial"), doc.get("peer_common_name")
    sa.peer_serial = serial if isinstance(serial, str) else None
    sa.peer_common_name = cn if isinstance(cn, str) else None
    sa._state = State.ESTABLISHED  # restored, not negotiated: no edge of the state machine applies
    return sa


def _check_quiescent(sa: IkeSa) -> None:
    why = None
    if sa.state is not State.ESTABLISHED:
        why = f"it is {sa.state.value}"
    elif sa.tasks.busy or sa.tasks.processing or sa.tasks.fragments_pending:
        why = "an exchange is in flight or queued"
    elif sa.rekeying_ike() or sa.peer_ike_rekey is not None or sa.reauth_of is not None:
        why = "an IKE SA rekey or reauthentication is under way"
    elif sa.followup is not None:
        why = "the peer's CREATE_CHILD_SA waits for its IKE_FOLLOWUP_KE exchanges"
    elif sa.chosen is None or sa.keys is None:
        why = "it has no keys"
    elif sa.virtual_addresses and sa.config.address_pool is None:
        # This end is the road warrior: its addresses live on an interface this module knows
        # nothing of (the gateway side is captured: the pool's lease is taken back on resume).
        why = "it is our own road-warrior SA (virtual addresses of the gateway's)"
    else:
        for c in sa.children.values():
            if c.state is not ChildState.INSTALLED or c.replaced_by is not None or c.outbound_pending \
                    or c.peer_rekey is not None:  # fmt: skip
                why = f"CHILD_SA {c.name} {c.spi_in:08x} is {c.state.value} (a rekey or replacement is on)"
                break
    if why is not None:
        raise SnapshotError(f"IKE SA {sa.local_spi.hex()} cannot be captured: {why}")


def _child(c: ChildSa, now: float) -> dict[str, Any]:
    return {
        "name": c.name, "protocol": c.protocol, "spi_in": c.spi_in, "spi_out": c.spi_out, "mode": c.mode,
        "ts_local": [_ts(t) for t in c.ts_local], "ts_remote": [_ts(t) for t in c.ts_remote],
        "keys_in": _dir_keys(c.keys_in), "keys_out": _dir_keys(c.keys_out), "chosen": _chosen(c.chosen),
        "rekey_in": _rel(c.rekey_at, now), "expire_in": _rel(c.expire_at, now),
        "rekey_attempts": c.rekey_attempts,
    }  # fmt: skip


def _rel(at: float | None, now: float) -> float | None:
    return None if at is None else at - now


def _addr(a: Address) -> list[Any]:
    return [a.host, a.port]


def _address(v: list[Any]) -> Address:
    host, port = str(v[0]), int(v[1])
    ipaddress.ip_address(host)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    return Address(host, port)


def _identity(i: Identity | None) -> list[Any] | None:
    return None if i is None else [i.id_type, i.data.hex()]


def _chosen(c: Chosen) -> dict[str, Any]:
    encr = None if c.encr is None else [c.encr.type, c.encr.id, c.encr.key_length]
    return {"number": c.number, "protocol": c.protocol, "spi": c.spi.hex(), "encr": encr,
            "prf": c.prf, "integ": c.integ, "dh": c.dh, "esn": c.esn,
            "addke": [[ttype, method] for ttype, method in c.addke]}  # fmt: skip


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)


def _chosen_from(d: dict[str, Any]) -> Chosen:
    e = d["encr"]
    encr = None if e is None else Transform(int(e[0]), int(e[1]), _opt_int(e[2]))
    addke = tuple((int(ttype), int(method)) for ttype, method in d.get("addke", ()))
    return Chosen(int(d["number"]), int(d["protocol"]), bytes.fromhex(d["spi"]), encr, _opt_int(d["prf"]),
                  _opt_int(d["integ"]), _opt_int(d["dh"]), _opt_int(d["esn"]), addke)  # fmt: skip


def _reply(r: cp.Reply | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {"ip4": None if r.ip4 is None else str(r.ip4), "ip6": None if r.ip6 is None else str(r.ip6),
            "dns": [str(a) for a in r.dns], "subnets": [str(n) for n in r.subnets]}  # fmt: skip


def _reply_from(d: Any) -> cp.Reply | None:
    if d is None:
        return None
    ip4, ip6 = d["ip4"], d["ip6"]
    return cp.Reply(
        None if ip4 is None else ipaddress.IPv4Address(ip4),
        None if ip6 is None else ipaddress.IPv6Address(ip6),
        tuple(ipaddress.ip_address(a) for a in d["dns"]),
        tuple(ipaddress.ip_network(n) for n in d["subnets"]),
    )


def _ts(t: Ts) -> list[Any]:
    return [str(t.start), str(t.end), t.protocol, t.start_port, t.end_port]


def _ts_from(v: list[Any]) -> Ts:
    return Ts(ipaddress.ip_address(v[0]), ipaddress.ip_address(v[1]), int(v[2]), int(v[3]), int(v[4]))


def _dir_keys(k: DirectionKeys) -> list[str]:
    return [k.encr.reveal().hex(), k.integ.reveal().hex()]


def _dir_keys_from(v: list[str]) -> DirectionKeys:
    return DirectionKeys(Secret(bytes.fromhex(v[0])), Secret(bytes.fromhex(v[1])))


def _safe(exc: Exception) -> str:
    """The error's text, cut short: bytes.fromhex and int() quote their input, which may be key
    material; only the start of the message (the kind of problem) is kept."""
    return str(exc).split(":")[0][:60]
