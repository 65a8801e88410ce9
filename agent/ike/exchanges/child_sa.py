"""CHILD_SA negotiation shared by IKE_AUTH (first child) and CREATE_CHILD_SA: proposals with
our freshly allocated SPI, traffic selectors and narrowing (RFC 7296 2.9), USE_TRANSPORT_MODE,
optional PFS (a DH exchange in CREATE_CHILD_SA, and RFC 9370 additional key exchanges after it
in IKE_FOLLOWUP_KE), KEYMAT (2.17) and the ChildSaEstablished event.

With additional key exchanges the pair exists only once the last IKE_FOLLOWUP_KE is done: the
initiator's task waits for them (child_create.py), the responder answers the CREATE_CHILD_SA
with N(ADDITIONAL_KEY_EXCHANGE) and keeps a `ChildFollowup` in `sa.followup` until then. What
the pair will replace is decided when the CREATE_CHILD_SA is answered, as without them."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from meshsec.agent.ike.child import ChildSa
from meshsec.agent.ike.config import ChildConfig
from meshsec.agent.ike.constants import ERROR_NOTIFY_LIMIT, NotifyType, PayloadType, ProtocolId, notify_name
from meshsec.agent.ike.crypto import CryptoError
from meshsec.agent.ike.events import Algorithms, ChildSaEstablished, ChildSaFailed
from meshsec.agent.ike.exchanges.ike_followup import FOLLOWUP_TIMEOUT, PeerFollowup
from meshsec.agent.ike.exchanges.informational import ChildDelete
from meshsec.agent.ike.failures import FailureReason
from meshsec.agent.ike.keys import child_encr_key_size, derive_child_keys
from meshsec.agent.ike.lifetime import jittered
from meshsec.agent.ike.payloads import (
    KePayload,
    Message,
    NotifyPayload,
    Payload,
    Proposal,
    SaPayload,
    TsPayload,
)
from meshsec.agent.ike.proposals import Chosen, accept_response, select_proposal
from meshsec.agent.ike.states import ChildState
from meshsec.agent.ike.ts import Ts, is_subset, narrow
from meshsec.agent.ike.virtual_ip import selectors_for

if TYPE_CHECKING:
    from meshsec.agent.ike.sa import IkeSa


@dataclass(slots=True)
class ChildRequest:
    config: ChildConfig
    spi_in: int
    offered: tuple[Proposal, ...]


def build_child_request(
    sa: IkeSa, config: ChildConfig, *, pfs: bool = False
) -> tuple[ChildRequest, list[Payload], list[Payload]]:
    """Returns the request state, payloads that go before the SA payload (notifies) and the
    SA/TS payloads themselves (callers put nonces and KE in between for CREATE_CHILD_SA).
    DH transforms are offered only with PFS; IKE_AUTH never carries them (RFC 7296 1.2)."""
    spi_in = sa.allocate_spi(config.protocol)
    spi = struct.pack("!I", spi_in)
    offered = tuple(spec.to_proposal(i + 1, spi, without_dh=not pfs) for i, spec in enumerate(config.specs))
    pre: list[Payload] = []
    if config.mode == "transport":
        pre.append(NotifyPayload(NotifyType.USE_TRANSPORT_MODE))
    body: list[Payload] = [
        SaPayload(offered),
        TsPayload(PayloadType.TSi, tuple(t.to_wire() for t in config.local_ts)),
        TsPayload(PayloadType.TSr, tuple(t.to_wire() for t in config.remote_ts)),
    ]
    return ChildRequest(config, spi_in, offered), pre, body


def _ts(msg: Message, kind: PayloadType) -> list[Ts] | None:
    p = msg.find(kind)
    if not isinstance(p, TsPayload):
        return None
    return [Ts.from_wire(s) for s in p.selectors]


def _algorithms(chosen: Chosen) -> Algorithms:
    return Algorithms(
        chosen.encr.id if chosen.encr else None,
        chosen.encr.key_length if chosen.encr else None,
        chosen.integ,
        None,
        chosen.dh,
        chosen.esn,
        additional_ke=tuple(method for _, method in chosen.addke),
    )


@dataclass(frozen=True, slots=True)
class Negotiated:
    """A CHILD_SA both ends agreed on, before its keys exist."""

    config: ChildConfig
    chosen: Chosen
    spi_in: int
    spi_out: int
    mode: str
    ts_local: list[Ts]
    ts_remote: list[Ts]


@dataclass(frozen=True, slots=True)
class Succession:
    """How a new CHILD_SA relates to an existing one: the inbound SPI it `replaces` (a rekey)
    and whether outbound traffic moves to it at once."""

    replaces: int | None = None
    outbound_active: bool = True


def supersede(old: ChildSa, successor: int) -> None:
    """`successor` (an inbound SPI) takes over from `old`, which only waits for its DELETE."""
    old.replaced_by = successor
    if old.state is not ChildState.DELETING:
        old.move_to(ChildState.REKEYED)


def succeeded_by_peer(old: ChildSa, new_spi_in: int, low_nonce: bytes) -> None:
    """We answered the peer's request for a pair that takes over from `old` (a rekey or a
    replacement). If ours for `old` is in flight too, the lower nonce decides when our answer
    arrives (RFC 7296 2.8.1); else the new pair takes over once the peer deletes `old`."""
    if old.state is ChildState.REKEYING:
        old.peer_rekey = (new_spi_in, low_nonce)
    else:
        supersede(old, new_spi_in)


def install_child(
    sa: IkeSa,
    n: Negotiated,
    ni: bytes,
    nr: bytes,
    exchange_initiator: bool,
    secrets: list[bytes],
    now: float,
    succession: Succession,
) -> ChildSa:
    """Derives KEYMAT from SK(0) (the PFS DH, empty without PFS) and any additional key
    exchanges' SK(1)..SK(n), records the pair and announces it."""
    assert sa.prf is not None and sa.keys is not None
    encr = n.chosen.encr
    keys = derive_child_keys(
        sa.prf,
        sa.keys.sk_d.reveal(),
        ni,
        nr,
        child_encr_key_size(encr.id if encr else None, encr.key_length if encr else None),
        n.chosen.integ,
        secrets[0],
        tuple(secrets[1:]),
    )
    i2r, r2i = keys.initiator_to_responder, keys.responder_to_initiator
    keys_out, keys_in = (i2r, r2i) if exchange_initiator else (r2i, i2r)
    ts_local, ts_remote = tuple(n.ts_local), tuple(n.ts_remote)
    cfg = n.config
    spread = cfg.rand_time if cfg.rand_time is not None else cfg.life_time - cfg.rekey_time
    soft = jittered(cfg.rekey_time, spread, sa.rnd)
    child = ChildSa(
        n.config.name,
        n.config,
        n.chosen.protocol,
        n.spi_in,
        n.spi_out,
        n.mode,
        ts_local,
        ts_remote,
        keys_in,
        keys_out,
        n.chosen,
        rekey_at=now + soft if soft else None,
        expire_at=now + cfg.life_time if cfg.life_time else None,
        outbound_pending=not succession.outbound_active,
    )
    sa.children[n.spi_in] = child
    sa.emit(
        ChildSaEstablished(
            n.config.name,
            n.spi_in,
            n.spi_out,
            n.chosen.protocol,
            n.mode,
            keys_in,
            keys_out,
            ts_local,
            ts_remote,
            _algorithms(n.chosen),
            sa.udp_encap,
            math.ceil(soft),
            cfg.life_time,
            succession.replaces,
            succession.outbound_active,
            cfg.rekey_bytes,
            cfg.life_bytes,
            cfg.rekey_packets,
            cfg.life_packets,
            responder=not exchange_initiator,
        )
    )
    return child


