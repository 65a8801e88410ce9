"""EAP in IKE_AUTH (RFC 7296 2.16), both roles; ike_auth.py hands over to it when the
initiator's first IKE_AUTH request has no AUTH payload.

Gateway (responder):
    1  IDi, [CERTREQ], SA, TSi, TSr          ->  IDr, CERT, AUTH (our signature), EAP(request)
    2.. EAP(response)                        ->  EAP(request) ... EAP(Success | Failure)
    n  AUTH (from the MSK)                   ->  AUTH (from the MSK), [CP], SA, TSi, TSr
The conversation lives on `sa.eap` between round trips (one IKE_AUTH message ID each). The
gateway never retransmits: the peer does, and the task manager answers a repeated request from
its response cache. A peer that goes quiet runs into the half-open timeout (the SA is not
authenticated until the last AUTH checks out). Any failure answers EAP-Failure with
N(AUTHENTICATION_FAILED) and closes the SA with FailureReason.AUTHENTICATION_FAILED.

Road warrior (initiator, EAP-MSCHAPv2): `EapClientRounds` is kept by the IkeAuth task, which
re-runs itself (Outcome.REQUEUE) once per round trip, so each round is retransmitted by the
task manager like any request.

AUTH from the MSK: prf(prf(MSK, "Key Pad for IKEv2"), <SignedOctets>), each side over its own
signed octets (the IDi/IDr of the first round), as a PSK AUTH would be (authenticate.psk_auth).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshsec.agent.ike.config import IkeConfig
from meshsec.agent.ike.constants import AuthMethod, NotifyType, PayloadType
from meshsec.agent.ike.eap.client import MschapV2Peer
from meshsec.agent.ike.eap.message import Code
from meshsec.agent.ike.eap.server import EapServer
from meshsec.agent.ike.eap.users import MAX_ROUNDS
from meshsec.agent.ike.events import IkeSaFailed
from meshsec.agent.ike.exchanges.authenticate import psk_auth
from meshsec.agent.ike.failures import FailureReason
from meshsec.agent.ike.features.certificates import cert_payloads
from meshsec.agent.ike.identity import Identity
from meshsec.agent.ike.payloads import AuthPayload, EapPayload, IdPayload, Message, NotifyPayload, Payload
from meshsec.agent.ike.states import EapState
from meshsec.common.secrets import Secret

if TYPE_CHECKING:
    from meshsec.agent.ike.sa import IkeSa


@dataclass
class EapAuthentication:
    """The gateway's EAP conversation with one peer, between its IKE_AUTH round trips."""

    server: EapServer
    first: Message  # the first IKE_AUTH request: SA, TSi, TSr, CP and notifies are answered last
    idi: IdPayload
    ident: Identity
    own_id: IdPayload

    @property
    def claimed_identity(self) -> str | None:
        """The EAP identity the peer named, proven or not (a refusal says whom it refused)."""
        return self.server.identity.decode("utf-8", "replace") or None

    def describe(self) -> str:
        who = self.server.identity.decode("utf-8", "replace") or str(self.ident)
        return f"EAP-{self.server.method.upper() or 'IDENTITY'} for {who!r}"


@dataclass(frozen=True)
class EapVerified:
    """The last round: the peer's AUTH from the MSK checked out; `auth` is ours."""

    auth: AuthPayload
    first: Message


def start_eap(
    sa: IkeSa,
    cfg: IkeConfig,
    msg: Message,
    idi: IdPayload,
    ident: Identity,
    own: IdPayload,
    my_auth: AuthPayload,
) -> list[Payload] | None:
    """The answer to an IKE_AUTH request without AUTH: our identity, certificate and AUTH, and
    the first EAP request. None: the user lookup is pending (the request waits, Deferred's way)."""
    assert cfg.eap is not None and cfg.credentials is not None
    server = EapServer(cfg.eap, ident, cfg.credentials, sa.rnd.bytes)
    first = server.start()
    if first is None:
        sa.stats["eap_user_pending"] += 1
        return None
    sa.eap = EapAuthentication(server, msg, idi, ident, own)
    sa.stats["eap_started"] += 1
    return [own, *cert_payloads(cfg.credentials), my_auth, EapPayload(first.encode())]


def respond_eap(sa: IkeSa, msg: Message) -> list[Payload] | EapVerified | None:
    """None: the user lookup is pending; the request is processed again on resume."""
    session = sa.eap
    assert session is not None and sa.keys is not None and sa.prf is not None
    server = session.server
    if server.state in (EapState.SUCCEEDED, EapState.DONE):
        # DONE too: a last round whose answer had to wait (a feature deferred it) is processed
        # again, AUTH and all.
        return _check_msk_auth(sa, session, msg)
    eap = msg.find(PayloadType.EAP)
    if not isinstance(eap, EapPayload):
        return _refuse(sa, session, "IKE_AUTH request without the EAP payload the conversation needs")
    answer = server.receive(eap.data)
    if answer is None:
        sa.stats["eap_user_pending"] += 1
        return None
    if answer.code == Code.FAILURE:
        sa.stats["eap_failed"] += 1
        return _refuse(sa, session, server.reason, [EapPayload(answer.encode())])
    return [EapPayload(answer.encode())]


