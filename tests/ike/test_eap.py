"""EAP in IKE_AUTH (RFC 7296 2.16) between a meshsec road warrior (EAP-MSCHAPv2) and a meshsec
gateway (certificate + EAP), in memory with a fake clock: success with the CHILD_SA, a wrong
password and an unknown user failing on both sides with AUTHENTICATION_FAILED, IDi taken as the
EAP identity, lost round trips recovered by retransmission, a quiet peer timing out; and the
gateway's EAP-TLS server against OpenSSL's TLS client, with the MSK checked against RFC 5216's
PRF computed here from the TLS master secret."""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL, crypto

from meshsec.agent.ike import snapshot
from meshsec.agent.ike.certs import Credentials
from meshsec.agent.ike.config import ConfigError
from meshsec.agent.ike.constants import ExchangeType
from meshsec.agent.ike.eap.message import Code, EapPacket, EapType, decode
from meshsec.agent.ike.eap.server import EapServer
from meshsec.agent.ike.eap.tls import FLAG_LENGTH, FLAG_MORE, FLAG_START, decode_tls, encode_tls
from meshsec.agent.ike.eap.users import PENDING, EapClientConfig, EapServerConfig, EapUser, UserPending
from meshsec.agent.ike.events import ChildSaEstablished, IkeSaEstablished, IkeSaFailed
from meshsec.agent.ike.failures import FailureReason
from meshsec.agent.ike.identity import Identity
from meshsec.agent.ike.parse import parse_header
from meshsec.agent.ike.sa import HALF_OPEN_TIMEOUT, OutgoingDatagram
from meshsec.agent.ike.states import EapState
from meshsec.common.md4 import nt_password_hash
from meshsec.common.secrets import Secret

from .peers import Pair, child, ike_config, of_type
from .pki import NOW, Authority, credentials

GW_ID, CLIENT_ID = "gw.example", "carol.example"
CA = Authority.root("eap test CA")
GW_CERT, GW_KEY = CA.issue(GW_ID)
GW_CREDS = credentials([GW_CERT], GW_KEY, [CA.cert])
# The road warrior only trusts the CA: it has no certificate of its own (EAP-MSCHAPv2).
CLIENT_CREDS = Credentials((), None, (CA.cert,), lambda: NOW)
CLIENT_CERT, CLIENT_KEY = CA.issue(CLIENT_ID)  # for EAP-TLS
USERS = {
    b"carol": EapUser(b"carol", nt_hash=Secret(nt_password_hash("correct horse"))),
    CLIENT_ID.encode(): EapUser(
        CLIENT_ID.encode(), nt_hash=Secret(nt_password_hash("correct horse")), tls=True
    ),
}


def _pair(
    password: str = "correct horse", user: bytes = b"carol", identity: str = "request", **kw: object
) -> Pair:
    gateway = ike_config(
        local_id=GW_ID, remote_id="%any", psk=None, credentials=GW_CREDS,
        eap=EapServerConfig(users=USERS.get, identity=identity),
        children=(child(local="198.19.2.0/24", remote="198.19.1.0/24"),),
    )  # fmt: skip
    client = ike_config(
        local_id=CLIENT_ID if identity == "request" else user.decode(), remote_id=GW_ID, psk=None,
        credentials=CLIENT_CREDS,
        eap_client=EapClientConfig(user, Secret(nt_password_hash(password))), **kw,
    )  # fmt: skip
    return Pair(client, [gateway])


def _auth_requests(pair: Pair) -> list[int]:
    """Message IDs of the road warrior's IKE_AUTH requests, as sent (retransmissions too)."""
    out = []
    for direction, d in pair.wire:
        header = parse_header(d.data)
        if direction == "i->r" and header.exchange == ExchangeType.IKE_AUTH:
            out.append(header.message_id)
    return out


