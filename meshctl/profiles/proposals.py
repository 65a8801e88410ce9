"""Which of a pool's proposals each client can run, in that client's own vocabulary.

A pool lists strongSwan-style proposals (controller/resources/algorithms.py); native clients
offer fixed menus. A profile keeps the pool's proposals the client supports, in the pool's order
of preference, and refuses to render when none is left, naming what the client would accept.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshsec.controller.resources.algorithms import DH_GROUP_NUMBERS, Proposal, ProposalKind, parse_proposal
from meshsec.meshctl.profiles.model import ProfileError

# Apple (com.apple.vpn.managed IKEv2 dictionary keys' accepted values).
APPLE_ENCRYPTION = {
    "aes128": "AES-128",
    "aes256": "AES-256",
    "aes128gcm16": "AES-128-GCM",
    "aes256gcm16": "AES-256-GCM",
}
APPLE_INTEGRITY = {"sha256": "SHA2-256", "sha384": "SHA2-384", "sha512": "SHA2-512"}
APPLE_DH = frozenset({"modp2048", "modp3072", "ecp256", "ecp384", "x25519"})

# Windows (Set-VpnConnectionIPsecConfiguration parameter values).
WINDOWS_ENCRYPTION = {
    "aes128": "AES128",
    "aes256": "AES256",
    "aes128gcm16": "GCMAES128",
    "aes256gcm16": "GCMAES256",
}
WINDOWS_INTEGRITY = {"sha256": "SHA256", "sha384": "SHA384"}
WINDOWS_DH = {"modp2048": "Group14", "ecp256": "ECP256", "ecp384": "ECP384"}
WINDOWS_PFS = {"modp2048": "PFS2048", "ecp256": "ECP256", "ecp384": "ECP384"}
# ESP transforms: -CipherTransformConstants and -AuthenticationTransformConstants.
WINDOWS_CIPHER = {
    "aes128": "AES128",
    "aes256": "AES256",
    "aes128gcm16": "GCMAES128",
    "aes256gcm16": "GCMAES256",
}
WINDOWS_ESP_AUTH = {"sha256": "SHA256128"}

# strongSwan (Android app and swanctl): everything the agents implement.


@dataclass(frozen=True, slots=True)
class Chosen:
    ike: Proposal
    esp: Proposal


def _integrity_of(ike: Proposal) -> str | None:
    """The PRF stands in for the integrity algorithm with AEAD (Apple and Windows both want one)."""
    return ike.integrity or (ike.prf.removeprefix("prf") if ike.prf else None)


def _first(kind: ProposalKind, texts: tuple[str, ...], ok: object, client: str, menu: str) -> Proposal:
    for text in texts:
        proposal = parse_proposal(text, kind)
        if callable(ok) and ok(proposal):
            return proposal
    raise ProfileError(
        f"none of the pool's {kind.value.upper()} proposals ({', '.join(texts)}) is one {client} supports; "
        f"add one built from {menu}"
    )


def for_apple(ike: tuple[str, ...], esp: tuple[str, ...]) -> Chosen:
    menu = (
        "aes128|aes256|aes128gcm16|aes256gcm16, sha256|sha384|sha512, modp2048|modp3072|ecp256|ecp384|x25519"
    )

    def ike_ok(p: Proposal) -> bool:
        return p.encryption in APPLE_ENCRYPTION and _integrity_of(p) in APPLE_INTEGRITY and p.dh in APPLE_DH

    def esp_ok(p: Proposal) -> bool:
        integrity_ok = p.integrity is None or p.integrity in APPLE_INTEGRITY
        return p.encryption in APPLE_ENCRYPTION and integrity_ok and (p.dh is None or p.dh in APPLE_DH)

    return Chosen(
        _first(ProposalKind.IKE, ike, ike_ok, "Apple", menu),
        _first(ProposalKind.ESP, esp, esp_ok, "Apple", menu),
    )


def for_windows(ike: tuple[str, ...], esp: tuple[str, ...]) -> Chosen:
    menu = "aes128|aes256|aes128gcm16|aes256gcm16, sha256|sha384, modp2048|ecp256|ecp384"

    def ike_ok(p: Proposal) -> bool:
        return (
            p.encryption in WINDOWS_ENCRYPTION
            and _integrity_of(p) in WINDOWS_INTEGRITY
            and p.dh in WINDOWS_DH
        )

    def esp_ok(p: Proposal) -> bool:
        aead = p.encryption is not None and p.encryption.endswith("gcm16")
        integrity_ok = aead if p.integrity is None else p.integrity in WINDOWS_ESP_AUTH
        return p.encryption in WINDOWS_CIPHER and integrity_ok and (p.dh is None or p.dh in WINDOWS_PFS)

    return Chosen(
        _first(ProposalKind.IKE, ike, ike_ok, "Windows", menu),
        _first(ProposalKind.ESP, esp, esp_ok, "Windows", menu),
    )


def dh_number(name: str) -> int:
    return DH_GROUP_NUMBERS[name]
