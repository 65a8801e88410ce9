"""Signature AUTH payloads (RFC 7296 2.15, RFC 4754, RFC 7427, RFC 8420).

Method 14 (Digital Signature) carries the ASN.1 AlgorithmIdentifier of the signature, so any
hash both ends announced in SIGNATURE_HASH_ALGORITHMS can be used: ECDSA with the hash that
matches the curve (DER signature), RSA PKCS#1 v1.5 or RSA-PSS with SHA-256, Ed25519 (pure,
"Identity" hash). The classic methods exist for peers without RFC 7427: RSA (1, PKCS#1 v1.5
with SHA-1) and ECDSA 9/10/11 (P-256/SHA-256, P-384/SHA-384, P-521/SHA-512, r|s encoding)."""

from __future__ import annotations

import struct
from enum import IntEnum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from meshsec.agent.ike.certs import Credentials, VerifyKey


class HashId(IntEnum):  # IANA "IKEv2 Hash Algorithms" (RFC 7427, RFC 8420)
    SHA1 = 1
    SHA2_256 = 2
    SHA2_384 = 3
    SHA2_512 = 4
    IDENTITY = 5


class SigMethod(IntEnum):
    RSA = 1
    ECDSA_P256 = 9
    ECDSA_P384 = 10
    ECDSA_P521 = 11
    DIGITAL_SIGNATURE = 14


OUR_HASHES = (HashId.SHA2_256, HashId.SHA2_384, HashId.SHA2_512, HashId.IDENTITY)

_HASHES: dict[HashId, type[hashes.HashAlgorithm]] = {
    HashId.SHA1: hashes.SHA1,
    HashId.SHA2_256: hashes.SHA256,
    HashId.SHA2_384: hashes.SHA384,
    HashId.SHA2_512: hashes.SHA512,
}
_CURVE = {  # curve: (classic method, hash)
    "secp256r1": (SigMethod.ECDSA_P256, HashId.SHA2_256),
    "secp384r1": (SigMethod.ECDSA_P384, HashId.SHA2_384),
    "secp521r1": (SigMethod.ECDSA_P521, HashId.SHA2_512),
}
_CLASSIC_EC = {m: (curve, h) for curve, (m, h) in _CURVE.items()}

# DER AlgorithmIdentifiers (RFC 7427 appendix A, RFC 8420).
_ECDSA_OID = bytes.fromhex("2a8648ce3d0403")  # ecdsa-with-SHA2 arc; last byte 02/03/04 = 256/384/512
_RSA_PKCS1 = {
    HashId.SHA2_256: bytes.fromhex("300d06092a864886f70d01010b0500"),
    HashId.SHA2_384: bytes.fromhex("300d06092a864886f70d01010c0500"),
    HashId.SHA2_512: bytes.fromhex("300d06092a864886f70d01010d0500"),
}
_ED25519 = bytes.fromhex("300506032b6570")
_PSS_OID = bytes.fromhex("2a864886f70d01010a")
_HASH_OIDS = {
    bytes.fromhex("608648016503040201"): HashId.SHA2_256,
    bytes.fromhex("608648016503040202"): HashId.SHA2_384,
    bytes.fromhex("608648016503040203"): HashId.SHA2_512,
}


class SignatureError(ValueError):
    pass


