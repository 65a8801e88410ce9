"""IKE_AUTH (RFC 7296 1.2, 2.15): identities, PSK or certificate authentication (see
authenticate.py), configuration choice by the peer's identity, the features listed in
features/compose.py (certificates, INITIAL_CONTACT) and the first CHILD_SA."""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshsec.agent.ike.config import ChildConfig, IkeConfig
from meshsec.agent.ike.constants import ExchangeType, NotifyType, PayloadType
from meshsec.agent.ike.events import Algorithms, IkeSaEstablished, IkeSaFailed
from meshsec.agent.ike.exchanges.authenticate import check_peer_auth, own_auth
from meshsec.agent.ike.exchanges.child_sa import (
    ChildRequest,
    build_child_request,
    complete_child_initiator,
    respond_child,
)
from meshsec.agent.ike.exchanges.informational import IkeDelete
from meshsec.agent.ike.failures import FailureReason
from meshsec.agent.ike.feature import (
    Deferred,
    Feature,
    Refusal,
    build_request,
    build_response,
    process_request,
    process_response,
)
from meshsec.agent.ike.features.compose import ike_auth_features
from meshsec.agent.ike.identity import Identity
from meshsec.agent.ike.payloads import AuthPayload, IdPayload, Message, NotifyPayload, Payload
from meshsec.agent.ike.proposals import select_proposal
from meshsec.agent.ike.sigauth import SignatureError
from meshsec.agent.ike.states import State
from meshsec.agent.ike.task import Outcome, Task

if TYPE_CHECKING:
    from meshsec.agent.ike.sa import IkeSa

__all__ = ["IkeAuth", "respond_ike_auth"]


def _id_payload(kind: PayloadType, ident: Identity) -> IdPayload:
    return IdPayload(kind, ident.id_type, ident.data)


def _established(sa: IkeSa, now: float) -> None:
    assert sa.chosen is not None and sa.remote_identity is not None
    c = sa.chosen
    sa.move_to(State.ESTABLISHED)
    sa.lifetime.start(now)
    sa.emit(
        IkeSaEstablished(
            sa.spi_i,
            sa.spi_r,
            sa.initiator,
            str(sa.config.local_identity),
            str(sa.remote_identity),
            Algorithms(
                c.encr.id if c.encr else None,
                c.encr.key_length if c.encr else None,
                c.integ,
                c.prf,
                c.dh,
                additional_ke=tuple(method for _, method in c.addke),
            ),
            sa.udp_encap,
            sa.config.name,
        )
    )


