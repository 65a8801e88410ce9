"""Cryptographic transforms of RFC 7296 on top of `cryptography`: PRF and prf+ (2.13), integrity,
the SK payload ciphers (AES-CBC with HMAC, AES-GCM per RFC 5282, ChaCha20-Poly1305 per RFC 7634)
and the DH groups."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric import dh, ec, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.utils import CryptographyDeprecationWarning

from meshsec.agent.ike.constants import AEAD_SALT_LEN, DhId, EncrId, IntegId, PrfId
from meshsec.agent.ike.errors import CryptoError as CryptoError  # re-exported
from meshsec.agent.ike.kem import SEED_SIZE, MlKemExchange
from meshsec.agent.ike.random import Random

# ---------------------------------------------------------------- PRF


class Prf:
    def __init__(self, algorithm: hashes.HashAlgorithm) -> None:
        self._algorithm = algorithm
        self.size = algorithm.digest_size
        # Preferred key length of HMAC PRFs is the output length (RFC 7296 2.13 / RFC 4868).
        self.key_size = algorithm.digest_size

    def __call__(self, key: bytes, data: bytes) -> bytes:
        h = hmac.HMAC(key, self._algorithm)
        h.update(data)
        return h.finalize()

    def plus(self, key: bytes, seed: bytes, length: int) -> bytes:
        """prf+ (RFC 7296 2.13): T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n)."""
        if length > 255 * self.size:
            raise ValueError("prf+ output limited to 255 blocks")
        out = bytearray()
        t = b""
        n = 1
        while len(out) < length:
            t = self(key, t + seed + bytes((n,)))
            out += t
            n += 1
        return bytes(out[:length])


PRFS: dict[int, Callable[[], Prf]] = {
    PrfId.HMAC_SHA2_256: lambda: Prf(hashes.SHA256()),
    PrfId.HMAC_SHA2_384: lambda: Prf(hashes.SHA384()),
    PrfId.HMAC_SHA2_512: lambda: Prf(hashes.SHA512()),
}


# ---------------------------------------------------------------- integrity


@dataclass(frozen=True, slots=True)
class Integ:
    algorithm: hashes.HashAlgorithm
    key_size: int
    icv_size: int

    def sign(self, key: bytes, data: bytes) -> bytes:
        h = hmac.HMAC(key, self.algorithm)
        h.update(data)
        return h.finalize()[: self.icv_size]


INTEGS: dict[int, Integ] = {
    IntegId.HMAC_SHA2_256_128: Integ(hashes.SHA256(), 32, 16),
    IntegId.HMAC_SHA2_384_192: Integ(hashes.SHA384(), 48, 24),
    IntegId.HMAC_SHA2_512_256: Integ(hashes.SHA512(), 64, 32),
}


# ---------------------------------------------------------------- SK payload ciphers


class SkCipher(Protocol):
    key_size: int  # bytes of keying material taken from SK_e (includes the GCM salt)
    iv_size: int
    icv_size: int
    aead: bool

    def encrypt(self, key: bytes, iv: bytes, plaintext: bytes, aad: bytes) -> bytes: ...

    def decrypt(self, key: bytes, iv: bytes, ciphertext: bytes, aad: bytes) -> bytes: ...

    def block_size(self) -> int: ...


class AesCbc:
    aead = False
    iv_size = 16
    icv_size = 0

    def __init__(self, key_bits: int) -> None:
        self.key_size = key_bits // 8

    def block_size(self) -> int:
        return 16

    def encrypt(self, key: bytes, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        return enc.update(plaintext) + enc.finalize()

    def decrypt(self, key: bytes, iv: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        if not ciphertext or len(ciphertext) % 16:
            raise CryptoError("CBC ciphertext is not a multiple of the block size")
        dec = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
        return dec.update(ciphertext) + dec.finalize()


class _SaltedAead:
    """RFC 5282 / RFC 7634 section 4: key = cipher key | 4-byte salt, nonce = salt | explicit
    8-byte IV, 16-byte ICV; the AAD is everything before the IV (IKE header and SK header)."""

    aead = True
    iv_size = 8
    icv_size = 16
    key_size: int
    _name: str

    def _cipher(self, key: bytes) -> AESGCM | ChaCha20Poly1305:
        raise NotImplementedError

    def block_size(self) -> int:
        return 1  # RFC 5282 3 / RFC 7634 4: no alignment needed; we send only the Pad Length byte

    def encrypt(self, key: bytes, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return self._cipher(key[:-AEAD_SALT_LEN]).encrypt(key[-AEAD_SALT_LEN:] + iv, plaintext, aad)

    def decrypt(self, key: bytes, iv: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        try:
            return self._cipher(key[:-AEAD_SALT_LEN]).decrypt(key[-AEAD_SALT_LEN:] + iv, ciphertext, aad)
        except InvalidTag as exc:
            raise CryptoError(f"{self._name} tag mismatch") from exc


class AesGcm16(_SaltedAead):
    _name = "GCM"

    def __init__(self, key_bits: int) -> None:
        self.key_size = key_bits // 8 + AEAD_SALT_LEN

    def _cipher(self, key: bytes) -> AESGCM:
        return AESGCM(key)


class ChaCha20Poly1305Aead(_SaltedAead):
    """RFC 7634: a 256-bit key, so the transform carries no Key Length attribute."""

    _name = "ChaCha20-Poly1305"
    key_size = 32 + AEAD_SALT_LEN

    def _cipher(self, key: bytes) -> ChaCha20Poly1305:
        return ChaCha20Poly1305(key)


def make_cipher(encr_id: int, key_bits: int | None) -> SkCipher:
    if encr_id == EncrId.CHACHA20_POLY1305:
        if key_bits is not None:
            raise ValueError("ChaCha20-Poly1305 takes no Key Length attribute (RFC 7634 section 4)")
        return ChaCha20Poly1305Aead()
    if key_bits not in (128, 192, 256):
        raise ValueError(f"unsupported AES key length {key_bits}")
    if encr_id == EncrId.AES_CBC:
        return AesCbc(key_bits)
    if encr_id == EncrId.AES_GCM_16:
        return AesGcm16(key_bits)
    raise ValueError(f"unsupported encryption transform {encr_id}")


# ---------------------------------------------------------------- Diffie-Hellman

MODP_2048_P = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F"
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510"
    "15728E5A8AACAA68FFFFFFFFFFFFFFFF",
    16,
)
MODP_3072_P = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F"
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510"
    "15728E5A8AAAC42DAD33170D04507A33A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
    "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864D87602733EC86A64521F2B18177B200C"
    "BBE117577A615D6C770988C0BAD946E208E24FA074E5AB3143DB5BFCE0FD108E4B82D120A93AD2CAFFFFFFFFFFFFFFFF",
    16,
)


class KeyExchange(Protocol):
    """One ephemeral DH key pair: our public value in IKE wire form, and the shared secret."""

    group: int

    def public_bytes(self) -> bytes: ...

    def shared_secret(self, peer_public: bytes) -> bytes: ...


DhFactory = Callable[[int, Random], KeyExchange]


class X25519Exchange:
    group: int = DhId.CURVE25519

    def __init__(self, private: bytes) -> None:
        self._key = x25519.X25519PrivateKey.from_private_bytes(private)

    def public_bytes(self) -> bytes:
        return self._key.public_key().public_bytes_raw()

    def shared_secret(self, peer_public: bytes) -> bytes:
        if len(peer_public) != 32:
            raise CryptoError("X25519 public value must be 32 bytes")
        try:
            return self._key.exchange(x25519.X25519PublicKey.from_public_bytes(peer_public))
        except ValueError as exc:  # all-zero result from a low-order point (RFC 7748 6.1)
            raise CryptoError(str(exc)) from exc


class EcpExchange:
    """RFC 5903: public value is x | y without the SEC1 0x04 prefix; shared secret is x."""

    def __init__(self, group: int, scalar: int) -> None:
        curve = _CURVES[group]
        self.group = group
        self._curve = curve
        self._size = (curve.key_size + 7) // 8
        self._key = ec.derive_private_key(scalar, curve)

    def public_bytes(self) -> bytes:
        nums = self._key.public_key().public_numbers()
        return nums.x.to_bytes(self._size, "big") + nums.y.to_bytes(self._size, "big")

    def shared_secret(self, peer_public: bytes) -> bytes:
        if len(peer_public) != 2 * self._size:
            raise CryptoError("ECP public value has the wrong length")
        try:
            peer = ec.EllipticCurvePublicKey.from_encoded_point(self._curve, b"\x04" + peer_public)
            return self._key.exchange(ec.ECDH(), peer)
        except ValueError as exc:
            raise CryptoError("ECP public value is not on the curve") from exc


@contextlib.contextmanager
def _ffdh_deprecation_silenced() -> Iterator[None]:
    """cryptography deprecates finite-field DH; IKE peers still negotiate MODP groups 14/15."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        yield


