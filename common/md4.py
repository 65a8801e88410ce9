"""MD4 (RFC 1320), only for the NT password hash that EAP-MSCHAPv2 is built on (RFC 2759).

OpenSSL 3 moved MD4 to its legacy provider, which Python's hashlib and `cryptography` do not
load (``hashlib.new("md4")`` fails on Debian 12), so this is a small pure-Python one; see
docs/dependencies.md. It hashes passwords of a few dozen bytes: speed does not matter. Nothing
else may use it: MD4 is broken as a general-purpose hash.
"""

from __future__ import annotations

import struct

_MASK = 0xFFFFFFFF


def _rotl(x: int, n: int) -> int:
    return ((x << n) | (x >> (32 - n))) & _MASK


def md4(data: bytes) -> bytes:
    length_bits = (8 * len(data)) & 0xFFFFFFFFFFFFFFFF
    message = data + b"\x80" + b"\x00" * ((55 - len(data)) % 64) + struct.pack("<Q", length_bits)
    a, b, c, d = 0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476
    for offset in range(0, len(message), 64):
        x = struct.unpack("<16I", message[offset : offset + 64])
        aa, bb, cc, dd = a, b, c, d
        # Round 1: F(x,y,z) = xy | ~x z
        for i in range(16):
            k, s = i, (3, 7, 11, 19)[i % 4]
            f = (b & c) | (~b & d)
            a, b, c, d = d, _rotl((a + f + x[k]) & _MASK, s), b, c
        # Round 2: G(x,y,z) = xy | xz | yz, constant 0x5A827999
        for i in range(16):
            k, s = (i % 4) * 4 + i // 4, (3, 5, 9, 13)[i % 4]
            g = (b & c) | (b & d) | (c & d)
            a, b, c, d = d, _rotl((a + g + x[k] + 0x5A827999) & _MASK, s), b, c
        # Round 3: H(x,y,z) = x ^ y ^ z, constant 0x6ED9EBA1
        for i in range(16):
            k, s = (0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15)[i], (3, 9, 11, 15)[i % 4]
            h = b ^ c ^ d
            a, b, c, d = d, _rotl((a + h + x[k] + 0x6ED9EBA1) & _MASK, s), b, c
        a, b, c, d = (a + aa) & _MASK, (b + bb) & _MASK, (c + cc) & _MASK, (d + dd) & _MASK
    return struct.pack("<4I", a, b, c, d)


def nt_password_hash(password: str) -> bytes:
    """NtPasswordHash (RFC 2759 section 8.3): MD4 of the password in UTF-16 little endian.

    This is what the controller stores for an EAP-MSCHAPv2 user: the protocol needs nothing
    else, and nothing less (the hash is password-equivalent for MSCHAPv2; docs/security.md)."""
    return md4(password.encode("utf-16-le"))
