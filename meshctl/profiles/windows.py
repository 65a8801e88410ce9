"""Windows 10/11 native IKEv2 client: a PowerShell script that imports the controller CA (and
the device's PKCS#12, asking for its passphrase with Read-Host), adds the connection with
Add-VpnConnection, pins its crypto with Set-VpnConnectionIPsecConfiguration (Windows' default
proposals include 3DES/SHA-1/modp1024, which the pool never allows) and adds split routes."""

from __future__ import annotations

import base64

from meshsec.meshctl.profiles.model import ProfileInput
from meshsec.meshctl.profiles.proposals import (
    WINDOWS_CIPHER,
    WINDOWS_DH,
    WINDOWS_ENCRYPTION,
    WINDOWS_ESP_AUTH,
    WINDOWS_INTEGRITY,
    WINDOWS_PFS,
    for_windows,
)


def quote(text: str) -> str:
    """A PowerShell single-quoted literal: nothing inside is expanded; ' is doubled."""
    return "'" + text.replace("'", "''") + "'"


def render(p: ProfileInput) -> bytes:
    chosen = for_windows(p.ike_proposals, p.esp_proposals)
    ike, esp = chosen.ike, chosen.esp
    integrity = ike.integrity_or_prf()
    assert ike.encryption and integrity and ike.dh and esp.encryption
    name = quote(p.name)
    lines = [
        f"# meshsec remote access {p.name} for {p.identity}: run in an elevated PowerShell.",
        "$ErrorActionPreference = 'Stop'",
        f"$ca = [Convert]::FromBase64String({quote(base64.b64encode(p.ca_der()).decode())})",
        "$caPath = Join-Path $env:TEMP 'meshsec-ca.cer'",
        "[IO.File]::WriteAllBytes($caPath, $ca)",
        "Import-Certificate -FilePath $caPath -CertStoreLocation Cert:\\LocalMachine\\Root | Out-Null",
        "Remove-Item $caPath",
    ]
    if p.needs_certificate():
        data = p.require_credentials().pkcs12(p.identity, p.require_passphrase(), p.ca)
        store = "LocalMachine" if p.auth == "certificate" else "CurrentUser"
        lines += [
            f"$pfx = [Convert]::FromBase64String({quote(base64.b64encode(data).decode())})",
            "$pfxPath = Join-Path $env:TEMP 'meshsec-device.pfx'",
            "[IO.File]::WriteAllBytes($pfxPath, $pfx)",
            "$passphrase = Read-Host -AsSecureString 'Passphrase of the device certificate'",
            f"Import-PfxCertificate -FilePath $pfxPath -CertStoreLocation Cert:\\{store}\\My "
            "-Password $passphrase | Out-Null",
            "Remove-Item $pfxPath",
        ]
    if p.auth == "certificate":
        auth = "-AuthenticationMethod MachineCertificate"
    elif p.auth == "eap-tls":
        lines.append("$eap = New-EapConfiguration -Tls -UserCertificate")
        auth = "-AuthenticationMethod Eap -EapConfigXmlStream $eap.EapConfigXmlStream"
    else:  # New-EapConfiguration's default is EAP-MSCHAPv2; Windows asks for the password
        lines.append("$eap = New-EapConfiguration")
        auth = "-AuthenticationMethod Eap -EapConfigXmlStream $eap.EapConfigXmlStream"
    split = "$false" if p.full_tunnel else "$true"
    lines += [
        f"Add-VpnConnection -Name {name} -ServerAddress {quote(p.server)} -TunnelType Ikev2 "
        f"-EncryptionLevel Required {auth} -SplitTunneling:{split} -RememberCredential:$false -Force",
        f"Set-VpnConnectionIPsecConfiguration -ConnectionName {name} "
        f"-AuthenticationTransformConstants {esp_auth(esp.encryption, esp.integrity)} "
        f"-CipherTransformConstants {WINDOWS_CIPHER[esp.encryption]} "
        f"-EncryptionMethod {WINDOWS_ENCRYPTION[ike.encryption]} "
        f"-IntegrityCheckMethod {WINDOWS_INTEGRITY[integrity]} "
        f"-DHGroup {WINDOWS_DH[ike.dh]} "
        f"-PfsGroup {WINDOWS_PFS[esp.dh] if esp.dh else 'None'} -Force",
    ]
    if not p.full_tunnel:
        lines += [
            f"Add-VpnConnectionRoute -ConnectionName {name} -DestinationPrefix {quote(r)}" for r in p.routes
        ]
    return ("\r\n".join(lines) + "\r\n").encode()


def esp_auth(encryption: str, integrity: str | None) -> str:
    """With AES-GCM Windows names the AEAD again as the "authentication transform"."""
    if integrity is None:
        return WINDOWS_CIPHER[encryption]
    return WINDOWS_ESP_AUTH[integrity]
