"""Authentication of IKE_INTERMEDIATE messages (RFC 9242 3.3.2).

Each IKE_INTERMEDIATE message is folded into a running PRF chain per direction,
    IntAuth_iN = prf(SK_piN, IntAuth_i(N-1) | IntAuth_iN_A | IntAuth_iN_P)
(and the same with SK_pr for the responder's messages), where A is the IKE header and any
unencrypted payloads and the generic header of the Encrypted payload, with both length fields
set as if the message had been sent whole with no IV, padding or ICV, and P is the plaintext of
the inner payloads. A message is taken in that form whether it went out in fragments or not, so
both ends reach the same value. SK_p is the key that protected the exchange (before any
additional key exchange in it updated the keys). IKE_AUTH then signs
    ... | MACedIDFor[I/R] | IntAuth_iN | IntAuth_rN | IKE_AUTH_MID.
"""

from __future__ import annotations

import struct

from meshsec.agent.ike.constants import IKE_HEADER, IKE_HEADER_LEN
from meshsec.agent.ike.crypto import Prf

_GENERIC = struct.Struct("!BBH")


def intauth_step(
    prf: Prf,
    sk_p: bytes,
    previous: bytes,
    header: bytes,
    unencrypted: bytes,
    sk_first_payload: int,
    inner: bytes,
) -> bytes:
    """One IntAuth_[i/r]N from IntAuth_[i/r](N-1) (b"" before the first message).

    `header` is the message's IKE header as sent (its Length is replaced), `sk_first_payload` the
    Next Payload field of the Encrypted payload and `inner` its decrypted inner payloads."""
    if len(header) != IKE_HEADER_LEN:
        raise ValueError("IKE header must be 28 bytes")
    spi_i, spi_r, next_payload, version, exchange, flags, mid, _ = IKE_HEADER.unpack(header)
    sk_length = _GENERIC.size + len(inner)
    whole = IKE_HEADER_LEN + len(unencrypted) + sk_length
    adjusted = IKE_HEADER.pack(spi_i, spi_r, next_payload, version, exchange, flags, mid, whole)
    sk_header = _GENERIC.pack(sk_first_payload, 0, sk_length)
    return prf(sk_p, previous + adjusted + unencrypted + sk_header + inner)


def intauth_octets(intauth_i: bytes, intauth_r: bytes, ike_auth_mid: int) -> bytes:
    """The IntAuth block appended to both sides' signed octets; empty without IKE_INTERMEDIATE."""
    if not intauth_i and not intauth_r:
        return b""
    return intauth_i + intauth_r + struct.pack("!I", ike_auth_mid)
