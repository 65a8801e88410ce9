"""Parameter profiles for cloud VPN gateways: what each accepts, and the defaults we propose.

Sources: AWS Site-to-Site VPN tunnel options (EC2 API VpnTunnelOptionsSpecification: phase 1
AES128/AES256/AES128-GCM-16/AES256-GCM-16, SHA1/SHA2-256/384/512, DH 2,14-24, lifetime 900-28800 s;
phase 2 also DH 5, lifetime 900-3600 s); Azure custom IPsec/IKE policy (IKE DH 1/2/14/2048/ECP256/
ECP384/24, GCMAES128/256, AES128/192/256, SHA1/SHA256/SHA384; default phase 2 GCMAES256 without PFS,
3600 s); GCP Cloud VPN supported ciphers (AES-CBC and AES-GCM-16 128/192/256, SHA1/SHA2, DH
2/5/14/15/16/19/20/21/31, phase 1 36000 s and phase 2 10800 s lifetimes are GCP's own values).
Names the cloud accepts but the meshsec engine does not implement stay in the accepted sets so
that errors can tell "the cloud refuses it" apart from "our agents do not implement it yet".
"""

from __future__ import annotations

from dataclasses import dataclass

from meshsec.controller.resources.model import CloudProfileName, CryptoProfile, Dpd


@dataclass(frozen=True, slots=True)
class CloudProfile:
    name: CloudProfileName
    ike_algorithms: frozenset[str]
    esp_algorithms: frozenset[str]
    ike_lifetime_range: tuple[int, int]
    child_lifetime_range: tuple[int, int]
    defaults: CryptoProfile


_AES = frozenset({"aes128", "aes256", "aes128gcm16", "aes256gcm16"})
_AES192 = frozenset({"aes192", "aes192gcm16"})
# RFC 7634; none of the cloud gateways below offers it, so only the generic profile accepts it.
_CHACHA = frozenset({"chacha20poly1305"})
_SHA = frozenset({"sha1", "sha256", "sha384", "sha512"})
_PRF = frozenset({"prfsha1", "prfsha256", "prfsha384", "prfsha512"})
_AWS_DH = frozenset(
    {
        "modp1024",
        "modp2048",
        "modp3072",
        "modp4096",
        "modp6144",
        "modp8192",
        "ecp256",
        "ecp384",
        "ecp521",
        "modp1024s160",
        "modp2048s224",
        "modp2048s256",
    }
)
_GCP_DH = frozenset(
    {"modp1024", "modp1536", "modp2048", "modp3072", "modp4096", "ecp256", "ecp384", "ecp521", "x25519"}
)

_MLKEM = frozenset({"mlkem512", "mlkem768", "mlkem1024"})

PROFILES: dict[CloudProfileName, CloudProfile] = {
    CloudProfileName.GENERIC: CloudProfile(
        CloudProfileName.GENERIC,
        ike_algorithms=_AES
        | _AES192
        | _CHACHA
        | _SHA
        | _PRF
        | _MLKEM
        | frozenset({"x25519", "ecp256", "ecp384", "modp2048", "modp3072"}),
        esp_algorithms=_AES
        | _AES192
        | _CHACHA
        | _SHA
        | _MLKEM
        | frozenset({"x25519", "ecp256", "ecp384", "modp2048", "modp3072"}),
        ike_lifetime_range=(300, 86400),
        child_lifetime_range=(300, 86400),
        defaults=CryptoProfile(
            ("aes256gcm16-prfsha256-x25519",), ("aes256gcm16-x25519",), 14400, 3600, True, Dpd()
        ),
    ),
    CloudProfileName.AWS: CloudProfile(
        CloudProfileName.AWS,
        ike_algorithms=_AES | _SHA | _PRF | _AWS_DH,
        esp_algorithms=_AES | _SHA | _AWS_DH | frozenset({"modp1536"}),
        ike_lifetime_range=(900, 28800),
        child_lifetime_range=(900, 3600),
        defaults=CryptoProfile(
            ("aes256gcm16-prfsha384-ecp384",),
            ("aes256gcm16-ecp384",),
            28800,
            3600,
            True,
            Dpd(delay_s=10, timeout_s=30),
        ),
    ),
    CloudProfileName.AZURE: CloudProfile(
        CloudProfileName.AZURE,
        ike_algorithms=_AES
        | _AES192 - {"aes192gcm16"}
        | _SHA - {"sha512"}
        | _PRF - {"prfsha512"}
        | frozenset({"modp768", "modp1024", "modp2048", "ecp256", "ecp384", "modp2048s256"}),
        esp_algorithms=_AES
        | _AES192
        | _SHA - {"sha384", "sha512"}
        | frozenset({"modp768", "modp1024", "modp2048", "ecp256", "ecp384", "modp2048s256"}),
        ike_lifetime_range=(300, 172799),
        child_lifetime_range=(300, 172799),
        defaults=CryptoProfile(
            ("aes256gcm16-prfsha384-ecp384",), ("aes256gcm16",), 28800, 3600, False, Dpd(delay_s=45)
        ),
    ),
    CloudProfileName.GCP: CloudProfile(
        CloudProfileName.GCP,
        ike_algorithms=_AES | _AES192 | _SHA | _PRF | _GCP_DH,
        esp_algorithms=_AES | _AES192 | _SHA | _GCP_DH,
        ike_lifetime_range=(36000, 36000),
        child_lifetime_range=(10800, 10800),
        defaults=CryptoProfile(
            ("aes256gcm16-prfsha256-x25519",), ("aes256gcm16-x25519",), 36000, 10800, True, Dpd(delay_s=20)
        ),
    ),
}

# Agent-to-agent meshes (MeshPolicy) default to the hybrid X25519 + ML-KEM-768 key exchange for the
# IKE SA and its rekeys and for PFS in CHILD_SA rekeys (RFC 9370: IKE_INTERMEDIATE, IKE_FOLLOWUP_KE);
# external gateways keep their profile's classical defaults, which is what the clouds and
# third-party peers accept.
_HYBRID = CryptoProfile(
    ("aes256gcm16-prfsha256-x25519-ke1_mlkem768",),
    ("aes256gcm16-x25519-ke1_mlkem768",),
    14400,
    3600,
    True,
    Dpd(),
)
MESH_DEFAULTS: CryptoProfile = _HYBRID