def _check_msk_auth(sa: IkeSa, session: EapAuthentication, msg: Message) -> list[Payload] | EapVerified:
    assert sa.keys is not None and sa.prf is not None
    msk = _msk(session.server.msk)
    auth = msg.find(PayloadType.AUTH)
    if not isinstance(auth, AuthPayload) or auth.method != AuthMethod.SHARED_KEY_MIC:
        return _refuse(sa, session, "after EAP-Success the peer sent no AUTH from the MSK")
    expect = psk_auth(
        sa.prf, msk, sa.init_request, sa.nonce_r, sa.keys.sk_pi.reveal(), session.idi.body_for_auth()
    )
    if not hmac.compare_digest(expect, auth.data):
        return _refuse(sa, session, "the peer's AUTH does not match the EAP MSK")
    if session.server.state is EapState.SUCCEEDED:
        session.server.verified()
    ours = psk_auth(
        sa.prf, msk, sa.init_response, sa.nonce_i, sa.keys.sk_pr.reveal(), session.own_id.body_for_auth()
    )
    sa.stats["eap_succeeded"] += 1
    return EapVerified(AuthPayload(AuthMethod.SHARED_KEY_MIC, ours), session.first)


def _msk(msk: Secret | None) -> bytes:
    """Both methods here make an MSK (RFC 7296 2.16 falls back to SK_pi/SK_pr for those that
    do not; none of ours)."""
    assert msk is not None
    return msk.reveal()


def _refuse(
    sa: IkeSa, session: EapAuthentication, reason: str, lead: list[Payload] | None = None
) -> list[Payload]:
    if session.server.state is not EapState.FAILED:
        session.server.auth_failed(reason)
    sa.close_after_response(
        IkeSaFailed(f"{session.describe()}: {reason}", FailureReason.AUTHENTICATION_FAILED)
    )
    return [*(lead or []), NotifyPayload(NotifyType.AUTHENTICATION_FAILED)]


# --- the road warrior ------------------------------------------------------------------------


class EapClientRounds:
    """What the IkeAuth task of an EAP initiator keeps between its round trips."""

    def __init__(self, sa: IkeSa) -> None:
        assert sa.config.eap_client is not None
        self.peer = MschapV2Peer(sa.config.eap_client, sa.rnd.bytes)
        self.outgoing: bytes | None = None  # our next EAP response
        self.rounds = 0
        self.first_idi: IdPayload | None = None

    @property
    def succeeded(self) -> bool:
        return self.peer.msk is not None

    def request(self, sa: IkeSa) -> list[Payload]:
        """The payloads of the next round: our EAP response, or AUTH once EAP succeeded."""
        assert sa.keys is not None and sa.prf is not None and self.first_idi is not None
        if self.peer.msk is not None:
            data = psk_auth(
                sa.prf, self.peer.msk.reveal(), sa.init_request, sa.nonce_r, sa.keys.sk_pi.reveal(),
                self.first_idi.body_for_auth(),
            )  # fmt: skip
            return [AuthPayload(AuthMethod.SHARED_KEY_MIC, data)]
        assert self.outgoing is not None
        return [EapPayload(self.outgoing)]

    def receive(self, msg: Message) -> str | None:
        """Feeds the gateway's EAP packet; the reason it failed, or None to go on."""
        self.rounds += 1
        if self.rounds > MAX_ROUNDS:
            return f"EAP took more than {MAX_ROUNDS} round trips"
        eap = msg.find(PayloadType.EAP)
        if not isinstance(eap, EapPayload):
            return "the gateway's IKE_AUTH answer carries no EAP payload"
        answer = self.peer.receive(eap.data)
        if answer is not None:
            self.outgoing = answer.encode()
            return None
        if self.peer.msk is None:
            return f"EAP-MSCHAPv2 failed: {self.peer.reason}"
        self.outgoing = None
        return None

    def check_gateway_auth(self, sa: IkeSa, idr: IdPayload, auth: AuthPayload) -> bool:
        assert sa.keys is not None and sa.prf is not None and self.peer.msk is not None
        if auth.method != AuthMethod.SHARED_KEY_MIC:
            return False
        expect = psk_auth(
            sa.prf, self.peer.msk.reveal(), sa.init_response, sa.nonce_i, sa.keys.sk_pr.reveal(),
            idr.body_for_auth(),
        )  # fmt: skip
        return hmac.compare_digest(expect, auth.data)
