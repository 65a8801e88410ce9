"""Apple configuration profile (.mobileconfig) for iOS, iPadOS and macOS: an IKEv2 VPN payload,
the controller CA as a trusted root and, for certificate users, the device's PKCS#12.

Keys and values are those of Apple's "VPN" (com.apple.vpn.managed, VPNType IKEv2),
"Certificate Root" (com.apple.security.root) and "PKCS#12" (com.apple.security.pkcs12)
payloads. The PKCS#12 password is not in the file: the device asks for it on import.
"""

from __future__ import annotations

import plistlib
from typing import Any

from cryptography.x509.oid import NameOID

from meshsec.meshctl.profiles.model import ProfileInput
from meshsec.meshctl.profiles.proposals import APPLE_ENCRYPTION, APPLE_INTEGRITY, DH_NUMBERS, for_apple


def render(p: ProfileInput) -> bytes:
    chosen = for_apple(p.ike_proposals, p.esp_proposals)
    ike_integrity = chosen.ike.integrity_or_prf()
    assert chosen.ike.encryption is not None and ike_integrity is not None and chosen.ike.dh is not None
    ike_params = {
        "EncryptionAlgorithm": APPLE_ENCRYPTION[chosen.ike.encryption],
        "IntegrityAlgorithm": APPLE_INTEGRITY[ike_integrity],
        "DiffieHellmanGroup": DH_NUMBERS[chosen.ike.dh],
        "LifeTimeInMinutes": max(p.ike_lifetime_s // 60, 10),
    }
    assert chosen.esp.encryption is not None
    child_params = {
        "EncryptionAlgorithm": APPLE_ENCRYPTION[chosen.esp.encryption],
        "IntegrityAlgorithm": APPLE_INTEGRITY[chosen.esp.integrity or ike_integrity],
        "DiffieHellmanGroup": DH_NUMBERS[chosen.esp.dh or chosen.ike.dh],
        "LifeTimeInMinutes": max(p.child_lifetime_s // 60, 10),
    }
    ca_uuid, cert_uuid, vpn_uuid = p.uuid("ca"), p.uuid("cert"), p.uuid("vpn")
    ikev2: dict[str, Any] = {
        "RemoteAddress": p.server,
        "RemoteIdentifier": p.server_id,
        "LocalIdentifier": p.identity,
        "ServerCertificateIssuerCommonName": _common_name(p),
        "ServerCertificateCommonName": p.server_id,
        "IKESecurityAssociationParameters": ike_params,
        "ChildSecurityAssociationParameters": child_params,
        "EnablePFS": 1 if chosen.esp.dh else 0,
        "DeadPeerDetectionRate": "Medium",
        "DisableMOBIKE": 0,
        "DisableRedirect": 1,
        "EnableCertificateRevocationCheck": 0,
        "UseConfigurationAttributeInternalIPSubnet": 0 if p.full_tunnel else 1,
        "IncludeAllNetworks": 1 if p.full_tunnel else 0,
        "OnDemandEnabled": 0,
    }
    content: list[dict[str, Any]] = [_root(p, ca_uuid)]
    if p.auth == "certificate":
        ikev2["AuthenticationMethod"] = "Certificate"
        ikev2["ExtendedAuthEnabled"] = 0
        ikev2["PayloadCertificateUUID"] = cert_uuid
        content.append(_pkcs12(p, cert_uuid))
    elif p.auth == "eap-tls":
        ikev2["AuthenticationMethod"] = "None"
        ikev2["ExtendedAuthEnabled"] = 1
        ikev2["PayloadCertificateUUID"] = cert_uuid
        content.append(_pkcs12(p, cert_uuid))
    else:  # eap-mschapv2: the user types the password on the device
        ikev2["AuthenticationMethod"] = "None"
        ikev2["ExtendedAuthEnabled"] = 1
        ikev2["AuthName"] = p.identity
    content.append(
        {
            "PayloadType": "com.apple.vpn.managed",
            "PayloadVersion": 1,
            "PayloadIdentifier": f"io.meshsec.vpn.{vpn_uuid}",
            "PayloadUUID": vpn_uuid,
            "PayloadDisplayName": p.name,
            "UserDefinedName": p.name,
            "VPNType": "IKEv2",
            "IKEv2": ikev2,
        }
    )
    profile = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"io.meshsec.profile.{p.uuid()}",
        "PayloadUUID": p.uuid(),
        "PayloadDisplayName": f"{p.name} VPN",
        "PayloadDescription": f"meshsec remote access for {p.identity}",
        "PayloadRemovalDisallowed": False,
        "PayloadContent": content,
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML, sort_keys=True)


def _common_name(p: ProfileInput) -> str:
    names = p.ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def _root(p: ProfileInput, payload_uuid: str) -> dict[str, Any]:
    return {
        "PayloadType": "com.apple.security.root",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"io.meshsec.ca.{payload_uuid}",
        "PayloadUUID": payload_uuid,
        "PayloadDisplayName": "meshsec controller CA",
        "PayloadContent": p.ca_der(),
    }


def _pkcs12(p: ProfileInput, payload_uuid: str) -> dict[str, Any]:
    data = p.require_credentials().pkcs12(p.identity, p.require_passphrase(), p.ca)
    return {
        "PayloadType": "com.apple.security.pkcs12",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"io.meshsec.cert.{payload_uuid}",
        "PayloadUUID": payload_uuid,
        "PayloadDisplayName": f"{p.identity} device certificate",
        "PayloadContent": data,
    }