def test_eap_mschapv2_establishes_the_ike_sa_and_child_sa() -> None:
    pair = _pair()
    pair.connect()
    (est_r,) = of_type(pair.events_r, IkeSaEstablished)
    (est_i,) = of_type(pair.events_i, IkeSaEstablished)
    assert est_r.eap_identity == "carol" and est_r.remote_id == CLIENT_ID
    assert est_i.remote_id == GW_ID
    assert (
        len(of_type(pair.events_i, ChildSaEstablished))
        == len(of_type(pair.events_r, ChildSaEstablished))
        == 1
    )
    # IDi without AUTH, Identity, Challenge response, Success ack, AUTH from the MSK.
    assert _auth_requests(pair) == [1, 2, 3, 4, 5]
    assert pair.responder.eap is None  # nothing of the conversation stays on the SA
    assert pair.responder.eap_identity == "carol" and pair.initiator.eap_identity is None
    assert pair.responder.stats["eap_succeeded"] == 1


@pytest.mark.parametrize(
    ("password", "user", "gateway_reason"),
    [("wrong horse", b"carol", "wrong password"), ("correct horse", b"mallory", "unknown user")],
)
def test_wrong_password_and_unknown_user_fail_cleanly_on_both_sides(
    password: str, user: bytes, gateway_reason: str
) -> None:
    pair = _pair(password=password, user=user)
    pair.connect()
    (fail_r,) = of_type(pair.events_r, IkeSaFailed)
    (fail_i,) = of_type(pair.events_i, IkeSaFailed)
    assert fail_r.code is fail_i.code is FailureReason.AUTHENTICATION_FAILED
    assert gateway_reason in fail_r.reason and "EAP-MSCHAPV2" in fail_r.reason
    assert "refused the password" in fail_i.reason, fail_i.reason
    assert not of_type(pair.events_i, IkeSaEstablished) and not of_type(pair.events_r, IkeSaEstablished)
    assert pair.initiator.closed and not list(pair.table)  # the gateway forgot the SA
    # The client never saw who exists: both refusals read the same on its side.
    assert "E=691" in fail_i.reason


def test_idi_as_eap_identity_skips_the_identity_round() -> None:
    pair = _pair(identity="idi")
    pair.connect()
    (est_r,) = of_type(pair.events_r, IkeSaEstablished)
    assert est_r.eap_identity == "carol"
    assert _auth_requests(pair) == [1, 2, 3, 4]


def _drop_once(direction: str, message_id: int) -> object:
    dropped: list[int] = []

    def net(way: str, d: OutgoingDatagram) -> list[OutgoingDatagram]:
        header = parse_header(d.data)
        if (
            way == direction and header.exchange == ExchangeType.IKE_AUTH
            and header.message_id == message_id and not dropped
        ):  # fmt: skip
            dropped.append(message_id)
            return []
        return [d]

    return net


@pytest.mark.parametrize("direction", ["i->r", "r->i"])
def test_a_lost_eap_round_trip_is_retransmitted(direction: str) -> None:
    pair = _pair()
    pair.filter = _drop_once(direction, 3)  # type: ignore[assignment]
    pair.connect()
    assert not of_type(pair.events_i, IkeSaEstablished)
    pair.advance(4.5)  # the first retransmission (RetransmitConfig.timeout)
    assert of_type(pair.events_i, IkeSaEstablished) and of_type(pair.events_r, IkeSaEstablished)
    assert _auth_requests(pair) == [1, 2, 3, 3, 4, 5]
    if direction == "r->i":  # the gateway answered the repeat from its cache, not a second time
        assert pair.responder.stats["duplicate_request_answered"] == 1


def test_a_peer_that_goes_quiet_mid_eap_times_out_on_both_sides() -> None:
    pair = _pair()
    pair.filter = lambda way, d: [] if (way == "i->r" and parse_header(d.data).message_id >= 3) else [d]
    pair.connect()
    gateway = pair.responder
    assert gateway.eap is not None and gateway.eap.server.state is EapState.METHOD
    pair.advance(HALF_OPEN_TIMEOUT + 1)
    (fail_r,) = of_type(pair.events_r, IkeSaFailed)
    assert fail_r.code is FailureReason.HALF_OPEN_TIMEOUT
    pair.advance(200)
    (fail_i,) = of_type(pair.events_i, IkeSaFailed)
    assert fail_i.code is FailureReason.TIMEOUT


