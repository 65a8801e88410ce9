"""The AUTH payload of IKE_AUTH (RFC 7296 2.15) for both kinds of credentials: a PSK MAC
(method 2) or a signature with CERT payloads (methods 1, 9-11, 14). Both sides use the same
two calls; the answer of a failed check is the precise reason for the log and IkeSaFailed."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from cryptography.x509.oid import NameOID

from meshsec.agent.ike.certs import (
    CERT_ENCODING_X509_SIGNATURE,
    MALFORMED_PREFIX,
    validate_chain,
)
from meshsec.agent.ike.config import IkeConfig
from meshsec.agent.ike.constants import AuthMethod
from meshsec.agent.ike.crypto import Prf
from meshsec.agent.ike.identity import Identity
from meshsec.agent.ike.payloads import AuthPayload, CertPayload, IdPayload, Message
from meshsec.agent.ike.revocation import serial_text
from meshsec.agent.ike.sigauth import SignatureError, method_name, sign, verify

if TYPE_CHECKING:
    from meshsec.agent.ike.sa import IkeSa

KEY_PAD = b"Key Pad for IKEv2"


def psk_auth(
    prf: Prf, psk: bytes, real_message: bytes, nonce: bytes, sk_p: bytes, id_body: bytes, intauth: bytes = b""
) -> bytes:
    """AUTH = prf(prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>) with
    SignedOctets = RealMessage | Nonce(peer) | prf(SK_p, RestOfIDPayload) (RFC 7296 2.15), then
    IntAuth after IKE_INTERMEDIATE exchanges (RFC 9242 3.3.2)."""
    return prf(prf(psk, KEY_PAD), real_message + nonce + prf(sk_p, id_body) + intauth)


def _intauth(sa: IkeSa) -> bytes:
    return sa.additional.auth_octets() if sa.additional is not None else b""


def own_auth(
    sa: IkeSa, cfg: IkeConfig, real_message: bytes, nonce: bytes, sk_p: bytes, own_id: IdPayload
) -> AuthPayload:
    """Raises SignatureError if our key cannot sign for this peer (e.g. Ed25519 without RFC 8420)."""
    assert sa.prf is not None
    if cfg.credentials is None:
        assert cfg.psk is not None
        data = psk_auth(
            sa.prf, cfg.psk.reveal(), real_message, nonce, sk_p, own_id.body_for_auth(), _intauth(sa)
        )
        return AuthPayload(AuthMethod.SHARED_KEY_MIC, data)
    octets = real_message + nonce + sa.prf(sk_p, own_id.body_for_auth()) + _intauth(sa)
    method, data = sign(cfg.credentials, octets, sa.peer_hashes)
    return AuthPayload(method, data)


def check_peer_auth(
    sa: IkeSa, cfg: IkeConfig, msg: Message, ident: Identity, peer_id: IdPayload, auth: AuthPayload,
    real_message: bytes, nonce: bytes, sk_p: bytes,
) -> str | None:  # fmt: skip
    """None if the peer proved `ident`, else the reason it did not."""
    assert sa.prf is not None
    if cfg.credentials is None:
        if auth.method != AuthMethod.SHARED_KEY_MIC:
            return f"{ident} used AUTH method {method_name(auth.method)} but we expect a PSK"
        assert cfg.psk is not None
        expect = psk_auth(
            sa.prf, cfg.psk.reveal(), real_message, nonce, sk_p, peer_id.body_for_auth(), _intauth(sa)
        )
        return (
            None
            if hmac.compare_digest(expect, auth.data)
            else f"AUTH from {ident} did not verify (wrong PSK?)"
        )
    if auth.method == AuthMethod.SHARED_KEY_MIC:
        return f"{ident} authenticated with a PSK but we require a certificate"
    certs = [p.data for p in msg.payloads if isinstance(p, CertPayload)]
    if any(p.encoding != CERT_ENCODING_X509_SIGNATURE for p in msg.payloads if isinstance(p, CertPayload)):
        return f"{ident} sent a CERT encoding other than X.509 signature (4)"
    verified = validate_chain(certs, cfg.credentials, ident)
    if isinstance(verified, str):
        malformed = verified.startswith(MALFORMED_PREFIX)
        sa.stats["auth_failed_malformed_certificate" if malformed else "auth_failed_certificate"] += 1
        return f"certificate authentication of {ident} failed: {verified}"
    octets = real_message + nonce + sa.prf(sk_p, peer_id.body_for_auth()) + _intauth(sa)
    problem = verify(verified.key, auth.method, auth.data, octets)
    if problem is not None:
        return f"AUTH ({method_name(auth.method)}) from {ident} did not verify: {problem}"
    serial = serial_text(verified.leaf)
    if cfg.revocations is not None and serial in cfg.revocations:
        sa.stats["auth_failed_revoked"] += 1
        sa.revoked_serial = serial
        return f"certificate authentication of {ident} failed: certificate serial {serial} is revoked"
    sa.peer_serial = serial
    names = verified.leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    sa.peer_common_name = str(names[0].value) if names else None
    return None


__all__ = [
    "KEY_PAD",
    "SignatureError",
    "check_peer_auth",
    "own_auth",
    "psk_auth",
]