def complete_child_initiator(
    sa: IkeSa,
    req: ChildRequest,
    msg: Message,
    ni: bytes,
    nr: bytes,
    *,
    now: float,
) -> ChildSa | None:
    """The first CHILD_SA, from the IKE_AUTH answer (no key exchange of its own)."""
    negotiated = check_child_response(sa, req, msg, None)
    if negotiated is None:
        return None
    return install_child(sa, negotiated, ni, nr, True, [b""], now, Succession())


def check_child_response(
    sa: IkeSa, req: ChildRequest, msg: Message, pfs_group: int | None
) -> Negotiated | None:
    """What the responder's answer to our CHILD_SA request agreed on, or None (ChildSaFailed
    emitted) when it refused or answered with something we did not ask for."""
    name = req.config.name
    errors = [n for n in msg.notifies() if n.notify_type < ERROR_NOTIFY_LIMIT]
    if errors:
        sa.emit(
            ChildSaFailed(
                name, notify_name(errors[0].notify_type), FailureReason.from_notify(errors[0].notify_type)
            )
        )
        return None
    sa_p, ts_i, ts_r = msg.find(PayloadType.SA), _ts(msg, PayloadType.TSi), _ts(msg, PayloadType.TSr)
    if not isinstance(sa_p, SaPayload) or ts_i is None or ts_r is None or len(sa_p.proposals) != 1:
        sa.emit(ChildSaFailed(name, "response lacks SA/TSi/TSr", FailureReason.INVALID_RESPONSE))
        return None
    chosen = accept_response(req.offered, sa_p.proposals[0])
    problem = None
    if chosen is None or len(chosen.spi) != 4:
        problem = "responder chose a proposal we did not offer"
    elif chosen.dh != pfs_group:
        problem = "responder's DH group does not match the KE exchange"
    elif not is_subset(ts_i, list(req.config.local_ts)) or not is_subset(ts_r, list(req.config.remote_ts)):
        problem = "responder widened the traffic selectors"
    elif chosen.addke and msg.notify(NotifyType.ADDITIONAL_KEY_EXCHANGE) is None:
        problem = "responder chose additional key exchanges but sent no ADDITIONAL_KEY_EXCHANGE"
    transport = msg.notify(NotifyType.USE_TRANSPORT_MODE) is not None
    if problem is None and transport != (req.config.mode == "transport"):
        problem = "responder did not accept the requested mode"
    if problem is not None or chosen is None:
        sa.emit(ChildSaFailed(name, problem or "invalid response", FailureReason.INVALID_RESPONSE))
        if chosen is not None and len(chosen.spi) == 4 and not chosen.addke:
            # The responder installed it; ask it to remove its half (RFC 7296 1.4.1). With
            # additional key exchanges it installs nothing before the last IKE_FOLLOWUP_KE.
            sa.queue(ChildDelete(req.spi_in, protocol=req.config.protocol))
        return None
    spi_out = struct.unpack("!I", chosen.spi)[0]
    return Negotiated(req.config, chosen, req.spi_in, spi_out, req.config.mode, ts_i, ts_r)