class ModpExchange:
    def __init__(self, group: int, x: int) -> None:
        p = _MODP[group]
        self.group = group
        self._p = p
        self._size = (p.bit_length() + 7) // 8
        with _ffdh_deprecation_silenced():
            self._numbers = dh.DHParameterNumbers(p, 2)
            # g^x mod p computed by OpenSSL (about 3x faster than Python's pow) as the "shared
            # secret" with the generator itself; only x matters for exchange(), so the
            # placeholder public value in the private numbers is never used.
            self._key = dh.DHPrivateNumbers(x, dh.DHPublicNumbers(2, self._numbers)).private_key()
            generator = dh.DHPublicNumbers(2, self._numbers).public_key()
        self._y = int.from_bytes(self._key.exchange(generator), "big")

    def public_bytes(self) -> bytes:
        return self._y.to_bytes(self._size, "big")

    def shared_secret(self, peer_public: bytes) -> bytes:
        if len(peer_public) != self._size:
            raise CryptoError("MODP public value has the wrong length")
        y = int.from_bytes(peer_public, "big")
        if not 1 < y < self._p - 1:
            raise CryptoError("MODP public value out of range")
        try:
            with _ffdh_deprecation_silenced():
                peer = dh.DHPublicNumbers(y, self._numbers).public_key()
            return self._key.exchange(peer).rjust(self._size, b"\0")
        except ValueError as exc:
            raise CryptoError(str(exc)) from exc


