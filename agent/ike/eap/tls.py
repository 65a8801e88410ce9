"""The EAP-TLS authenticator (RFC 5216), sans-IO: the gateway's TLS server runs over memory
BIOs (pyOpenSSL), so EAP packets go in and out and no socket or thread is involved.

The TLS records travel in EAP-TLS packets of at most `fragment_size` bytes (L and M flags,
section 2.1.5): a fragment with M set is acknowledged by an empty packet, and the length the
first fragment announces (L) is bounded by MAX_TLS_MESSAGE, as is what has been reassembled.
TLS 1.2 only: EAP-TLS 1.3 (RFC 9190: a protected success indication, another MSK derivation)
is not built here, so a peer that offers 1.3 is answered with 1.2 (strongSwan 5.9.8 and OpenSSL's
client, as tested, accept that).

The peer's certificate is checked after the handshake with the same policy as IKE's
certificate authentication (certs.validate_chain: validity, chain to the gateway's trusted CAs,
the EAP identity in its subjectAltName); OpenSSL's own verification is told to accept every
chain so there is one policy, not two. The MSK is the first 64 bytes of
PRF(master_secret, "client EAP encryption", client.random | server.random) (section 2.3), which
is the RFC 5705 exporter without context: `export_keying_material`, absent from Python's ssl.
"""

from __future__ import annotations

import enum
import struct

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL, crypto

from meshsec.agent.ike.certs import Credentials, validate_chain
from meshsec.agent.ike.eap.message import Code, EapPacket, EapType
from meshsec.agent.ike.eap.users import MAX_TLS_MESSAGE
from meshsec.agent.ike.identity import Identity
from meshsec.common.secrets import Secret

FLAG_LENGTH = 0x80  # L: the TLS message length follows (first fragment)
FLAG_MORE = 0x40  # M: more fragments follow
FLAG_START = 0x20  # S: EAP-TLS start (server's first request)
MSK_LABEL = b"client EAP encryption"
FRAGMENT_SIZE = 1000


class State(enum.Enum):
    STARTED = "started"  # Start sent, no ClientHello yet
    HANDSHAKE = "handshake"  # TLS records flowing
    FINISHED_SENT = "finished-sent"  # our last flight is out, waiting for the peer's ACK
    DONE = "done"
    FAILED = "failed"


def encode_tls(
    identifier: int, code: int, flags: int, data: bytes = b"", total: int | None = None
) -> EapPacket:
    head = bytes([flags]) + (struct.pack("!I", total) if total is not None else b"")
    return EapPacket(code, identifier & 0xFF, EapType.TLS, head + data)


def decode_tls(data: bytes) -> tuple[int, int | None, bytes]:
    """(flags, announced total length or None, TLS data) of an EAP-TLS packet's type-data."""
    if not data:
        raise ValueError("EAP-TLS packet without flags")
    flags = data[0]
    if flags & FLAG_LENGTH:
        if len(data) < 5:
            raise ValueError("EAP-TLS L flag without the 4-byte length")
        return flags, struct.unpack_from("!I", data, 1)[0], data[5:]
    return flags, None, data[1:]


