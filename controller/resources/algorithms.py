"""IKEv2/ESP transform names and strongSwan-style proposal strings.

A proposal string such as ``aes256gcm16-prfsha256-x25519`` lists one transform per dash.
The names are strongSwan's, because operators already know them; the RFC 7296 transform types
(ENCR, INTEG, PRF, D-H) are what each name resolves to. Every name the cloud profiles can accept is
known here, but only the names the meshsec IKE engine implements are ``agent_supported``: a
proposal that both ends of a meshsec tunnel must run has to stick to those.

RFC 9370 additional key exchanges use strongSwan's ``keN_method`` tokens (N = 1..7), e.g.
``aes256gcm16-prfsha256-x25519-ke1_mlkem768``: a hybrid of X25519 and ML-KEM-768, the second key
exchange run in IKE_INTERMEDIATE (and in IKE_FOLLOWUP_KE on rekeys).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass


class TransformType(enum.Enum):
    ENCR = "encryption"
    INTEG = "integrity"
    PRF = "prf"
    DH = "dh-group"


@dataclass(frozen=True, slots=True)
class Transform:
    name: str
    type: TransformType
    agent_supported: bool
    aead: bool = False


def _table(*rows: Transform) -> dict[str, Transform]:
    return {row.name: row for row in rows}


_E, _I, _P, _D = TransformType.ENCR, TransformType.INTEG, TransformType.PRF, TransformType.DH

TRANSFORMS: dict[str, Transform] = _table(
    Transform("aes128", _E, True),
    Transform("aes256", _E, True),
    Transform("aes128gcm16", _E, True, aead=True),
    Transform("aes256gcm16", _E, True, aead=True),
    Transform("chacha20poly1305", _E, True, aead=True),  # RFC 7634
    Transform("aes192", _E, False),
    Transform("aes192gcm16", _E, False, aead=True),
    Transform("sha256", _I, True),
    Transform("sha384", _I, True),
    Transform("sha512", _I, True),
    # SHA-1 is known only so that cloud profiles can say they accept it; every cloud we talk to
    # also takes SHA-2, so the engine does not implement it.
    Transform("sha1", _I, False),
    Transform("prfsha256", _P, True),
    Transform("prfsha384", _P, True),
    Transform("prfsha512", _P, True),
    Transform("prfsha1", _P, False),
    Transform("x25519", _D, True),
    Transform("ecp256", _D, True),
    Transform("ecp384", _D, True),
    Transform("modp2048", _D, True),
    Transform("modp3072", _D, True),
    Transform("modp768", _D, False),
    Transform("modp1024", _D, False),
    Transform("modp1536", _D, False),
    Transform("modp4096", _D, False),
    Transform("modp6144", _D, False),
    Transform("modp8192", _D, False),
    Transform("modp1024s160", _D, False),
    Transform("modp2048s224", _D, False),
    Transform("modp2048s256", _D, False),
    Transform("ecp521", _D, False),
    # ML-KEM (FIPS 203), Key Exchange Methods 35-37. The agent's `cryptography` has no ML-KEM-512.
    Transform("mlkem512", _D, False),
    Transform("mlkem768", _D, True),
    Transform("mlkem1024", _D, True),
)

# meshsec agents run additional key exchanges for IKE SAs (IKE_INTERMEDIATE, and IKE_FOLLOWUP_KE
# in their rekeys) and for CHILD_SAs (PFS: IKE_FOLLOWUP_KE after CREATE_CHILD_SA), RFC 9370.
ADDITIONAL_KE_SLOTS = 7
_ADDKE_TOKEN = re.compile(r"^ke([0-9]+)_([a-z0-9]+)$")

# IANA D-H group numbers, the form cloud consoles use.
DH_GROUP_NUMBERS: dict[str, int] = {
    "modp768": 1,
    "modp1024": 2,
    "modp1536": 5,
    "modp2048": 14,
    "modp3072": 15,
    "modp4096": 16,
    "modp6144": 17,
    "modp8192": 18,
    "ecp256": 19,
    "ecp384": 20,
    "ecp521": 21,
    "modp1024s160": 22,
    "modp2048s224": 23,
    "modp2048s256": 24,
    "x25519": 31,
    "mlkem512": 35,
    "mlkem768": 36,
    "mlkem1024": 37,
}


class ProposalKind(enum.Enum):
    IKE = "ike"
    ESP = "esp"
    AH = "ah"


@dataclass(frozen=True, slots=True)
class Proposal:
    """One parsed proposal; ``text`` is the canonical string handed to agents."""

    text: str
    encryption: str | None
    integrity: str | None
    prf: str | None
    dh: str | None
    # RFC 9370: (N, method) per additional key exchange N, in order.
    additional: tuple[tuple[int, str], ...] = ()

    def names(self) -> tuple[str, ...]:
        base = tuple(n for n in (self.encryption, self.integrity, self.prf, self.dh) if n is not None)
        return base + tuple(m for _, m in self.additional)


class ProposalError(ValueError):
    pass


def parse_proposal(text: str, kind: ProposalKind) -> Proposal:
    """Parses and checks one proposal; raises ProposalError with the reason.

    Rules (RFC 7296 section 3.3.3): IKE needs ENCR, PRF and D-H, plus INTEG unless ENCR is an AEAD;
    ESP needs ENCR, and INTEG exactly when ENCR is not an AEAD; AH carries INTEG only. A D-H group
    in an ESP/AH proposal means PFS for the CHILD_SA. strongSwan derives a missing IKE PRF from the
    integrity algorithm; we do the same so ``aes256-sha256-modp2048`` stays valid.
    """
    if not text or text != text.strip():
        raise ProposalError(f"{text!r}: empty or padded proposal")
    slots: dict[TransformType, str] = {}
    additional: dict[int, str] = {}
    for name in text.split("-"):
        if _additional_ke(text, name, additional):
            continue
        transform = TRANSFORMS.get(name)
        if transform is None:
            raise ProposalError(f"{text!r}: unknown algorithm {name!r}")
        if transform.type in slots:
            raise ProposalError(f"{text!r}: more than one {transform.type.value} algorithm")
        slots[transform.type] = name
    encr, integ = slots.get(_E), slots.get(_I)
    prf, dh = slots.get(_P), slots.get(_D)
    aead = encr is not None and TRANSFORMS[encr].aead
    if kind is ProposalKind.IKE:
        if encr is None:
            raise ProposalError(f"{text!r}: IKE proposal needs an encryption algorithm")
        if not aead and integ is None:
            raise ProposalError(f"{text!r}: non-AEAD IKE proposal needs an integrity algorithm")
        if aead and integ is not None:
            raise ProposalError(f"{text!r}: AEAD {encr} must not be combined with an integrity algorithm")
        if prf is None:
            if integ is None:
                raise ProposalError(f"{text!r}: IKE proposal with AEAD needs an explicit prf")
            prf = "prf" + integ
        if dh is None:
            raise ProposalError(f"{text!r}: IKE proposal needs a dh group")
    else:
        if prf is not None:
            raise ProposalError(f"{text!r}: a prf belongs in IKE proposals only")
        if kind is ProposalKind.AH:
            if encr is not None or integ is None:
                raise ProposalError(f"{text!r}: AH proposal takes an integrity algorithm and no encryption")
        else:
            if encr is None:
                raise ProposalError(f"{text!r}: ESP proposal needs an encryption algorithm")
            if aead and integ is not None:
                raise ProposalError(f"{text!r}: AEAD {encr} must not be combined with an integrity algorithm")
            if not aead and integ is None:
                raise ProposalError(f"{text!r}: non-AEAD ESP proposal needs an integrity algorithm")
    if additional and dh is None:
        raise ProposalError(f"{text!r}: additional key exchanges (ke1_...) need a dh group first")
    ordered = tuple(sorted(additional.items()))
    canonical = "-".join(
        [n for n in (encr, integ, prf, dh) if n is not None] + [f"ke{k}_{m}" for k, m in ordered]
    )
    return Proposal(canonical, encr, integ, prf, dh, ordered)


def _additional_ke(text: str, token: str, into: dict[int, str]) -> bool:
    """Records a ``keN_method`` token; False if ``token`` is not one."""
    match = _ADDKE_TOKEN.match(token)
    if match is None:
        return False
    slot, method = int(match.group(1)), match.group(2)
    if not 1 <= slot <= ADDITIONAL_KE_SLOTS:
        raise ProposalError(f"{text!r}: {token!r}: additional key exchanges are ke1 .. ke7")
    if method == "none":
        # Canonical proposals name one method per exchange; an optional one is a second proposal.
        raise ProposalError(f"{text!r}: {token!r}: list a second proposal without ke{slot}_ instead")
    if method not in TRANSFORMS or TRANSFORMS[method].type is not _D:
        raise ProposalError(f"{text!r}: {token!r}: unknown key exchange method {method!r}")
    if slot in into:
        raise ProposalError(f"{text!r}: more than one method for additional key exchange ke{slot}")
    into[slot] = method
    return True


def unsupported_by_agents(proposal: Proposal) -> tuple[str, ...]:
    return tuple(n for n in proposal.names() if not TRANSFORMS[n].agent_supported)
