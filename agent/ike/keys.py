"""Key derivation of RFC 7296 2.14 (IKE SA) and 2.17 (CHILD_SA KEYMAT), with the additional key
exchanges of RFC 9370 2.2.2 (IKE_INTERMEDIATE) and 2.2.4 (CREATE_CHILD_SA + IKE_FOLLOWUP_KE)."""

from __future__ import annotations

from dataclasses import dataclass

from meshsec.agent.ike.constants import AEAD_ENCR, AEAD_SALT_LEN, EncrId
from meshsec.agent.ike.crypto import INTEGS, Integ, Prf, SkCipher
from meshsec.common.secrets import Secret


@dataclass(frozen=True, slots=True)
class IkeKeys:
    sk_d: Secret
    sk_ai: Secret
    sk_ar: Secret
    sk_ei: Secret
    sk_er: Secret
    sk_pi: Secret
    sk_pr: Secret


def skeyseed(prf: Prf, ni: bytes, nr: bytes, shared: bytes) -> bytes:
    """SKEYSEED = prf(Ni | Nr, g^ir); HMAC PRFs take the whole nonce pair as key."""
    return prf(ni + nr, shared)


def rekey_skeyseed(
    old_prf: Prf, old_sk_d: bytes, ni: bytes, nr: bytes, shared: bytes, additional: tuple[bytes, ...] = ()
) -> bytes:
    """SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr) for a rekeyed IKE SA (RFC 7296 2.18),
    with the old IKE SA's PRF; the new SA's keys then come from the new PRF's prf+. With
    additional key exchanges: prf(SK_d, SK(0) | Ni | Nr | SK(1) | ... | SK(n)) (RFC 9370 2.2.4)."""
    return old_prf(old_sk_d, shared + ni + nr + b"".join(additional))


def additional_skeyseed(prf: Prf, sk_d_previous: bytes, shared: bytes, ni: bytes, nr: bytes) -> bytes:
    """SKEYSEED(n) = prf(SK_d(n-1), SK(n) | Ni | Nr) after the n-th IKE_INTERMEDIATE key exchange
    (RFC 9370 2.2.2); Ni and Nr stay those of IKE_SA_INIT."""
    return prf(sk_d_previous, shared + ni + nr)


def derive_ike_keys(
    prf: Prf,
    cipher: SkCipher,
    integ: Integ | None,
    ni: bytes,
    nr: bytes,
    shared: bytes,
    spi_i: bytes,
    spi_r: bytes,
    seed: bytes | None = None,
) -> IkeKeys:
    """`seed` replaces the IKE_SA_INIT SKEYSEED (rekeying passes rekey_skeyseed)."""
    if seed is None:
        seed = skeyseed(prf, ni, nr, shared)
    a = integ.key_size if integ else 0
    e = cipher.key_size
    p = prf.key_size
    km = prf.plus(seed, ni + nr + spi_i + spi_r, 3 * p + 2 * a + 2 * e)
    cuts = [p, a, a, e, e, p, p]
    parts: list[Secret] = []
    off = 0
    for n in cuts:
        parts.append(Secret(km[off : off + n]))
        off += n
    return IkeKeys(*parts)


def update_ike_keys(
    prf: Prf,
    cipher: SkCipher,
    integ: Integ | None,
    previous: IkeKeys,
    shared: bytes,
    ni: bytes,
    nr: bytes,
    spi_i: bytes,
    spi_r: bytes,
) -> IkeKeys:
    """All seven SK_*(n) = prf+(SKEYSEED(n), Ni | Nr | SPIi | SPIr) after an IKE_INTERMEDIATE key
    exchange (RFC 9370 2.2.2): the next exchange is protected with them."""
    seed = additional_skeyseed(prf, previous.sk_d.reveal(), shared, ni, nr)
    return derive_ike_keys(prf, cipher, integ, ni, nr, shared, spi_i, spi_r, seed=seed)


@dataclass(frozen=True, slots=True)
class DirectionKeys:
    encr: Secret  # empty for AH; for AES-GCM it includes the 4-byte salt (RFC 4106 8.1)
    integ: Secret  # empty for AEAD ciphers


@dataclass(frozen=True, slots=True)
class ChildKeys:
    initiator_to_responder: DirectionKeys
    responder_to_initiator: DirectionKeys


def derive_child_keys(
    prf: Prf,
    sk_d: bytes,
    ni: bytes,
    nr: bytes,
    encr_size: int,
    integ_id: int | None,
    shared: bytes = b"",
    additional: tuple[bytes, ...] = (),
) -> ChildKeys:
    """KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr); keys for initiator->responder come first,
    each direction's encryption key before its integrity key (RFC 7296 2.17). Additional key
    exchanges follow the nonces: prf+(SK_d, SK(0) | Ni | Nr | SK(1) | ... | SK(n)) (RFC 9370 2.2.4)."""
    integ_size = INTEGS[integ_id].key_size if integ_id else 0
    per_dir = encr_size + integ_size
    km = prf.plus(sk_d, shared + ni + nr + b"".join(additional), 2 * per_dir)

    def cut(base: int) -> DirectionKeys:
        return DirectionKeys(
            Secret(km[base : base + encr_size]), Secret(km[base + encr_size : base + per_dir])
        )

    return ChildKeys(cut(0), cut(per_dir))


def child_encr_key_size(encr_id: int | None, key_bits: int | None) -> int:
    """Bytes of ESP encryption keying material; the AEADs add their 4-byte salt (RFC 4106 8.1,
    RFC 7634 section 2), and ChaCha20-Poly1305's key is always 256 bits."""
    if encr_id == EncrId.CHACHA20_POLY1305:
        key_bits = 256
    if encr_id is None or key_bits is None:
        return 0
    return key_bits // 8 + (AEAD_SALT_LEN if encr_id in AEAD_ENCR else 0)