class TlsAuthenticator:
    """Same interface as MschapV2Authenticator: start(), receive(packet), state, msk, reason."""

    def __init__(
        self, identity: bytes, credentials: Credentials, *, identifier: int = 1,
        fragment_size: int = FRAGMENT_SIZE,
    ) -> None:  # fmt: skip
        self._identity = identity
        self._creds = credentials
        self._id = identifier & 0xFF
        self._fragment = fragment_size
        self._inbound = b""  # reassembly of the peer's fragmented TLS message
        self._inbound_total: int | None = None
        self._outbound = b""  # our TLS bytes not yet sent
        self._msk: Secret | None = None
        self.state = State.STARTED
        self.reason = ""
        self.version = ""
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_RENEGOTIATION)
        assert credentials.key is not None  # IkeConfig refuses an EAP gateway that cannot sign
        ctx.use_certificate(credentials.chain[0])
        for extra in credentials.chain[1:]:
            ctx.add_extra_chain_cert(crypto.X509.from_cryptography(extra))
        ctx.use_privatekey(credentials.key)
        # Ask for (and insist on) a client certificate; its chain is judged by validate_chain.
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *_: True)
        self._tls = SSL.Connection(ctx, None)
        self._tls.set_accept_state()

    @property
    def msk(self) -> Secret | None:
        return self._msk

    def start(self) -> EapPacket:
        return encode_tls(self._id, Code.REQUEST, FLAG_START)

    def receive(self, packet: EapPacket) -> EapPacket:
        if packet.code != Code.RESPONSE or packet.type != EapType.TLS:
            return self._fail(f"expected an EAP-TLS response, got code {packet.code} type {packet.type}")
        if self.state in (State.DONE, State.FAILED):
            return self._fail(f"EAP-TLS response in state {self.state.value}")
        try:
            flags, total, data = decode_tls(packet.data)
        except ValueError as exc:
            return self._fail(str(exc))
        if self._outbound:
            # The peer acknowledges one of our fragments with an empty packet (section 2.1.5).
            if data or flags & FLAG_MORE:
                return self._fail("EAP-TLS peer sent data instead of acknowledging our fragment")
            return self._next_fragment()
        if self.state is State.FINISHED_SENT:
            if data:
                return self._fail("EAP-TLS peer sent data after the handshake")
            return self._succeed()
        if total is not None:
            if total > MAX_TLS_MESSAGE or self._inbound:
                return self._fail(f"EAP-TLS message length {total} refused")
            self._inbound_total = total
        self._inbound += data
        if len(self._inbound) > (self._inbound_total or MAX_TLS_MESSAGE):
            return self._fail("EAP-TLS fragments exceed the announced or allowed length")
        if flags & FLAG_MORE:
            return self._next_id_packet(encode_tls(0, Code.REQUEST, 0))  # ACK: send the rest
        message, self._inbound, self._inbound_total = self._inbound, b"", None
        return self._feed(message)

    def _feed(self, message: bytes) -> EapPacket:
        self.state = State.HANDSHAKE
        self._tls.bio_write(message)
        try:
            self._tls.do_handshake()
            finished = True
        except SSL.WantReadError:
            finished = False
        except SSL.Error as exc:
            # What OpenSSL wants to tell the peer (an alert) still goes out with the Failure.
            return self._fail(f"TLS handshake failed: {_ssl_reason(exc)}")
        self._outbound = self._drain()
        if finished:
            problem = self._check_peer()
            if problem is not None:
                return self._fail(problem)
            self.version = self._tls.get_protocol_version_name()
            keying = self._tls.export_keying_material(MSK_LABEL, 128)
            self._msk = Secret(keying[:64])
            self.state = State.FINISHED_SENT
        if not self._outbound:
            return self._fail("TLS handshake stalled: nothing to send")
        return self._next_fragment(first=True)

    def _drain(self) -> bytes:
        out = b""
        while True:
            try:
                chunk = self._tls.bio_read(65536)
            except SSL.WantReadError:
                return out
            if not chunk:
                return out
            out += chunk

    def _next_fragment(self, first: bool = False) -> EapPacket:
        total = len(self._outbound)
        chunk, self._outbound = self._outbound[: self._fragment], self._outbound[self._fragment :]
        flags = FLAG_MORE if self._outbound else 0
        length = total if first and self._outbound else None
        if length is not None:
            flags |= FLAG_LENGTH
        return self._next_id_packet(encode_tls(0, Code.REQUEST, flags, chunk, length))

    def _check_peer(self) -> str | None:
        # On a server OpenSSL keeps the peer's leaf apart from the rest of what it sent.
        leaf = self._tls.get_peer_certificate(as_cryptography=True)
        rest = self._tls.get_peer_cert_chain(as_cryptography=True) or []
        chain = ([leaf] if leaf is not None else []) + [c for c in rest if c != leaf]
        try:
            ident = Identity.parse(self._identity.decode())
        except (UnicodeDecodeError, ValueError):
            return "EAP identity is not a name a certificate can carry"
        verified = validate_chain([c.public_bytes(Encoding.DER) for c in chain], self._creds, ident)
        if isinstance(verified, str):
            return f"EAP-TLS client certificate refused: {verified}"
        return None

    def _succeed(self) -> EapPacket:
        self.state = State.DONE
        return self._next_id_packet(EapPacket(Code.SUCCESS, 0))

    def _fail(self, reason: str) -> EapPacket:
        self.state = State.FAILED
        self.reason = reason
        self._outbound = b""
        return self._next_id_packet(EapPacket(Code.FAILURE, 0))

    def _next_id_packet(self, packet: EapPacket) -> EapPacket:
        self._id = (self._id + 1) & 0xFF
        return EapPacket(packet.code, self._id, packet.type, packet.data)


def _ssl_reason(exc: SSL.Error) -> str:
    parts = [p for err in exc.args[0] for p in err if p] if exc.args and isinstance(exc.args[0], list) else []
    return ": ".join(str(p) for p in parts[-1:]) if parts else type(exc).__name__