def parse_hash_notify(data: bytes) -> frozenset[int]:
    return frozenset(struct.unpack(f"!{len(data) // 2}H", data[: len(data) // 2 * 2]))


def hash_notify_data() -> bytes:
    return b"".join(struct.pack("!H", h) for h in OUR_HASHES)


def _ecdsa_alg_id(h: HashId) -> bytes:
    oid = _ECDSA_OID + bytes([{HashId.SHA2_256: 2, HashId.SHA2_384: 3, HashId.SHA2_512: 4}[h]])
    return bytes([0x30, len(oid) + 2, 0x06, len(oid)]) + oid


def _pss_alg_id(h: HashId) -> bytes:
    """RSASSA-PSS-params with hash h, MGF1 with h, salt = digest length, trailer 1."""
    hash_oid = next(o for o, v in _HASH_OIDS.items() if v == h)
    hash_alg = _tlv(0x30, _tlv(0x06, hash_oid) + b"\x05\x00")
    mgf = _tlv(0x30, _tlv(0x06, bytes.fromhex("2a864886f70d010108")) + hash_alg)
    salt = _HASHES[h]().digest_size
    params = _tlv(0x30, _tlv(0xA0, hash_alg) + _tlv(0xA1, mgf) + _tlv(0xA2, _tlv(0x02, bytes([salt]))))
    return _tlv(0x30, _tlv(0x06, _PSS_OID) + params)


def _tlv(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        return bytes([tag, n]) + value
    size = (n.bit_length() + 7) // 8
    return bytes([tag, 0x80 | size]) + n.to_bytes(size, "big") + value


def _read(data: bytes, off: int) -> tuple[int, bytes, int]:
    """One DER TLV at `off`: (tag, value, offset after it)."""
    if off + 2 > len(data):
        raise SignatureError("truncated ASN.1")
    tag, n = data[off], data[off + 1]
    off += 2
    if n & 0x80:
        size = n & 0x7F
        if size == 0 or size > 3 or off + size > len(data):
            raise SignatureError("bad ASN.1 length")
        n = int.from_bytes(data[off : off + size], "big")
        off += size
    if off + n > len(data):
        raise SignatureError("truncated ASN.1")
    return tag, data[off : off + n], off + n


def sign(creds: Credentials, octets: bytes, peer_hashes: frozenset[int] | None) -> tuple[int, bytes]:
    """(AUTH method, AUTH data) for the signed octets of RFC 7296 2.15."""
    key = creds.key
    if key is None:
        raise SignatureError("no certificate of our own to sign with (trust anchors only)")
    use_7427 = creds.method == "signature" and peer_hashes is not None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        if peer_hashes is None or HashId.IDENTITY not in peer_hashes:
            raise SignatureError("Ed25519 needs RFC 7427/8420 (peer did not announce the Identity hash)")
        return SigMethod.DIGITAL_SIGNATURE, bytes([len(_ED25519)]) + _ED25519 + key.sign(octets)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        method, h = _CURVE[key.curve.name]
        der = key.sign(octets, ec.ECDSA(_HASHES[h]()))
        if use_7427 and peer_hashes is not None and h in peer_hashes:
            alg = _ecdsa_alg_id(h)
            return SigMethod.DIGITAL_SIGNATURE, bytes([len(alg)]) + alg + der
        r, s = decode_dss_signature(der)
        size = (key.curve.key_size + 7) // 8
        return method, r.to_bytes(size, "big") + s.to_bytes(size, "big")
    assert isinstance(key, rsa.RSAPrivateKey)
    if use_7427 and peer_hashes is not None and HashId.SHA2_256 in peer_hashes:
        h = HashId.SHA2_256
        if creds.rsa_pss:
            pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=_HASHES[h]().digest_size)
            alg, sig = _pss_alg_id(h), key.sign(octets, pss, hashes.SHA256())
        else:
            alg, sig = _RSA_PKCS1[h], key.sign(octets, padding.PKCS1v15(), hashes.SHA256())
        return SigMethod.DIGITAL_SIGNATURE, bytes([len(alg)]) + alg + sig
    return SigMethod.RSA, key.sign(octets, padding.PKCS1v15(), hashes.SHA1())


def verify(key: VerifyKey, method: int, data: bytes, octets: bytes) -> str | None:
    """None if the AUTH data is a valid signature of `octets` by `key`, else why not."""
    try:
        if method == SigMethod.DIGITAL_SIGNATURE:
            _verify_7427(key, data, octets)
        elif method == SigMethod.RSA:
            if not isinstance(key, rsa.RSAPublicKey):
                return "AUTH method RSA (1) but the certificate key is not RSA"
            key.verify(data, octets, padding.PKCS1v15(), hashes.SHA1())
        elif method in _CLASSIC_EC:
            curve, h = _CLASSIC_EC[SigMethod(method)]
            if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != curve:
                return f"AUTH method {method} needs an ECDSA {curve} key in the certificate"
            size = (key.curve.key_size + 7) // 8
            if len(data) != 2 * size:
                return f"ECDSA signature has {len(data)} bytes, not {2 * size}"
            r, s = int.from_bytes(data[:size], "big"), int.from_bytes(data[size:], "big")
            key.verify(encode_dss_signature(r, s), octets, ec.ECDSA(_HASHES[h]()))
        else:
            return f"AUTH method {method} is not a signature method we support"
    except InvalidSignature:
        return "signature did not verify with the certificate's key"
    except SignatureError as exc:
        return str(exc)
    return None


def _verify_7427(key: VerifyKey, data: bytes, octets: bytes) -> None:
    if not data or len(data) < 1 + data[0]:
        raise SignatureError("malformed RFC 7427 AUTH data")
    alg, sig = data[1 : 1 + data[0]], data[1 + data[0] :]
    tag, body, _ = _read(alg, 0)
    if tag != 0x30:
        raise SignatureError("AlgorithmIdentifier is not a SEQUENCE")
    tag, oid, rest = _read(body, 0)
    if tag != 0x06:
        raise SignatureError("AlgorithmIdentifier lacks an OID")
    if alg == _ED25519:
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise SignatureError("Ed25519 signature but the certificate key is not Ed25519")
        key.verify(sig, octets)
        return
    if oid[:-1] == _ECDSA_OID and oid[-1] in (2, 3, 4):
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise SignatureError("ECDSA signature but the certificate key is not ECDSA")
        h = {2: HashId.SHA2_256, 3: HashId.SHA2_384, 4: HashId.SHA2_512}[oid[-1]]
        key.verify(sig, octets, ec.ECDSA(_HASHES[h]()))
        return
    for h, known in _RSA_PKCS1.items():
        if alg == known:
            if not isinstance(key, rsa.RSAPublicKey):
                raise SignatureError("RSA signature but the certificate key is not RSA")
            key.verify(sig, octets, padding.PKCS1v15(), _HASHES[h]())
            return
    if oid == _PSS_OID:
        if not isinstance(key, rsa.RSAPublicKey):
            raise SignatureError("RSA-PSS signature but the certificate key is not RSA")
        h, salt = _pss_params(body[rest:])
        pss = padding.PSS(mgf=padding.MGF1(_HASHES[h]()), salt_length=salt)
        key.verify(sig, octets, pss, _HASHES[h]())
        return
    raise SignatureError(f"signature algorithm {alg.hex()} is not supported")


def _pss_params(params: bytes) -> tuple[HashId, int]:
    h, salt = HashId.SHA1, 20  # RFC 4055 defaults
    tag, seq, _ = _read(params, 0)
    off = 0
    while off < len(seq):
        tag, value, off = _read(seq, off)
        if tag == 0xA0:
            _, hash_alg, _ = _read(value, 0)
            _, hash_oid, _ = _read(hash_alg, 0)
            if hash_oid not in _HASH_OIDS:
                raise SignatureError("RSA-PSS with an unsupported hash")
            h = _HASH_OIDS[hash_oid]
        elif tag == 0xA2:
            _, num, _ = _read(value, 0)
            salt = int.from_bytes(num, "big")
    if h not in _HASHES or h is HashId.SHA1:
        raise SignatureError("RSA-PSS with SHA-1 is not accepted")
    return h, salt


def method_name(method: int) -> str:
    try:
        return SigMethod(method).name
    except ValueError:
        return str(method)
