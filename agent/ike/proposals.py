"""strongSwan-style proposal strings ("aes256gcm16-prfsha256-x25519") and proposal selection
(RFC 7296 2.7 and 3.3)."""

from __future__ import annotations

from dataclasses import dataclass, field

from meshsec.agent.ike.constants import (
    ADDKE_TYPES,
    AEAD_ENCR,
    DhId,
    EncrId,
    EsnId,
    IntegId,
    PrfId,
    ProtocolId,
    TransformType,
)
from meshsec.agent.ike.payloads import Proposal, Transform


class ProposalError(ValueError):
    """An unparsable or incomplete proposal string; the message names the offending token."""


_ENCR: dict[str, Transform] = {}
for _bits in (128, 192, 256):
    _ENCR[f"aes{_bits}"] = Transform(TransformType.ENCR, EncrId.AES_CBC, _bits)
    for _alias in ("gcm16", "gcm128"):
        _ENCR[f"aes{_bits}{_alias}"] = Transform(TransformType.ENCR, EncrId.AES_GCM_16, _bits)
# RFC 7634: one fixed key size, so no Key Length attribute.
_ENCR["chacha20poly1305"] = Transform(TransformType.ENCR, EncrId.CHACHA20_POLY1305)
_INTEG = {
    "sha256": IntegId.HMAC_SHA2_256_128,
    "sha2_256": IntegId.HMAC_SHA2_256_128,
    "sha384": IntegId.HMAC_SHA2_384_192,
    "sha2_384": IntegId.HMAC_SHA2_384_192,
    "sha512": IntegId.HMAC_SHA2_512_256,
    "sha2_512": IntegId.HMAC_SHA2_512_256,
}
_PRF = {
    "prfsha256": PrfId.HMAC_SHA2_256,
    "prfsha384": PrfId.HMAC_SHA2_384,
    "prfsha512": PrfId.HMAC_SHA2_512,
}
# strongSwan derives the PRF from the integrity algorithm when no prf token is given.
_PRF_FROM_INTEG: dict[int, int] = {
    IntegId.HMAC_SHA2_256_128: PrfId.HMAC_SHA2_256,
    IntegId.HMAC_SHA2_384_192: PrfId.HMAC_SHA2_384,
    IntegId.HMAC_SHA2_512_256: PrfId.HMAC_SHA2_512,
}
_DH = {
    "x25519": DhId.CURVE25519,
    "curve25519": DhId.CURVE25519,
    "ecp256": DhId.ECP_256,
    "ecp384": DhId.ECP_384,
    "modp2048": DhId.MODP_2048,
    "modp3072": DhId.MODP_3072,
    "mlkem512": DhId.ML_KEM_512,
    "mlkem768": DhId.ML_KEM_768,
    "mlkem1024": DhId.ML_KEM_1024,
}
# RFC 9370 additional key exchanges, strongSwan's "ke1_mlkem768" ... "ke7_..."; "ke1_none"
# makes that additional exchange optional.
_ADDKE_METHODS = {**_DH, "none": DhId.NONE}
_ESN = {"esn": EsnId.ESN, "noesn": EsnId.NO_ESN}


@dataclass(frozen=True, slots=True)
class ProposalSpec:
    """One proposal we offer or accept: per transform type, alternatives in preference order."""

    protocol: ProtocolId
    transforms: tuple[Transform, ...]
    text: str = field(default="", compare=False)

    def to_proposal(self, number: int, spi: bytes, *, without_dh: bool = False) -> Proposal:
        ts = tuple(t for t in self.transforms if not (without_dh and _is_key_exchange(t.type)))
        return Proposal(number, self.protocol, spi, ts)

    def dh_groups(self) -> list[int]:
        return [t.id for t in self.transforms if t.type == TransformType.DH]

    def additional_key_exchanges(self) -> dict[int, list[int]]:
        """Per ADDKE transform type, the methods in preference order (0 = NONE, optional)."""
        out: dict[int, list[int]] = {}
        for t in self.transforms:
            if t.type in ADDKE_TYPES:
                out.setdefault(t.type, []).append(t.id)
        return out


def _is_key_exchange(ttype: int) -> bool:
    return ttype == TransformType.DH or ttype in ADDKE_TYPES


def parse_proposals(text: str, protocol: ProtocolId) -> tuple[ProposalSpec, ...]:
    """Parses a comma-separated list of dash-separated algorithm tokens."""
    if not text.strip():
        raise ProposalError("empty proposal string")
    return tuple(_parse_one(part.strip(), protocol) for part in text.split(","))