def test_a_gateway_without_eap_refuses_a_peer_that_leaves_out_auth() -> None:
    gateway = ike_config(local_id=GW_ID, remote_id="%any", psk=None, credentials=GW_CREDS,
                         children=(child(local="198.19.2.0/24", remote="198.19.1.0/24"),))  # fmt: skip
    client = ike_config(local_id=CLIENT_ID, remote_id=GW_ID, psk=None, credentials=CLIENT_CREDS,
                        eap_client=EapClientConfig(b"carol", Secret(nt_password_hash("x"))))  # fmt: skip
    pair = Pair(client, [gateway])
    pair.connect()
    (fail_r,) = of_type(pair.events_r, IkeSaFailed)
    assert "without AUTH (EAP)" in fail_r.reason
    assert of_type(pair.events_i, IkeSaFailed)[0].code is FailureReason.AUTHENTICATION_FAILED


# --- the EAP-TLS server against OpenSSL's client -------------------------------------------------


def _tls12_prf(digest: str, secret: bytes, seed: bytes, length: int) -> bytes:
    """TLS 1.2 PRF, P_<hash> (RFC 5246 section 5), written out here to check the exporter's MSK;
    the hash is the cipher suite's (SHA-384 for the *_SHA384 suites)."""
    out, a = b"", seed
    while len(out) < length:
        a = hmac.new(secret, a, digest).digest()
        out += hmac.new(secret, a + seed, digest).digest()
    return out[:length]


class TlsPeer:
    """An EAP-TLS peer (RFC 5216) around OpenSSL's TLS client, fragments and all."""

    def __init__(self, cert: object, key: object, ca: object, fragment: int = 300) -> None:
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_max_proto_version(SSL.TLS1_3_VERSION)  # offers 1.3; the server answers 1.2
        ctx.use_certificate(cert)  # type: ignore[arg-type]
        ctx.use_privatekey(key)  # type: ignore[arg-type]
        ctx.get_cert_store().add_cert(crypto.X509.from_cryptography(ca))  # type: ignore[union-attr, arg-type]
        ctx.set_verify(SSL.VERIFY_PEER, lambda _c, _x, _e, _d, ok: bool(ok))
        self.tls = SSL.Connection(ctx, None)
        self.tls.set_connect_state()
        self.fragment = fragment
        self.pending = b""
        self.inbound = b""
        self.first: int | None = None  # length of the message being sent; 0 once announced

    def _pump(self) -> None:
        with contextlib.suppress(SSL.WantReadError):
            self.tls.do_handshake()
        with contextlib.suppress(SSL.WantReadError):
            self.pending += self.tls.bio_read(65536)

    def answer(self, request: EapPacket) -> EapPacket:
        flags, _total, data = decode_tls(request.data)
        if flags & FLAG_START:
            self._pump()
        elif self.pending and not data:  # the server acknowledged one of our fragments
            pass
        else:
            self.inbound += data
            if flags & FLAG_MORE:
                return encode_tls(request.identifier, Code.RESPONSE, 0)
            self.tls.bio_write(self.inbound)
            self.inbound = b""
            self._pump()
        if not self.pending:
            return encode_tls(request.identifier, Code.RESPONSE, 0)
        if self.first is None:  # a new TLS message: its first fragment announces the length (L)
            self.first = len(self.pending)
        chunk, self.pending = self.pending[: self.fragment], self.pending[self.fragment :]
        total, self.first = (self.first, None) if not self.pending else (self.first, 0)
        if not self.pending:
            self.first = None
        announce = total if total and self.pending else None
        if announce is not None:
            self.first = 0  # later fragments carry no length
        flags = (FLAG_MORE if self.pending else 0) | (FLAG_LENGTH if announce is not None else 0)
        return encode_tls(request.identifier, Code.RESPONSE, flags, chunk, announce)


def _tls_server(identity: bytes = CLIENT_ID.encode(), **kw: object) -> tuple[EapServer, EapPacket]:
    cfg = EapServerConfig(users=USERS.get, methods=("tls",), **kw)  # type: ignore[arg-type]
    server = EapServer(cfg, Identity.parse("198.18.0.1"), GW_CREDS, lambda n: bytes(range(n)))
    first = server.start()
    assert decode(first.encode()).type == EapType.IDENTITY
    answer = server.receive(EapPacket(Code.RESPONSE, first.identifier, EapType.IDENTITY, identity).encode())
    return server, answer


