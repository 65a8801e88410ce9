"""TUN MTU from the path MTU and the worst-case ESP/AH overhead (documented in docs/dataplane.md).

ESP tunnel mode adds: outer IP header (20 IPv4 / 40 IPv6), UDP header when encapsulated (8),
ESP header (8), IV, at most B-1 bytes of padding plus the 2-byte trailer, and the ICV. The largest
inner packet m that fits satisfies  H + 8 + IV + ceil((m + 2) / B) * B + ICV <= PMTU, hence

    m = floor((PMTU - H - 8 - IV - ICV) / B) * B - 2        (H = outer IP [+ UDP])

with B the cipher block size (16 for AES-CBC) or 4 for GCM/ChaCha20-Poly1305/NULL. AH adds
H + 12 + ICV, padded to 4 bytes (IPv4) or 8 bytes (IPv6). TCP MSS is the MTU minus 40 (IPv4) or 60 (IPv6).
"""

from __future__ import annotations

from dataclasses import dataclass

from meshsec.agent.dataplane.userspace.ah import ah_length

_IV = {"aes-gcm-16": 8, "chacha20-poly1305": 8, "aes-cbc": 16, "null": 0}
_BLOCK = {"aes-gcm-16": 4, "chacha20-poly1305": 4, "aes-cbc": 16, "null": 4}
_AEAD_ICV = {"aes-gcm-16": 16, "chacha20-poly1305": 16}
_ICV = {"hmac-sha256": 16, "hmac-sha384": 24, "hmac-sha512": 32}


@dataclass(frozen=True, slots=True)
class Suite:
    """One algorithm combination the agent may negotiate, for overhead purposes."""

    protocol: str = "esp"  # "esp" or "ah"
    encryption: str | None = "aes-cbc"
    integrity: str | None = "hmac-sha512"


WORST_CASE_SUITES = (Suite("esp", "aes-cbc", "hmac-sha512"), Suite("ah", None, "hmac-sha512"))


def inner_mtu(path_mtu: int, suite: Suite, ipv6_outer: bool, udp_encap: bool) -> int:
    outer = (40 if ipv6_outer else 20) + (8 if udp_encap and suite.protocol == "esp" else 0)
    if suite.protocol == "ah":
        if suite.integrity not in _ICV:
            raise ValueError(f"AH suite needs an HMAC integrity algorithm, got {suite.integrity!r}")
        return path_mtu - outer - ah_length(_ICV[suite.integrity], ipv6_outer)
    enc = suite.encryption or ""
    if enc not in _IV:
        raise ValueError(f"unknown encryption algorithm {enc!r} in MTU suite")
    icv = _AEAD_ICV.get(enc) or _ICV.get(suite.integrity or "", -1)
    if icv < 0:
        raise ValueError(f"{enc} suite needs an HMAC integrity algorithm, got {suite.integrity!r}")
    block = _BLOCK[enc]
    return (path_mtu - outer - 8 - _IV[enc] - icv) // block * block - 2


def tun_mtu(path_mtu: int, suites: tuple[Suite, ...] = WORST_CASE_SUITES, ipv6_outer: bool = True,
            udp_encap: bool = True) -> int:
    """The TUN MTU that keeps every outer packet within `path_mtu` for all `suites`."""
    return min(inner_mtu(path_mtu, s, ipv6_outer, udp_encap) for s in suites)


def mss_for(mtu: int) -> tuple[int, int]:
    """TCP MSS limits (IPv4, IPv6) for inner packets of at most `mtu` bytes."""
    return mtu - 40, mtu - 60