@dataclass(slots=True)
class ChildFollowup(PeerFollowup):
    """The peer's CHILD_SA (new or rekeyed) awaiting its IKE_FOLLOWUP_KE exchanges; `replaces`
    is the pair it takes over from, already marked so when we answered."""

    negotiated: Negotiated
    nonce_i: bytes
    nonce_r: bytes
    replaces: int | None

    def complete(self, sa: IkeSa, now: float) -> None:
        old = sa.children.get(self.replaces) if self.replaces is not None else None
        rival = old.peer_rekey[0] if old is not None and old.peer_rekey is not None else None
        if old is not None and self.negotiated.spi_in in (old.replaced_by, rival):
            succession = Succession(old.spi_in, outbound_active=False)
        elif self.replaces is not None:
            # The pair it was to replace is gone or was taken over by our own rekey (we won a
            # collision): this one is the redundant pair its initiator deletes. Inbound only.
            sa.stats["followup_child_superseded"] += 1
            succession = Succession(outbound_active=False)
        else:
            succession = Succession()
        install_child(sa, self.negotiated, self.nonce_i, self.nonce_r, False, self.secrets, now, succession)

    def abandon(self, sa: IkeSa) -> None:
        old = sa.children.get(self.replaces) if self.replaces is not None else None
        if old is None:
            return
        spi = self.negotiated.spi_in
        if old.peer_rekey is not None and old.peer_rekey[0] == spi:
            old.peer_rekey = None
        if old.replaced_by == spi:
            old.replaced_by = None
            if old.state is ChildState.REKEYED:
                old.move_to(ChildState.INSTALLED)  # it goes on, and rekeys when due


@dataclass(slots=True)
class ChildAnswer:
    """Responder result: notifies first, then SA/TS payloads (empty on error), our KE payload
    when PFS was negotiated, and what goes after the TS payloads."""

    pre: list[Payload]
    body: list[Payload]
    ke: KePayload | None = None
    child: ChildSa | None = None  # None also while additional key exchanges are due
    spi_in: int | None = None  # of the pair agreed on (installed, or once they are done)
    post: list[Payload] = field(default_factory=list)  # N(ADDITIONAL_KEY_EXCHANGE) last