def _run_tls(server: EapServer, request: EapPacket, peer: TlsPeer) -> EapPacket:
    for _ in range(40):
        if request.code != Code.REQUEST:
            return request
        request = server.receive(peer.answer(request).encode())
    raise AssertionError("EAP-TLS did not finish")


def test_eap_tls_with_a_ca_issued_client_certificate_and_the_rfc5216_msk() -> None:
    server, start = _tls_server()
    assert decode_tls(start.data)[0] & FLAG_START
    peer = TlsPeer(CLIENT_CERT, CLIENT_KEY, CA.cert)
    end = _run_tls(server, start, peer)
    assert end.code == Code.SUCCESS, server.reason
    assert server.state is EapState.SUCCEEDED and server.method == "tls"
    assert peer.tls.get_protocol_version_name() == "TLSv1.2"
    seed = peer.tls.client_random() + peer.tls.server_random()  # type: ignore[operator]
    digest = "sha384" if str(peer.tls.get_cipher_name()).endswith("SHA384") else "sha256"
    master = peer.tls.master_key()
    assert master is not None
    expected = _tls12_prf(digest, master, b"client EAP encryption" + seed, 128)[:64]
    assert server.msk is not None and server.msk.reveal() == expected
    assert server.rounds > 4  # ServerHello..ServerHelloDone went out in several fragments


@pytest.mark.parametrize(
    ("case", "reason"),
    [("wrong-ca", "does not chain to a trusted CA"), ("other-name", "is not in certificate"),
     ("not-a-user", "unknown user")],
)  # fmt: skip
def test_eap_tls_refuses_bad_certificates_and_unknown_users(case: str, reason: str) -> None:
    identity = CLIENT_ID.encode()
    if case == "wrong-ca":
        rogue = Authority.root("rogue CA")
        cert, key = rogue.issue(CLIENT_ID)
    elif case == "other-name":
        cert, key = CA.issue("mallory.example")
    else:
        identity = b"dave.example"
        cert, key = CA.issue("dave.example")
    server, start = _tls_server(identity)
    end = _run_tls(server, start, TlsPeer(cert, key, CA.cert))
    assert end.code == Code.FAILURE and server.state is EapState.FAILED
    assert reason in server.reason, server.reason
    assert server.msk is None


def test_eap_tls_fragments_are_bounded() -> None:
    server, start = _tls_server()
    # An announced length above the limit is refused at once.
    huge = encode_tls(start.identifier, Code.RESPONSE, FLAG_LENGTH | FLAG_MORE, b"x" * 100, 1 << 20)
    assert server.receive(huge.encode()).code == Code.FAILURE
    assert "refused" in server.reason
    # Fragments that never end run out of round trips.
    server, start = _tls_server(max_rounds=8)
    request = start
    for _ in range(10):
        if request.code != Code.REQUEST:
            break
        more = encode_tls(request.identifier, Code.RESPONSE, FLAG_MORE, b"y" * 500)
        request = server.receive(more.encode())
    assert request.code == Code.FAILURE and "round trips" in server.reason


