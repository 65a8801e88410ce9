"""Published known-answer tests for the engine's cryptography.

Sources (values copied from the publications, not from our own output):
- NIST CAVP SP 800-135 IKEv2 KDF vectors (ikev2.zip, "[SHA-1]" section, first COUNT),
  https://csrc.nist.gov/CSRC/media/Projects/Cryptographic-Algorithm-Validation-Program/documents/components/800-135testvectors/ikev2.zip
  Our PRF class is hash-generic, so the SHA-1 vector exercises exactly the code used with SHA-2.
- RFC 4231 section 4.2/4.3 (HMAC-SHA-256/384/512 test cases 1 and 2), which RFC 4868 2.7 reuses for
  PRF-HMAC-SHA2 and the truncated AUTH-HMAC-SHA2 integrity transforms.
- RFC 7748 section 5.2 (X25519 function) and section 6.1 (Diffie-Hellman).
- RFC 5903 section 8.1 (ECP-256) and 8.2 (ECP-384).
- RFC 3526 section 3/4: MODP 2048/3072 primes are defined by a formula over pi; we recompute them.
- McGrew & Viega, "The Galois/Counter Mode of Operation (GCM)", test cases 3 and 4 (128-bit key).
- RFC 3602 section 4, AES-CBC cases 1 and 2.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes

from meshsec.agent.ike.constants import DhId, IntegId
from meshsec.agent.ike.crypto import (
    INTEGS,
    MODP_2048_P,
    MODP_3072_P,
    AesCbc,
    AesGcm16,
    CryptoError,
    EcpExchange,
    ModpExchange,
    Prf,
    X25519Exchange,
)
from meshsec.agent.ike.keys import derive_child_keys, skeyseed

h = bytes.fromhex

# ---------------------------------------------------------------- NIST CAVP IKEv2 KDF (SHA-1, COUNT 0)
NI = h("3651fef5c9c35e93")
NR = h("c09a8b90a3f04d59")
GIR = h(
    "d084a30166a50fb7325c3960874a839449ef9741c2f4f947d0201dd8c1269273d79509f37e3ca3eb4fa2fe2a28254e28"
    "9cd3f34dad4eb4df1a07685a4b8a94fa61e2491f7598b3ce65547ff133b3f63d1ac4175eaa695033f3cedb026a6873a3"
    "6455172a8540b8a5d23a0143bed0390ee49b168269d75fffee9fb62be965993c"
)
GIR_NEW = h(
    "52f00ab174c25d5b7139ae5ff4e8e9eddee5992d2e36adf8a559ffd90dab1442e4fbe429d320c0f33552a17d1557fa41"
    "ea70e8fb916c4fa27ed52b5f8ebd8461afa78f1159159a64055ac5f6319e29c28eae58cbc6847770f32c3fed1d047504"
    "84f854790f95e9ec01bc5bc461f24966462e359511329305038e94deb6dd42c2"
)
SPII = h("8e5c3ae507221684")
SPIR = h("b1f201bb155c3acd")
SKEYSEED = h("cd2e8050137832245f1dbacc6e4f0a92f94d45d6")
DKM = h(
    "6f1b12cad3cbe097b35430356d869d54cddb0198ec859174d53ceb92dddedbe2436db69f60977c58fa63bbb667f8d369"
    "20b109baae8f6c61a9ac49feda01843225d080ec5539d5881a25521ffb2a0a91874a9c0a27fcc2d717eb8963a9e3a89c"
    "7ab264757284c28cf8c3ca40576f4220b052b1fb8e9ad60ba3c80557323331a8cbb89f20"
)
DKM_CHILD = h(
    "4727dc0ef94eb326ce131cf282fb652faa638ad0ddae3786a11bcc0309876009f8c485de011ad962c5b1ca8a41ff8145"
    "445749079c5686e26ffebbc342f06981f3da745e11ca0976424d1f8caec623d59dc7186deb20a27b411d1dcb70a36544"
    "0bf7de905088b0692e8addc094e18d1939bdb67e89798ca6b239e2ccb81c2409dac0106c"
)
DKM_CHILD_DH = h(
    "b109c21ad4c0797768c1cec9e63554681e48f224bca7f23c20c4ea7041983451e9aa1d5408656c8a975ff1b9d9a12c75"
    "ffeb64bdecb30174664cccb4e14f1c377b7f6d1525af77c7092aac3e47f917ebae8297fb5539d2008ce830823a09cc19"
    "7361d4a289c72745f6ce9fefe812be5bf55b3200fbb82e41a4a40877d3fe106db909707b"
)
SKEYSEED_REKEY = h("3b03bce748c96d5e8306918d2ff89b68f0648da3")


def test_cavp_skeyseed() -> None:
    assert skeyseed(Prf(hashes.SHA1()), NI, NR, GIR) == SKEYSEED


def test_cavp_ike_sa_dkm_is_prf_plus() -> None:
    prf = Prf(hashes.SHA1())
    assert prf.plus(SKEYSEED, NI + NR + SPII + SPIR, len(DKM)) == DKM


def test_cavp_child_sa_dkm() -> None:
    prf = Prf(hashes.SHA1())
    sk_d = DKM[: prf.size]
    assert prf.plus(sk_d, NI + NR, len(DKM_CHILD)) == DKM_CHILD
    assert prf.plus(sk_d, GIR_NEW + NI + NR, len(DKM_CHILD_DH)) == DKM_CHILD_DH


def test_cavp_child_keymat_split_uses_the_same_stream() -> None:
    # KEYMAT order (RFC 7296 2.17): i->r encryption, i->r integrity, r->i encryption, r->i integrity.
    prf = Prf(hashes.SHA1())
    keys = derive_child_keys(prf, DKM[:20], NI, NR, 16, IntegId.HMAC_SHA2_256_128)
    i2r, r2i = keys.initiator_to_responder, keys.responder_to_initiator
    stream = i2r.encr.reveal() + i2r.integ.reveal() + r2i.encr.reveal() + r2i.integ.reveal()
    assert stream == DKM_CHILD[: 2 * (16 + 32)]


def test_cavp_rekey_skeyseed() -> None:
    prf = Prf(hashes.SHA1())
    assert prf(DKM[:20], GIR_NEW + NI + NR) == SKEYSEED_REKEY


def test_prf_plus_limit() -> None:
    with pytest.raises(ValueError):
        Prf(hashes.SHA256()).plus(b"k", b"s", 255 * 32 + 1)


# ---------------------------------------------------------------- RFC 4231 / RFC 4868
KEY1 = b"\x0b" * 20
DATA1 = b"Hi There"


@pytest.mark.parametrize(
    ("algorithm", "key", "data", "mac"),
    [
        (hashes.SHA256(), KEY1, DATA1, "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
        (
            hashes.SHA384(),
            KEY1,
            DATA1,
            "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59cfaea9ea9076ede7f4af152e8b2fa9cb6",
        ),
        (
            hashes.SHA512(),
            KEY1,
            DATA1,
            "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cdedaa833b7d6b8a702038b274eaea3f4e4"
            "be9d914eeb61f1702e696c203a126854",
        ),
        (
            hashes.SHA256(),
            b"Jefe",
            b"what do ya want for nothing?",
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        ),
    ],
)
def test_hmac_prf_vectors(algorithm: hashes.HashAlgorithm, key: bytes, data: bytes, mac: str) -> None:
    assert Prf(algorithm)(key, data) == h(mac)


def test_integrity_truncation_rfc4868() -> None:
    # AUTH_HMAC_SHA2_256_128 keeps the first 128 bits of HMAC-SHA-256 (RFC 4868 2.3).
    integ = INTEGS[IntegId.HMAC_SHA2_256_128]
    assert integ.sign(KEY1, DATA1) == h("b0344c61d8db38535ca8afceaf0bf12b")
    assert INTEGS[IntegId.HMAC_SHA2_512_256].icv_size == 32
    assert INTEGS[IntegId.HMAC_SHA2_384_192].icv_size == 24


# ---------------------------------------------------------------- RFC 7748
ALICE_PRIV = h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUB = h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_PRIV = h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUB = h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
X25519_SHARED = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")


def test_x25519_rfc7748_6_1() -> None:
    alice, bob = X25519Exchange(ALICE_PRIV), X25519Exchange(BOB_PRIV)
    assert alice.public_bytes() == ALICE_PUB
    assert bob.public_bytes() == BOB_PUB
    assert alice.shared_secret(BOB_PUB) == X25519_SHARED
    assert bob.shared_secret(ALICE_PUB) == X25519_SHARED


def test_x25519_rfc7748_5_2_function() -> None:
    # X25519(scalar, u) of section 5.2, first vector.
    scalar = h("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4")
    u = h("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c")
    out = h("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552")
    assert X25519Exchange(scalar).shared_secret(u) == out


def test_x25519_rejects_low_order_point() -> None:
    with pytest.raises(CryptoError):
        X25519Exchange(ALICE_PRIV).shared_secret(bytes(32))
    with pytest.raises(CryptoError):
        X25519Exchange(ALICE_PRIV).shared_secret(bytes(31))


# ---------------------------------------------------------------- RFC 5903
ECP = {
    DhId.ECP_256: dict(
        i="C88F01F510D9AC3F70A292DAA2316DE544E9AAB8AFE84049C62A9C57862D1433",
        gix="DAD0B65394221CF9B051E1FECA5787D098DFE637FC90B9EF945D0C3772581180",
        giy="5271A0461CDB8252D61F1C456FA3E59AB1F45B33ACCF5F58389E0577B8990BB3",
        r="C6EF9C5D78AE012A011164ACB397CE2088685D8F06BF9BE0B283AB46476BEE53",
        grx="D12DFB5289C8D4F81208B70270398C342296970A0BCCB74C736FC7554494BF63",
        gry="56FBF3CA366CC23E8157854C13C58D6AAC23F046ADA30F8353E74F33039872AB",
        girx="D6840F6B42F6EDAFD13116E0E12565202FEF8E9ECE7DCE03812464D04B9442DE",
    ),
    DhId.ECP_384: dict(
        i="099F3C7034D4A2C699884D73A375A67F7624EF7C6B3C0F160647B67414DCE655E35B538041E649EE3FAEF896783AB194",
        gix="667842D7D180AC2CDE6F74F37551F55755C7645C20EF73E31634FE72B4C55EE6DE3AC808ACB4BDB4C88732AEE95F41AA",
        giy="9482ED1FC0EEB9CAFC4984625CCFC23F65032149E0E144ADA024181535A0F38EEB9FCFF3C2C947DAE69B4C634573A81C",
        r="41CB0779B4BDB85D47846725FBEC3C9430FAB46CC8DC5060855CC9BDA0AA2942E0308312916B8ED2960E4BD55A7448FC",
        grx="E558DBEF53EECDE3D3FCCFC1AEA08A89A987475D12FD950D83CFA41732BC509D0D1AC43A0336DEF96FDA41D0774A3571",
        gry="DCFBEC7AACF3196472169E838430367F66EEBE3C6E70C416DD5F0C68759DD1FFF83FA40142209DFF5EAAD96DB9E6386C",
        girx="11187331C279962D93D604243FD592CB9D0A926F422E47187521287E7156C5C4D603135569B9E9D09CF5D4A270F59746",
    ),
}


@pytest.mark.parametrize("group", [DhId.ECP_256, DhId.ECP_384])
def test_ecp_rfc5903(group: DhId) -> None:
    v = ECP[group]
    i = EcpExchange(group, int(v["i"], 16))
    r = EcpExchange(group, int(v["r"], 16))
    # IKE carries x | y without the SEC1 prefix (RFC 5903 7).
    assert i.public_bytes() == h(v["gix"] + v["giy"])
    assert r.public_bytes() == h(v["grx"] + v["gry"])
    assert i.shared_secret(r.public_bytes()) == h(v["girx"])
    assert r.shared_secret(i.public_bytes()) == h(v["girx"])


def test_ecp_rejects_point_off_curve() -> None:
    v = ECP[DhId.ECP_256]
    bad = bytearray(h(v["grx"] + v["gry"]))
    bad[-1] ^= 1
    with pytest.raises(CryptoError):
        EcpExchange(DhId.ECP_256, int(v["i"], 16)).shared_secret(bytes(bad))


# ---------------------------------------------------------------- RFC 3526


def _pi_floor(shift: int) -> int:
    """floor(pi * 2**shift) from Machin's formula in exact integer arithmetic."""
    prec = shift + 64
    one = 1 << prec

    def atan_inv(x: int) -> int:
        total = term = one // x
        n, sign = 1, -1
        while term:
            term //= x * x
            total += sign * (term // (2 * n + 1))
            sign, n = -sign, n + 1
        return total

    return (16 * atan_inv(5) - 4 * atan_inv(239)) >> 64


@pytest.mark.parametrize(
    ("bits", "const", "prime"), [(2048, 124476, MODP_2048_P), (3072, 1690314, MODP_3072_P)]
)
def test_modp_primes_follow_rfc3526_formula(bits: int, const: int, prime: int) -> None:
    # p = 2^b - 2^(b-64) - 1 + 2^64 * ( [2^(b-130) pi] + const )
    assert prime == 2**bits - 2 ** (bits - 64) - 1 + 2**64 * (_pi_floor(bits - 130) + const)


@pytest.mark.parametrize("group", [DhId.MODP_2048, DhId.MODP_3072])
def test_modp_agreement_and_range_checks(group: DhId) -> None:
    a, b = ModpExchange(group, 0x1234567 << 300 | 1), ModpExchange(group, 0x7654321 << 290 | 1)
    assert len(a.public_bytes()) == (2048 if group == DhId.MODP_2048 else 3072) // 8
    assert a.shared_secret(b.public_bytes()) == b.shared_secret(a.public_bytes())
    with pytest.raises(CryptoError):
        a.shared_secret((1).to_bytes(len(a.public_bytes()), "big"))


# ---------------------------------------------------------------- McGrew-Viega GCM
GCM_K = h("feffe9928665731c6d6a8f9467308308")
GCM_IV = h("cafebabefacedbaddecaf888")
GCM_P = h(
    "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525"
    "b16aedf5aa0de657ba637b391aafd255"
)
GCM_C = h(
    "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e21d514b25466931c7d8f6a5aac84aa05"
    "1ba30b396a0aac973d58e091473f5985"
)


@pytest.mark.parametrize(
    ("aad", "n", "tag"),
    [
        (b"", 64, "4d5c2af327cd64a62cf35abd2ba6fab4"),  # test case 3
        (h("feedfacedeadbeeffeedfacedeadbeefabaddad2"), 60, "5bc94fbc3221a5db94fae95ae7121a47"),  # case 4
    ],
)
def test_gcm_mcgrew_viega(aad: bytes, n: int, tag: str) -> None:
    # RFC 5282: SK_e = key | 4-byte salt; nonce = salt | 8-byte explicit IV.
    cipher = AesGcm16(128)
    key = GCM_K + GCM_IV[:4]
    assert cipher.key_size == len(key)
    out = cipher.encrypt(key, GCM_IV[4:], GCM_P[:n], aad)
    assert out == GCM_C[:n] + h(tag)
    assert cipher.decrypt(key, GCM_IV[4:], out, aad) == GCM_P[:n]
    tampered = bytes([out[0] ^ 1]) + out[1:]
    with pytest.raises(CryptoError):
        cipher.decrypt(key, GCM_IV[4:], tampered, aad)


# ---------------------------------------------------------------- RFC 3602


@pytest.mark.parametrize(
    ("key", "iv", "pt", "ct"),
    [
        (
            "06a9214036b8a15b512e03d534120006",
            "3dafba429d9eb430b422da802c9fac41",
            b"Single block msg".hex(),
            "e353779c1079aeb82708942dbe77181a",
        ),
        (
            "c286696d887c9aa0611bbb3e2025a45a",
            "562e17996d093d28ddb3ba695a2e6f58",
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
            "d296cd94c2cccf8a3a863028b5e1dc0a7586602d253cfff91b8266bea6d61ab1",
        ),
    ],
)
def test_aes_cbc_rfc3602(key: str, iv: str, pt: str, ct: str) -> None:
    cipher = AesCbc(128)
    assert cipher.encrypt(h(key), h(iv), h(pt), b"") == h(ct)
    assert cipher.decrypt(h(key), h(iv), h(ct), b"") == h(pt)
    with pytest.raises(CryptoError):
        cipher.decrypt(h(key), h(iv), h(ct)[:-1], b"")
