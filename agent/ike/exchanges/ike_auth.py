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
from meshsec.agent.ike.exchanges.eap_auth import EapClientRounds, respond_eap, start_eap
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


def _established(sa: IkeSa, now: float, eap_identity: str | None = None) -> None:
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
            eap_identity,
        )
    )


class IkeAuth(Task):
    exchange = ExchangeType.IKE_AUTH

    def __init__(self, child: ChildConfig | None) -> None:
        self._child = child
        self._req: ChildRequest | None = None
        self.features: list[Feature] = ike_auth_features()
        # EAP road warrior (eap_auth.py): the IDi of the first round, what the rounds need.
        self._first_idi: IdPayload | None = None
        self._eap: EapClientRounds | None = None
        self._eap_idr: IdPayload | None = None

    def build(self, sa: IkeSa, now: float) -> list[Payload] | None:
        assert sa.prf is not None and sa.keys is not None
        cfg = sa.config
        if self._eap is not None:
            return self._eap.request(sa)  # a later round of EAP (eap_auth.py)
        idi = _id_payload(PayloadType.IDi, cfg.local_identity)
        auth: AuthPayload | None = None
        if cfg.eap_client is None:
            try:
                auth = own_auth(sa, cfg, sa.init_request, sa.nonce_r, sa.keys.sk_pi.reveal(), idi)
            except SignatureError as exc:
                sa.fail(f"cannot authenticate: {exc}", FailureReason.LOCAL_CREDENTIALS)
                return None
        else:
            self._first_idi = idi  # without AUTH: the gateway starts EAP (RFC 7296 2.16)
        # IDi, [CERT+], [CERTREQ], [N(INITIAL_CONTACT)], [IDr], AUTH, SA, TSi, TSr (RFC 7296 1.2)
        payloads: list[Payload] = [idi, *build_request(self.features, sa)]
        if cfg.remote_identity is not None:
            payloads.append(_id_payload(PayloadType.IDr, cfg.remote_identity))
        if auth is not None:
            payloads.append(auth)
        if self._child is not None:
            self._req, pre, body = build_child_request(sa, self._child)
            payloads += pre + body
        return payloads

    def process(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> Outcome:
        assert sa.prf is not None and sa.keys is not None
        if msg.notify(NotifyType.AUTHENTICATION_FAILED) is not None:
            what = "peer reported AUTHENTICATION_FAILED"
            if self._eap is not None:
                what = f"EAP-MSCHAPv2: {self._eap.peer.reason or 'gateway refused'}; {what}"
            sa.fail(what, FailureReason.AUTHENTICATION_FAILED)
            return Outcome.DONE
        if self._eap is not None:
            return self._eap_round(sa, msg, raw, now)
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
        if sa.config.eap_client is not None:
            # The gateway proved itself; now we prove ourselves with EAP, one round per request.
            assert self._first_idi is not None
            self._eap = EapClientRounds(sa)
            self._eap.first_idi, self._eap_idr = self._first_idi, idr
            return self._eap_step(sa, msg)
        return self._finish(sa, msg, raw, now)

    def _eap_round(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> Outcome:
        assert self._eap is not None and self._eap_idr is not None
        if not self._eap.succeeded:
            return self._eap_step(sa, msg)
        auth = msg.find(PayloadType.AUTH)
        if not isinstance(auth, AuthPayload) or not self._eap.check_gateway_auth(sa, self._eap_idr, auth):
            sa.notify_and_fail(
                NotifyType.AUTHENTICATION_FAILED, "the gateway's AUTH does not match the EAP MSK", now
            )
            return Outcome.DONE
        return self._finish(sa, msg, raw, now)

    def _eap_step(self, sa: IkeSa, msg: Message) -> Outcome:
        assert self._eap is not None
        problem = self._eap.receive(msg)
        if problem is not None:
            sa.fail(problem, FailureReason.AUTHENTICATION_FAILED)
            return Outcome.DONE
        return Outcome.REQUEUE  # the next round is a new IKE_AUTH request of this task

    def _finish(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> Outcome:
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


def _pick_config(sa: IkeSa, idi: Identity, idr: Identity | None, eap: bool) -> IkeConfig | None:
    """The responder's final connection choice, now that the initiator's identity is known;
    it must also accept the IKE proposal already negotiated, and expect EAP exactly when the
    peer left AUTH out of its first request (RFC 7296 2.16)."""
    assert sa.chosen is not None
    chosen_prop = sa.chosen.as_proposal(b"")
    for cfg in sa.candidates:
        if (cfg.eap is not None) != eap:
            continue
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
    if sa.eap is not None:
        step = respond_eap(sa, msg)
        if step is None or isinstance(step, list):
            return step
        sa.remote_identity = sa.eap.ident  # the EAP identity is authenticated; IDi names the SA
        sa.eap_identity = sa.eap.server.identity.decode("utf-8", "replace")
        return _answer(sa, step.first, [step.auth], now)
    idi, auth, idr = msg.find(PayloadType.IDi), msg.find(PayloadType.AUTH), msg.find(PayloadType.IDr)
    if not isinstance(idi, IdPayload) or (auth is not None and not isinstance(auth, AuthPayload)):
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
    cfg = _pick_config(sa, ident, wanted, eap=auth is None)
    if cfg is None:
        without = " for a peer without AUTH (EAP)" if auth is None else ""
        return auth_failed(f"no connection{without} for peer identity {ident}")
    sa.config = cfg
    own = _id_payload(PayloadType.IDr, cfg.local_identity)
    if auth is None:
        try:
            my_auth = own_auth(sa, cfg, sa.init_response, sa.nonce_i, sa.keys.sk_pr.reveal(), own)
        except SignatureError as exc:
            return auth_failed(f"cannot authenticate to {ident}: {exc}")
        return start_eap(sa, cfg, msg, idi, ident, own, my_auth)
    assert isinstance(auth, AuthPayload)
    problem = check_peer_auth(
        sa, cfg, msg, ident, idi, auth, sa.init_request, sa.nonce_r, sa.keys.sk_pi.reveal()
    )
    if problem is not None:
        return auth_failed(problem)
    sa.remote_identity = ident  # authenticated: a failure from here on is this connection's
    try:
        my_auth = own_auth(sa, cfg, sa.init_response, sa.nonce_i, sa.keys.sk_pr.reveal(), own)
    except SignatureError as exc:
        return auth_failed(f"cannot authenticate to {ident}: {exc}")
    return _answer(sa, msg, [own], now, my_auth)


def _answer(
    sa: IkeSa, msg: Message, lead: list[Payload], now: float, my_auth: AuthPayload | None = None
) -> list[Payload] | None:
    """The features and the first CHILD_SA, once the peer is authenticated. `msg` is the request
    that carried SA, TSi, TSr (with EAP: the first of the rounds). None: a feature deferred the
    answer (the request is processed again, EAP's last round included)."""
    features = ike_auth_features()
    refusal = process_request(features, sa, msg)
    if isinstance(refusal, Deferred):
        return None
    if refusal is not None:
        sa.close_after_response(IkeSaFailed(refusal.reason, refusal.code))
        return [refusal.notify] if refusal.notify is not None else []
    _established(sa, now, sa.eap_identity)
    payloads: list[Payload] = [*lead, *build_response(features, sa, [])]
    if my_auth is not None:
        payloads.append(my_auth)
    sa.eap = None  # done: nothing of the conversation outlives the exchange
    if sa.refuse_first_child is not None:
        # Authenticated, but nothing to carry: say why, then delete the IKE SA ourselves.
        payloads.append(NotifyPayload(sa.refuse_first_child))
        sa.queue(IkeDelete())
    elif msg.find(PayloadType.SA) is not None:
        answer = respond_child(sa, msg, sa.nonce_i, sa.nonce_r, now=now)
        payloads += answer.pre + answer.body
    return payloads
