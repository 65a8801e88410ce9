"""Which of a pool's proposals each client can run, in that client's own vocabulary.

A pool's proposals are strongSwan-style strings the controller has already validated and
defaulted (`GetRemoteAccessProfile`); native clients offer fixed menus. A profile keeps the
pool's proposals the client supports, in the pool's order of preference, and refuses to render
when none is left, naming what the client would accept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from meshsec.meshctl.profiles.model import ProfileError

# IANA Transform Type 4 numbers of the groups the clients below offer.
DH_NUMBERS = {"modp2048": 14, "modp3072": 15, "ecp256": 19, "ecp384": 20, "x25519": 31}

# Apple (com.apple.vpn.managed IKEv2 dictionary values).
APPLE_ENCRYPTION = {
    "aes128": "AES-128",
    "aes256": "AES-256",
    "aes128gcm16": "AES-128-GCM",
    "aes256gcm16": "AES-256-GCM",
}
APPLE_INTEGRITY = {"sha256": "SHA2-256", "sha384": "SHA2-384", "sha512": "SHA2-512"}
APPLE_DH = frozenset(DH_NUMBERS)

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
WINDOWS_CIPHER = WINDOWS_ENCRYPTION
WINDOWS_ESP_AUTH = {"sha256": "SHA256128"}


@dataclass(frozen=True, slots=True)
class Transforms:
    """One proposal's names by transform type (strongSwan spelling)."""

    text: str
    encryption: str | None = None
    integrity: str | None = None
    prf: str | None = None
    dh: str | None = None

    @classmethod
    def of(cls, text: str) -> Transforms:
        slots: dict[str, str] = {}
        for name in text.split("-"):
            if name.startswith("prf"):
                slots["prf"] = name
            elif name.startswith(("modp", "ecp", "x25519", "x448", "curve")):
                slots["dh"] = name
            elif name.startswith(("sha", "md5", "aesxcbc")):
                slots["integrity"] = name
            else:
                slots["encryption"] = name
        return cls(text, **slots)

    @property
    def aead(self) -> bool:
        return self.encryption is not None and "gcm" in self.encryption

    def integrity_or_prf(self) -> str | None:
        """Apple and Windows want an integrity algorithm even with AEAD: the PRF's hash stands in."""
        return self.integrity or (self.prf.removeprefix("prf") if self.prf else None)


@dataclass(frozen=True, slots=True)
class Chosen:
    ike: Transforms
    esp: Transforms


def _first(
    kind: str, texts: tuple[str, ...], ok: Callable[[Transforms], bool], client: str, menu: str
) -> Transforms:
    for text in texts:
        transforms = Transforms.of(text)
        if ok(transforms):
            return transforms
    raise ProfileError(
        f"none of the pool's {kind} proposals ({', '.join(texts)}) is one {client} supports; "
        f"add one built from {menu}"
    )


def for_apple(ike: tuple[str, ...], esp: tuple[str, ...]) -> Chosen:
    menu = (
        "aes128|aes256|aes128gcm16|aes256gcm16, sha256|sha384|sha512, modp2048|modp3072|ecp256|ecp384|x25519"
    )

    def ike_ok(p: Transforms) -> bool:
        return (
            p.encryption in APPLE_ENCRYPTION and p.integrity_or_prf() in APPLE_INTEGRITY and p.dh in APPLE_DH
        )

    def esp_ok(p: Transforms) -> bool:
        integrity_ok = p.integrity is None or p.integrity in APPLE_INTEGRITY
        return p.encryption in APPLE_ENCRYPTION and integrity_ok and (p.dh is None or p.dh in APPLE_DH)

    return Chosen(_first("IKE", ike, ike_ok, "Apple", menu), _first("ESP", esp, esp_ok, "Apple", menu))


def for_windows(ike: tuple[str, ...], esp: tuple[str, ...]) -> Chosen:
    menu = "aes128|aes256|aes128gcm16|aes256gcm16, sha256|sha384, modp2048|ecp256|ecp384"

    def ike_ok(p: Transforms) -> bool:
        return (
            p.encryption in WINDOWS_ENCRYPTION
            and p.integrity_or_prf() in WINDOWS_INTEGRITY
            and p.dh in WINDOWS_DH
        )

    def esp_ok(p: Transforms) -> bool:
        integrity_ok = p.aead if p.integrity is None else p.integrity in WINDOWS_ESP_AUTH
        return p.encryption in WINDOWS_CIPHER and integrity_ok and (p.dh is None or p.dh in WINDOWS_PFS)

    return Chosen(_first("IKE", ike, ike_ok, "Windows", menu), _first("ESP", esp, esp_ok, "Windows", menu))