class IkeAuth(Task):
    exchange = ExchangeType.IKE_AUTH

    def __init__(self, child: ChildConfig | None) -> None:
        self._child = child
        self._req: ChildRequest | None = None
        self.features: list[Feature] = ike_auth_features()

    def build(self, sa: IkeSa, now: float) -> list[Payload] | None:
        assert sa.prf is not None and sa.keys is not None
        cfg = sa.config
        idi = _id_payload(PayloadType.IDi, cfg.local_identity)
        try:
            auth = own_auth(sa, cfg, sa.init_request, sa.nonce_r, sa.keys.sk_pi.reveal(), idi)
        except SignatureError as exc:
            sa.fail(f"cannot authenticate: {exc}", FailureReason.LOCAL_CREDENTIALS)
            return None
        # IDi, [CERT+], [CERTREQ], [N(INITIAL_CONTACT)], [IDr], AUTH, SA, TSi, TSr (RFC 7296 1.2)
        payloads: list[Payload] = [idi, *build_request(self.features, sa)]
        if cfg.remote_identity is not None:
            payloads.append(_id_payload(PayloadType.IDr, cfg.remote_identity))
        payloads.append(auth)
        if self._child is not None:
            self._req, pre, body = build_child_request(sa, self._child)
            payloads += pre + body
        return payloads

    def process(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> Outcome:
        assert sa.prf is not None and sa.keys is not None
        if msg.notify(NotifyType.AUTHENTICATION_FAILED) is not None:
            sa.fail("peer reported AUTHENTICATION_FAILED", FailureReason.AUTHENTICATION_FAILED)
            return Outcome.DONE
        idr, auth = msg.find(PayloadType.IDr), msg.find(PayloadType.AUTH)
        if not isinstance(idr, IdPayload) or not isinstance(auth, AuthPayload):
            errors = [n for n in msg.notifies() if n.notify_type < 16384]
            what = (
                NotifyType(errors[0].notify_type).name
                if errors and errors[0].notify_type in NotifyType._value2member_map_
                else "IDr/AUTH missing"
            )
            code = (
                FailureReason.from_notify(errors[0].notify_type) if errors else FailureReason.INVALID_RESPONSE
            )
            sa.fail(f"IKE_AUTH failed: {what}", code)
            return Outcome.DONE
        ident = Identity(idr.id_type, idr.data)
        if not sa.config.matches_remote(ident):
            sa.fail(
                f"responder identity {ident} does not match {sa.config.remote_id}",
                FailureReason.AUTHENTICATION_FAILED,
            )
            return Outcome.DONE
        problem = check_peer_auth(
            sa, sa.config, msg, ident, idr, auth, sa.init_response, sa.nonce_i, sa.keys.sk_pr.reveal()
        )
        if problem is not None:
            # Tell the responder, then give up (RFC 7296 2.21.2).
            sa.notify_and_fail(NotifyType.AUTHENTICATION_FAILED, problem, now)
            return Outcome.DONE
        sa.remote_identity = ident
        verdict = process_response(self.features, sa, msg, raw)
        if isinstance(verdict, Refusal):
            sa.fail(verdict.reason, verdict.code)
            return Outcome.DONE
        _established(sa, now)
        if self._req is not None:
            complete_child_initiator(sa, self._req, msg, sa.nonce_i, sa.nonce_r, now=now)
        return Outcome.DONE

    def on_timeout(self, sa: IkeSa) -> None:
        sa.fail("IKE_AUTH: peer not responding (retransmit limit)", FailureReason.TIMEOUT)


def _pick_config(sa: IkeSa, idi: Identity, idr: Identity | None) -> IkeConfig | None:
    """The responder's final connection choice, now that the initiator's identity is known;
    it must also accept the IKE proposal already negotiated."""
    assert sa.chosen is not None
    chosen_prop = sa.chosen.as_proposal(b"")
    for cfg in sa.candidates:
        if not cfg.matches_remote(idi):
            continue
        if idr is not None and cfg.local_identity != idr:
            continue
        if select_proposal(cfg.specs, (chosen_prop,)) is None:
            continue
        return cfg
    return None


def respond_ike_auth(sa: IkeSa, msg: Message, now: float) -> list[Payload] | None:
    assert sa.prf is not None and sa.keys is not None

    def auth_failed(reason: str) -> list[Payload]:
        sa.close_after_response(IkeSaFailed(reason, FailureReason.AUTHENTICATION_FAILED))
        return [NotifyPayload(NotifyType.AUTHENTICATION_FAILED)]

    if sa.state is not State.AUTHENTICATING:
        return [NotifyPayload(NotifyType.INVALID_SYNTAX)]
    idi, auth, idr = msg.find(PayloadType.IDi), msg.find(PayloadType.AUTH), msg.find(PayloadType.IDr)
    if not isinstance(idi, IdPayload) or not isinstance(auth, AuthPayload):
        sa.close_after_response(
            IkeSaFailed("IKE_AUTH request lacks IDi or AUTH", FailureReason.INVALID_SYNTAX)
        )
        return [NotifyPayload(NotifyType.INVALID_SYNTAX)]
    sa.previous_protection = None  # IKE_INTERMEDIATE requests cannot come again after this one
    if sa.additional is not None and not sa.additional.finished:
        sa.close_after_response(
            IkeSaFailed(
                "IKE_AUTH before the negotiated additional key exchanges", FailureReason.INVALID_SYNTAX
            )
        )
        return [NotifyPayload(NotifyType.INVALID_SYNTAX)]
    ident = Identity(idi.id_type, idi.data)
    wanted = Identity(idr.id_type, idr.data) if isinstance(idr, IdPayload) else None
    cfg = _pick_config(sa, ident, wanted)
    if cfg is None:
        return auth_failed(f"no connection for peer identity {ident}")
    sa.config = cfg
    problem = check_peer_auth(
        sa, cfg, msg, ident, idi, auth, sa.init_request, sa.nonce_r, sa.keys.sk_pi.reveal()
    )
    if problem is not None:
        return auth_failed(problem)
    sa.remote_identity = ident  # authenticated: a failure from here on is this connection's
    own = _id_payload(PayloadType.IDr, cfg.local_identity)
    try:
        my_auth = own_auth(sa, cfg, sa.init_response, sa.nonce_i, sa.keys.sk_pr.reveal(), own)
    except SignatureError as exc:
        return auth_failed(f"cannot authenticate to {ident}: {exc}")
    features = ike_auth_features()
    refusal = process_request(features, sa, msg)
    if isinstance(refusal, Deferred):
        return None
    if refusal is not None:
        sa.close_after_response(IkeSaFailed(refusal.reason, refusal.code))
        return [refusal.notify] if refusal.notify is not None else []
    _established(sa, now)
    payloads: list[Payload] = [own, *build_response(features, sa, []), my_auth]
    if sa.refuse_first_child is not None:
        # Authenticated, but nothing to carry: say why, then delete the IKE SA ourselves.
        payloads.append(NotifyPayload(sa.refuse_first_child))
        sa.queue(IkeDelete())
    elif msg.find(PayloadType.SA) is not None:
        answer = respond_child(sa, msg, sa.nonce_i, sa.nonce_r, now=now)
        payloads += answer.pre + answer.body
    return payloads