def test_eap_server_refuses_wrong_identifiers_and_a_late_nak() -> None:
    cfg = EapServerConfig(users=USERS.get, methods=("mschapv2", "tls"))
    server = EapServer(cfg, Identity.parse("198.18.0.1"), GW_CREDS, lambda n: bytes(n))
    first = server.start()
    wrong = EapPacket(Code.RESPONSE, (first.identifier + 1) & 0xFF, EapType.IDENTITY, b"carol")
    assert server.receive(wrong.encode()).code == Code.FAILURE and "expected EAP response" in server.reason
    # A Nak switches a user who may use TLS from MSCHAPv2 to TLS, once.
    server = EapServer(cfg, Identity.parse("198.18.0.1"), GW_CREDS, lambda n: bytes(n))
    first = server.start()
    challenge = server.receive(
        EapPacket(Code.RESPONSE, first.identifier, EapType.IDENTITY, CLIENT_ID.encode()).encode()
    )
    assert challenge.type == EapType.MSCHAPV2
    nak = EapPacket(Code.RESPONSE, challenge.identifier, EapType.NAK, bytes([EapType.TLS]))
    start = server.receive(nak.encode())
    assert start.type == EapType.TLS and server.method == "tls"
    again = EapPacket(Code.RESPONSE, start.identifier, EapType.NAK, bytes([EapType.MSCHAPV2]))
    assert server.receive(again.encode()).code == Code.FAILURE and "Nak" in server.reason


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=6), st.sampled_from(["mschapv2", "tls"]))
@settings(max_examples=150, deadline=None)
def test_eap_server_answers_any_bytes_without_raising(packets: list[bytes], method: str) -> None:
    """Whatever a peer sends, the gateway answers a request, Success or Failure (strict mode is
    on: an exception would fail the test), and a Failure is final."""
    cfg = EapServerConfig(users=USERS.get, methods=(method,))
    server = EapServer(cfg, Identity.parse("198.18.0.1"), GW_CREDS, lambda n: bytes(n))
    request = server.start()
    for i, raw in enumerate(packets):
        # Half the time a well-formed response with the right identifier, random content.
        if i % 2 == 0 and raw:
            raw = EapPacket(Code.RESPONSE, request.identifier, raw[0], raw[1:]).encode()
        request = server.receive(raw)
        assert request.code in (Code.REQUEST, Code.SUCCESS, Code.FAILURE)
        if request.code == Code.FAILURE:
            assert server.state is EapState.FAILED and server.reason
            break
    assert server.msk is None or server.state is EapState.SUCCEEDED


def test_the_eap_identity_survives_an_ike_rekey_and_a_snapshot() -> None:
    pair = _pair()
    pair.connect()
    gateway = pair.responder
    doc = json.loads(json.dumps(snapshot.to_dict(gateway, pair.now)))
    restored = snapshot.from_dict(doc, gateway.config, pair.now, 0.0)
    assert restored.eap_identity == "carol"
    pair.initiator.rekey(pair.now)
    pair.pump()
    successor = next(sa for sa in pair.table if sa is not gateway and sa.established)
    assert successor.eap_identity == "carol"


def test_trust_anchors_alone_suit_only_an_eap_road_warrior() -> None:
    with pytest.raises(ConfigError, match="only suit an EAP road warrior"):
        ike_config(local_id=CLIENT_ID, remote_id=GW_ID, psk=None, credentials=CLIENT_CREDS)
    with pytest.raises(ConfigError, match="an EAP gateway signs with its certificate"):
        ike_config(local_id=GW_ID, remote_id="%any", psk=None, credentials=CLIENT_CREDS,
                   eap=EapServerConfig(users=USERS.get))  # fmt: skip


@pytest.mark.parametrize("identity", ["request", "idi"])
def test_a_pending_user_lookup_defers_the_round_until_resumed(identity: str) -> None:
    """A gateway that fetches users (from its controller) answers the round that named the
    identity only once the user is there: nothing is sent meanwhile, then it goes on."""
    fetched: dict[bytes, EapUser | None] = {}
    asked: list[bytes] = []

    def lookup(name: bytes) -> EapUser | UserPending | None:
        asked.append(name)
        return fetched.get(name, PENDING)

    pair = _pair(identity=identity)
    cfg = pair.resp_cfgs[0]
    pair.resp_cfgs[0] = dataclasses.replace(cfg, eap=dataclasses.replace(cfg.eap, users=lookup))  # type: ignore[arg-type]
    pair.connect()
    assert asked == [b"carol"] and not of_type(pair.events_r, IkeSaEstablished)
    gateway = pair.responder
    assert gateway.stats["eap_user_pending"] == 1 and gateway.tasks.deferred
    fetched[b"carol"] = USERS[b"carol"]
    gateway.resume_request(pair.now)
    pair.pump()
    (est,) = of_type(pair.events_r, IkeSaEstablished)
    assert est.eap_identity == "carol" and of_type(pair.events_i, IkeSaEstablished)
    assert asked == [b"carol", b"carol"]
