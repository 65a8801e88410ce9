"""Human-readable algorithm names for logs and status, spelled as strongSwan's
`swanctl --list-sas` spells them so the two can be compared side by side."""

from __future__ import annotations

from meshsec.agent.ike.constants import DhId, EncrId, EsnId, IntegId, PrfId, ProtocolId
from meshsec.agent.ike.events import Algorithms

ENCR_NAMES: dict[int, str] = {
    EncrId.AES_CBC: "AES_CBC",
    EncrId.AES_GCM_16: "AES_GCM_16",
    EncrId.CHACHA20_POLY1305: "CHACHA20_POLY1305",
}
INTEG_NAMES: dict[int, str] = {
    IntegId.HMAC_SHA2_256_128: "HMAC_SHA2_256_128",
    IntegId.HMAC_SHA2_384_192: "HMAC_SHA2_384_192",
    IntegId.HMAC_SHA2_512_256: "HMAC_SHA2_512_256",
}
PRF_NAMES: dict[int, str] = {
    PrfId.HMAC_SHA2_256: "PRF_HMAC_SHA2_256",
    PrfId.HMAC_SHA2_384: "PRF_HMAC_SHA2_384",
    PrfId.HMAC_SHA2_512: "PRF_HMAC_SHA2_512",
}
DH_NAMES: dict[int, str] = {
    DhId.MODP_2048: "MODP_2048",
    DhId.MODP_3072: "MODP_3072",
    DhId.ECP_256: "ECP_256",
    DhId.ECP_384: "ECP_384",
    DhId.CURVE25519: "CURVE_25519",
    DhId.ML_KEM_512: "ML_KEM_512",
    DhId.ML_KEM_768: "ML_KEM_768",
    DhId.ML_KEM_1024: "ML_KEM_1024",
}
PROTOCOL_NAMES: dict[int, str] = {ProtocolId.ESP: "ESP", ProtocolId.AH: "AH", ProtocolId.IKE: "IKE"}


def _name(table: dict[int, str], value: int | None, prefix: str) -> str | None:
    if value is None:
        return None
    return table.get(value, f"{prefix}_{value}")


def algorithm_dict(alg: Algorithms) -> dict[str, str | int | bool | None]:
    """Only the fields that were negotiated (None ones are left out)."""
    out: dict[str, str | int | bool | None] = {
        "encr_alg": _name(ENCR_NAMES, alg.encr, "ENCR"),
        "encr_keysize": alg.encr_key_bits,
        "integ_alg": _name(INTEG_NAMES, alg.integ, "INTEG"),
        "prf_alg": _name(PRF_NAMES, alg.prf, "PRF"),
        "dh_group": _name(DH_NAMES, alg.dh, "DH"),
        "esn": None if alg.esn is None else alg.esn == EsnId.ESN,
        # strongSwan's vici names them ake1..ake7.
        **{f"ake{n}": _name(DH_NAMES, m, "KE") for n, m in enumerate(alg.additional_ke, 1)},
    }
    return {k: v for k, v in out.items() if v is not None}


def algorithm_text(alg: Algorithms) -> str:
    """`AES_GCM_16-256/PRF_HMAC_SHA2_256/CURVE_25519` style, for log lines and tables."""
    d = algorithm_dict(alg)
    parts = []
    if "encr_alg" in d:
        parts.append(f"{d['encr_alg']}-{d['encr_keysize']}" if "encr_keysize" in d else str(d["encr_alg"]))
    parts += [str(d[k]) for k in ("integ_alg", "prf_alg", "dh_group") if k in d]
    parts += [f"KE{n}_{d[f'ake{n}']}" for n in range(1, 8) if f"ake{n}" in d]
    return "/".join(parts)


def protocol_name(protocol: int) -> str:
    return PROTOCOL_NAMES.get(protocol, str(protocol))