def _parse_one(text: str, protocol: ProtocolId) -> ProposalSpec:
    encr: list[Transform] = []
    integ: list[int] = []
    prf: list[int] = []
    dh: list[int] = []
    esn: list[int] = []
    addke: dict[int, list[int]] = {}
    for token in text.lower().split("-"):
        if _parse_addke(token, text, addke):
            continue
        if token in _ENCR:
            encr.append(_ENCR[token])
        elif token in _INTEG:
            integ.append(_INTEG[token])
        elif token in _PRF:
            prf.append(_PRF[token])
        elif token in _DH:
            dh.append(_DH[token])
        elif token in _ESN:
            esn.append(_ESN[token])
        else:
            raise ProposalError(f"unknown algorithm {token!r} in proposal {text!r}")
    aead = [t for t in encr if t.id in AEAD_ENCR]
    if aead and len(aead) != len(encr):
        raise ProposalError(f"proposal {text!r} mixes AEAD and non-AEAD ciphers")
    if aead and integ:
        raise ProposalError(f"proposal {text!r}: AEAD ciphers take no integrity algorithm")
    if protocol == ProtocolId.IKE:
        if not encr or not dh or (not aead and not integ):
            raise ProposalError(
                f"IKE proposal {text!r} needs a cipher, integrity (unless AEAD) and a DH group"
            )
        if esn:
            raise ProposalError(f"IKE proposal {text!r} cannot carry esn")
        if not prf:
            prf = [_PRF_FROM_INTEG[i] for i in integ]
        if not prf:
            raise ProposalError(f"IKE proposal {text!r} with an AEAD cipher needs a prf token")
    else:
        if prf:
            raise ProposalError(f"{protocol.name} proposal {text!r} cannot carry a prf")
        if protocol == ProtocolId.ESP and not encr:
            raise ProposalError(f"ESP proposal {text!r} needs a cipher")
        if protocol == ProtocolId.AH and (encr or not integ):
            raise ProposalError(f"AH proposal {text!r} takes only integrity algorithms")
        if not aead and not integ:
            raise ProposalError(f"{protocol.name} proposal {text!r} needs integrity (unless AEAD)")
        esn = esn or [EsnId.NO_ESN]
    if addke and not dh:
        raise ProposalError(f"proposal {text!r}: additional key exchanges need a key exchange method")
    transforms = (
        list(encr)
        + [Transform(TransformType.PRF, i) for i in prf]
        + [Transform(TransformType.INTEG, i) for i in integ]
        + [Transform(TransformType.DH, i) for i in dh]
        + [Transform(TransformType(tt), i) for tt in sorted(addke) for i in addke[tt]]
        + [Transform(TransformType.ESN, i) for i in esn]
    )
    return ProposalSpec(protocol, tuple(transforms), text)


def _parse_addke(token: str, text: str, addke: dict[int, list[int]]) -> bool:
    """Adds a "keN_method" token to `addke`; False if the token is not of that form."""
    head, sep, method = token.partition("_")
    if not sep or len(head) != 3 or not head.startswith("ke") or not head[2].isdigit():
        return False
    n = int(head[2])
    if not 1 <= n <= len(ADDKE_TYPES):
        raise ProposalError(f"{token!r} in proposal {text!r}: additional key exchanges are ke1..ke7")
    if method not in _ADDKE_METHODS:
        raise ProposalError(f"unknown key exchange method {method!r} in {token!r} of proposal {text!r}")
    addke.setdefault(TransformType.ADDKE1 + n - 1, []).append(_ADDKE_METHODS[method])
    return True


_METHOD_NAMES: dict[int, str] = {int(v): k for k, v in reversed(_ADDKE_METHODS.items())}


def method_name(method: int) -> str:
    """The proposal token of a key exchange method ("x25519", "mlkem768")."""
    return _METHOD_NAMES.get(method, f"ke{method}")


def additional_ke_text(addke: tuple[tuple[int, int], ...]) -> str:
    """strongSwan spelling of negotiated additional key exchanges: "ke1_mlkem768-ke2_..."."""
    return "-".join(f"ke{tt - TransformType.ADDKE1 + 1}_{method_name(m)}" for tt, m in addke)


