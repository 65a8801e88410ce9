"""The MS-CHAPv2 computations (RFC 2759 section 8) an EAP-MSCHAPv2 authenticator needs, and the
MSK (RFC 3079 section 3.4 master keys) that IKEv2 signs its AUTH payloads with (RFC 7296 2.16).

The authenticator side never sees the password, only its NT hash (what the controller stores):
it recomputes the peer's NT-Response from the hash and answers with the AuthenticatorResponse.
DES comes from `cryptography`'s TripleDES with K1 = K2 = K3, which is single DES.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from meshsec.common.md4 import md4

MAGIC1 = b"Magic server to client signing constant"
MAGIC2 = b"Pad to make it do more than one iteration"
# RFC 3079 section 3.4.
MASTER_MAGIC = b"This is the MPPE Master Key"
SEND_MAGIC = b"On the client side, this is the send key; on the server side, it is the receive key."
RECV_MAGIC = b"On the client side, this is the receive key; on the server side, it is the send key."
SHS_PAD1 = b"\x00" * 40
SHS_PAD2 = b"\xf2" * 40


def challenge_hash(peer_challenge: bytes, authenticator_challenge: bytes, user_name: bytes) -> bytes:
    """ChallengeHash (8.2); `user_name` without any domain part."""
    return hashlib.sha1(peer_challenge + authenticator_challenge + user_name).digest()[:8]


def _des_key(seven: bytes) -> bytes:
    """Spread 56 key bits over 8 bytes, the low bit of each (parity) left zero (8.6 DesEncrypt)."""
    bits = int.from_bytes(seven, "big")
    return bytes(((bits >> (56 - 7 * (i + 1))) & 0x7F) << 1 for i in range(8))


def _des(key7: bytes, block: bytes) -> bytes:
    key = _des_key(key7)
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()
    return encryptor.update(block) + encryptor.finalize()


def challenge_response(challenge: bytes, password_hash: bytes) -> bytes:
    """ChallengeResponse (8.5): the 24-byte response to an 8-byte challenge."""
    z = password_hash + b"\x00" * 5
    return b"".join(_des(z[i : i + 7], challenge) for i in (0, 7, 14))


def nt_response(
    authenticator_challenge: bytes, peer_challenge: bytes, user_name: bytes, password_hash: bytes
) -> bytes:
    """GenerateNTResponse (8.1), from the NT password hash."""
    return challenge_response(
        challenge_hash(peer_challenge, authenticator_challenge, user_name), password_hash
    )


def authenticator_response(
    password_hash: bytes,
    nt_resp: bytes,
    peer_challenge: bytes,
    authenticator_challenge: bytes,
    user_name: bytes,
) -> bytes:
    """GenerateAuthenticatorResponse (8.7): the 42-byte "S=<40 hex digits>" string."""
    digest = hashlib.sha1(md4(password_hash) + nt_resp + MAGIC1).digest()
    digest = hashlib.sha1(
        digest + challenge_hash(peer_challenge, authenticator_challenge, user_name) + MAGIC2
    ).digest()
    return b"S=" + digest.hex().upper().encode()


def check_nt_response(
    authenticator_challenge: bytes,
    peer_challenge: bytes,
    user_name: bytes,
    password_hash: bytes,
    received: bytes,
) -> bool:
    expected = nt_response(authenticator_challenge, peer_challenge, user_name, password_hash)
    return hmac.compare_digest(expected, received)


def master_key(password_hash: bytes, nt_resp: bytes) -> bytes:
    """GetMasterKey (RFC 3079 3.4)."""
    return hashlib.sha1(md4(password_hash) + nt_resp + MASTER_MAGIC).digest()[:16]


def asymmetric_start_key(master: bytes, *, send: bool, server: bool) -> bytes:
    """GetAsymmetricStartKey (RFC 3079 3.4) for 128-bit keys."""
    magic = (RECV_MAGIC if server else SEND_MAGIC) if send else (SEND_MAGIC if server else RECV_MAGIC)
    return hashlib.sha1(master + SHS_PAD1 + magic + SHS_PAD2).digest()[:16]


def authenticator_msk(password_hash: bytes, nt_resp: bytes) -> bytes:
    """The 64-byte MSK on the authenticator: MasterReceiveKey | MasterSendKey | 32 zero bytes
    ([MS-CHAP] 3.1.5.1); IKEv2 uses it as the AUTH payloads' shared secret (RFC 7296 2.16)."""
    master = master_key(password_hash, nt_resp)
    receive = asymmetric_start_key(master, send=False, server=True)
    send = asymmetric_start_key(master, send=True, server=True)
    return receive + send + b"\x00" * 32