_P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_P384_N = int(
    "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973", 16
)

SUPPORTED_DH = (DhId.CURVE25519, DhId.ECP_256, DhId.ECP_384, DhId.MODP_2048, DhId.MODP_3072)
_CURVES: dict[int, ec.EllipticCurve] = {DhId.ECP_256: ec.SECP256R1(), DhId.ECP_384: ec.SECP384R1()}
_ORDERS: dict[int, int] = {DhId.ECP_256: _P256_N, DhId.ECP_384: _P384_N}
_MODP: dict[int, int] = {DhId.MODP_2048: MODP_2048_P, DhId.MODP_3072: MODP_3072_P}


def default_dh_factory(group: int, rnd: Random) -> KeyExchange:
    """Builds key pairs from the injected random source, so seeded tests are reproducible."""
    if group == DhId.CURVE25519:
        return X25519Exchange(rnd.bytes(32))
    if group in _CURVES:
        order = _ORDERS[group]
        size = (_CURVES[group].key_size + 7) // 8
        # 64 extra bits make the modulo bias negligible (FIPS 186-4 B.4.1).
        return EcpExchange(group, int.from_bytes(rnd.bytes(size + 8), "big") % (order - 1) + 1)
    if group in _MODP:
        # A 512-bit exponent exceeds twice the ~128-bit strength of these groups (RFC 3526 8).
        return ModpExchange(group, int.from_bytes(rnd.bytes(64), "big") | 1)
    if group in (DhId.ML_KEM_512, DhId.ML_KEM_768, DhId.ML_KEM_1024):
        return MlKemExchange(group, rnd.bytes(SEED_SIZE))
    raise ValueError(f"unsupported DH group {group}")