@dataclass(frozen=True, slots=True)
class Chosen:
    """The single-transform-per-type result of a negotiation."""

    number: int
    protocol: int
    spi: bytes  # the SPI the proposing side put in its proposal
    encr: Transform | None
    prf: int | None
    integ: int | None
    dh: int | None
    esn: int | None
    # RFC 9370: (ADDKE transform type, method) in type order; a NONE choice is left out.
    addke: tuple[tuple[int, int], ...] = ()

    def as_proposal(self, spi: bytes) -> Proposal:
        ts = [t for t in (self.encr,) if t is not None]
        for ttype, tid in (
            (TransformType.PRF, self.prf),
            (TransformType.INTEG, self.integ),
            (TransformType.DH, self.dh),
            (TransformType.ESN, self.esn),
        ):
            if tid is not None:
                ts.append(Transform(ttype, tid))
        ts += [Transform(TransformType(tt), m) for tt, m in self.addke]
        return Proposal(self.number, self.protocol, spi, tuple(ts))


def _normalised(ts: tuple[Transform, ...], ignore_dh: bool) -> dict[int, list[Transform]]:
    by_type: dict[int, list[Transform]] = {}
    for t in ts:
        if t.type == TransformType.INTEG and t.id == IntegId.NONE:
            continue  # "no integrity" alongside an AEAD cipher equals leaving INTEG out
        if ignore_dh and _is_key_exchange(t.type):
            continue
        if t.type == TransformType.DH and t.id == DhId.NONE:
            continue
        by_type.setdefault(t.type, []).append(t)
    return by_type


def _fill_addke(a: dict[int, list[Transform]], b: dict[int, list[Transform]]) -> None:
    """An ADDKE type that one side leaves out matches the other's NONE (RFC 9370 2.2.1)."""
    for tt in set(a).symmetric_difference(b).intersection(ADDKE_TYPES):
        a.setdefault(tt, [Transform(tt, DhId.NONE)])
        b.setdefault(tt, [Transform(tt, DhId.NONE)])


def _match(ours: ProposalSpec, theirs: Proposal, prefer_ours: bool, ignore_dh: bool) -> Chosen | None:
    if theirs.protocol != ours.protocol:
        return None
    a = _normalised(ours.transforms, ignore_dh)
    b = _normalised(theirs.transforms, ignore_dh)
    if not ignore_dh:
        _fill_addke(a, b)
    if set(a) != set(b):
        return None
    pick: dict[int, Transform] = {}
    for ttype in a:
        first, second = (a[ttype], b[ttype]) if prefer_ours else (b[ttype], a[ttype])
        found = next((t for t in first if t in second), None)
        if found is None:
            return None
        pick[ttype] = found

    def tid(tt: TransformType) -> int | None:
        t = pick.get(tt)
        return None if t is None else t.id

    return Chosen(
        theirs.number,
        theirs.protocol,
        theirs.spi,
        pick.get(TransformType.ENCR),
        tid(TransformType.PRF),
        tid(TransformType.INTEG),
        tid(TransformType.DH),
        tid(TransformType.ESN),
        tuple((tt, t.id) for tt, t in sorted(pick.items()) if tt in ADDKE_TYPES and t.id != DhId.NONE),
    )


def select_proposal(
    ours: tuple[ProposalSpec, ...],
    theirs: tuple[Proposal, ...],
    *,
    prefer_ours: bool = True,
    ignore_dh: bool = False,
) -> Chosen | None:
    """Responder-side choice; the order of the outer loop decides whose preference wins."""
    pairs = ((o, t) for o in ours for t in theirs) if prefer_ours else ((o, t) for t in theirs for o in ours)
    for o, t in pairs:
        chosen = _match(o, t, prefer_ours, ignore_dh)
        if chosen is not None:
            return chosen
    return None


def accept_response(offered: tuple[Proposal, ...], answer: Proposal) -> Chosen | None:
    """Initiator side: the responder's single proposal must be a subset of one we offered."""
    for prop in offered:
        if prop.number != answer.number or prop.protocol != answer.protocol:
            continue
        spec = ProposalSpec(ProtocolId(prop.protocol), prop.transforms)
        got = _normalised(answer.transforms, False)
        if any(len(v) != 1 for v in got.values()):
            return None
        chosen = _match(spec, answer, True, False)
        if chosen is not None:
            return Chosen(
                chosen.number,
                chosen.protocol,
                answer.spi,
                chosen.encr,
                chosen.prf,
                chosen.integ,
                chosen.dh,
                chosen.esn,
                chosen.addke,
            )
    return None