def respond_child(
    sa: IkeSa,
    msg: Message,
    ni: bytes,
    nr: bytes,
    *,
    now: float,
    pfs_allowed: bool = False,
    configs: tuple[ChildConfig, ...] | None = None,
    succession: Succession | Callable[[ChildConfig], Succession] | None = None,
) -> ChildAnswer:
    """Picks the first child config (of `configs`, default the connection's) whose
    proposals, selectors and mode fit. `succession` may depend on the config chosen."""
    sa_p, ts_i, ts_r = msg.find(PayloadType.SA), _ts(msg, PayloadType.TSi), _ts(msg, PayloadType.TSr)
    if not isinstance(sa_p, SaPayload) or ts_i is None or ts_r is None:
        return ChildAnswer([NotifyPayload(NotifyType.INVALID_SYNTAX)], [])
    ke = msg.find(PayloadType.KE)
    want_transport = msg.notify(NotifyType.USE_TRANSPORT_MODE) is not None
    error = NotifyType.NO_PROPOSAL_CHOSEN
    # A road warrior's side of every CHILD_SA is its virtual addresses and nothing else, whatever
    # it proposed (it sends 0.0.0.0/0 before it knows its address; RFC 7296 2.9, 2.19).
    clients_own = selectors_for(sa.virtual_addresses) if sa.config.address_pool is not None else None
    for cfg in sa.config.children if configs is None else configs:
        chosen = select_proposal(
            cfg.specs, sa_p.proposals, prefer_ours=sa.config.prefer_own_proposals, ignore_dh=not pfs_allowed
        )
        if chosen is None or len(chosen.spi) != 4:
            continue
        # TSi is the initiator's side: our remote; TSr our local.
        remote = narrow(ts_i, clients_own if clients_own is not None else list(cfg.remote_ts))
        local = narrow(ts_r, list(cfg.local_ts))
        if not remote or not local:
            error = NotifyType.TS_UNACCEPTABLE
            continue
        if cfg.mode == "transport" and not want_transport:
            continue  # we only run this child in transport mode
        # A transport request against a tunnel config is declined by answering in tunnel mode
        # (RFC 7296 1.3.1); the initiator decides whether that is acceptable.
        transport = want_transport and cfg.mode == "transport"
        shared = b""
        our_ke: KePayload | None = None
        if pfs_allowed and chosen.dh is not None:
            if not isinstance(ke, KePayload):
                return ChildAnswer([NotifyPayload(NotifyType.INVALID_SYNTAX)], [])
            if ke.group != chosen.dh:
                return ChildAnswer(
                    [NotifyPayload(NotifyType.INVALID_KE_PAYLOAD, struct.pack("!H", chosen.dh))], []
                )
            try:
                kex = sa.dh_factory(chosen.dh, sa.rnd)
                shared = kex.shared_secret(ke.data)
            except (CryptoError, ValueError):
                return ChildAnswer([NotifyPayload(NotifyType.INVALID_SYNTAX)], [])
            our_ke = KePayload(kex.group, kex.public_bytes())
        spi_in = sa.allocate_spi(ProtocolId(chosen.protocol))
        spi_out = struct.unpack("!I", chosen.spi)[0]
        mode = "transport" if transport else "tunnel"
        negotiated = Negotiated(cfg, chosen, spi_in, spi_out, mode, local, remote)
        follows = succession(cfg) if callable(succession) else succession or Succession()
        pre: list[Payload] = [NotifyPayload(NotifyType.USE_TRANSPORT_MODE)] if transport else []
        dh, addke = (chosen.dh, chosen.addke) if pfs_allowed else (None, ())
        answer = Chosen(
            chosen.number, chosen.protocol, b"", chosen.encr, None, chosen.integ, dh, chosen.esn, addke
        )
        body: list[Payload] = [
            SaPayload((answer.as_proposal(struct.pack("!I", spi_in)),)),
            TsPayload(PayloadType.TSi, tuple(t.to_wire() for t in remote)),
            TsPayload(PayloadType.TSr, tuple(t.to_wire() for t in local)),
        ]
        if addke:
            # RFC 9370 2.2.4: the pair exists once the initiator's IKE_FOLLOWUP_KEs are done.
            sa.followup = ChildFollowup(sa.rnd.bytes(8), [shared], list(addke), now + FOLLOWUP_TIMEOUT,
                                        negotiated, ni, nr, follows.replaces)  # fmt: skip
            link = NotifyPayload(NotifyType.ADDITIONAL_KEY_EXCHANGE, sa.followup.link)
            return ChildAnswer(pre, body, our_ke, None, spi_in, [link])
        child = install_child(sa, negotiated, ni, nr, False, [shared], now, follows)
        return ChildAnswer(pre, body, our_ke, child, spi_in)
    return ChildAnswer([NotifyPayload(error)], [])
