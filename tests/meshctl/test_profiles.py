"""Client profiles: each renders from a real controller CA and device certificate and parses as
its client would read it (plistlib for .mobileconfig, the app's JSON shape for .sswan, Windows'
parameter sets for the PowerShell script, a real charon's ``swanctl --load-all``), and a
strongSwan road warrior connects to a strongSwan gateway with the generated swanctl.conf."""

from __future__ import annotations

import base64
import datetime
import json
import plistlib
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from meshsec.common.secrets import Secret
from meshsec.controller.ca.authority import CertificateAuthority, load_csr
from meshsec.meshctl.profiles import mobileconfig, sswan, swanctl, windows
from meshsec.meshctl.profiles.model import DeviceCredentials, ProfileError, ProfileInput
from tests.harness.netns import Lab
from tests.harness.strongswan import Charon, CharonFactory, CharonSettings, SwanctlError

PASSPHRASE = Secret(b"correct horse battery staple")
NOW = datetime.datetime.now(datetime.UTC)
YEAR = datetime.timedelta(days=365)


@pytest.fixture
def netns_prefix() -> str:
    return "h17p-"


def _csr(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.CertificateSigningRequest]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return key, load_csr(csr.public_bytes(serialization.Encoding.PEM).decode(), cn)


@pytest.fixture(scope="module")
def pki() -> dict[str, Any]:
    ca = CertificateAuthority.create()
    device_key, device_csr = _csr("phone.alice")
    device = ca.sign_device(device_csr, "alice", "phone", "alice@example.test", YEAR, NOW)
    gw_key, gw_csr = _csr("gw1")
    gateway = ca.sign_node(gw_csr, "gw1", "gw.example.test", YEAR, NOW)
    return {
        "ca": ca,
        "device": DeviceCredentials(
            x509.load_pem_x509_certificate(device.certificate_pem.encode()), device_key
        ),
        "gw_cert": gateway.certificate_pem.encode(),
        "gw_key": gw_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    }


def _input(pki: dict[str, Any], auth: str = "certificate", **overrides: Any) -> ProfileInput:
    values: dict[str, Any] = {
        "name": "meshsec-staff",
        "server": "198.18.170.1",
        "server_id": "gw.example.test",
        "identity": "alice@example.test",
        "auth": auth,
        "ca": pki["ca"].certificate,
        "ike_proposals": ("aes256gcm16-prfsha384-ecp384", "aes256gcm16-prfsha256-x25519"),
        "esp_proposals": ("aes256gcm16-ecp384",),
        "routes": ("198.19.170.0/24",),
        "credentials": pki["device"] if auth != "eap-mschapv2" else None,
        "passphrase": PASSPHRASE,
    }
    values.update(overrides)
    return ProfileInput(**values)


def _check_p12(data: bytes, pki: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        pkcs12.load_key_and_certificates(data, b"wrong passphrase")
    key, cert, extra = pkcs12.load_key_and_certificates(data, PASSPHRASE.reveal())
    assert cert == pki["device"].certificate
    assert key is not None and key.public_key() == pki["device"].key.public_key()
    assert extra == [pki["ca"].certificate]


@pytest.mark.parametrize("auth", ["certificate", "eap-tls", "eap-mschapv2"])
def test_mobileconfig_is_a_plist_apple_reads(pki: dict[str, Any], auth: str) -> None:
    raw = mobileconfig.render(_input(pki, auth))
    assert PASSPHRASE.reveal() not in raw
    profile = plistlib.loads(raw)
    assert profile["PayloadType"] == "Configuration"
    by_type = {p["PayloadType"]: p for p in profile["PayloadContent"]}
    assert (
        x509.load_der_x509_certificate(by_type["com.apple.security.root"]["PayloadContent"])
        == pki["ca"].certificate
    )
    ikev2 = by_type["com.apple.vpn.managed"]["IKEv2"]
    assert by_type["com.apple.vpn.managed"]["VPNType"] == "IKEv2"
    assert ikev2["RemoteAddress"] == "198.18.170.1" and ikev2["RemoteIdentifier"] == "gw.example.test"
    assert ikev2["IKESecurityAssociationParameters"] == {
        "EncryptionAlgorithm": "AES-256-GCM",
        "IntegrityAlgorithm": "SHA2-384",
        "DiffieHellmanGroup": 20,
        "LifeTimeInMinutes": 240,
    }
    assert ikev2["ChildSecurityAssociationParameters"]["DiffieHellmanGroup"] == 20
    assert ikev2["EnablePFS"] == 1 and ikev2["IncludeAllNetworks"] == 0
    if auth == "eap-mschapv2":
        assert "com.apple.security.pkcs12" not in by_type
        assert ikev2["ExtendedAuthEnabled"] == 1 and ikev2["AuthName"] == "alice@example.test"
    else:
        p12 = by_type["com.apple.security.pkcs12"]
        assert ikev2["PayloadCertificateUUID"] == p12["PayloadUUID"]
        assert ikev2["AuthenticationMethod"] == ("Certificate" if auth == "certificate" else "None")
        _check_p12(p12["PayloadContent"], pki)
    uuids = [p["PayloadUUID"] for p in profile["PayloadContent"]] + [profile["PayloadUUID"]]
    assert len(set(uuids)) == len(uuids)
    assert mobileconfig.render(_input(pki, auth)).count(b"PayloadUUID") == raw.count(b"PayloadUUID")


# The fields and value sets of strongSwan's "Android VPN Client Profiles" documentation.
SSWAN_SCHEMA = {
    "type": "object",
    "required": ["uuid", "name", "type", "remote"],
    "additionalProperties": False,
    "properties": {
        "uuid": {
            "type": "string",
            "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
        },
        "name": {"type": "string"},
        "type": {"enum": ["ikev2-eap", "ikev2-cert", "ikev2-cert-eap", "ikev2-eap-tls", "ikev2-byod-eap"]},
        "remote": {
            "type": "object",
            "required": ["addr"],
            "additionalProperties": False,
            "properties": {
                "addr": {"type": "string"},
                "port": {"type": "integer"},
                "id": {"type": "string"},
                "cert": {"type": "string", "contentEncoding": "base64"},
                "certreq": {"type": "boolean"},
                "revocation": {
                    "type": "object",
                    "properties": {
                        "crl": {"type": "boolean"},
                        "ocsp": {"type": "boolean"},
                        "strict": {"type": "boolean"},
                    },
                },
            },
        },
        "local": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "eap_id": {"type": "string"},
                "id": {"type": "string"},
                "p12": {"type": "string"},
                "rsa-pss": {"type": "boolean"},
            },
        },
        "ike-proposal": {"type": "string"},
        "esp-proposal": {"type": "string"},
        "dns-servers": {"type": "string"},
        "mtu": {"type": "integer"},
        "nat-keepalive": {"type": "integer"},
        "split-tunneling": {
            "type": "object",
            "properties": {
                "subnets": {"type": "string"},
                "excluded": {"type": "string"},
                "block-ipv4": {"type": "boolean"},
                "block-ipv6": {"type": "boolean"},
            },
        },
    },
}


@pytest.mark.parametrize("auth", ["certificate", "eap-tls", "eap-mschapv2"])
def test_sswan_matches_the_android_app_schema(pki: dict[str, Any], auth: str) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    raw = sswan.render(_input(pki, auth))
    assert PASSPHRASE.reveal() not in raw
    profile = json.loads(raw)
    jsonschema.validate(profile, SSWAN_SCHEMA)
    assert (
        profile["type"]
        == {"certificate": "ikev2-cert", "eap-tls": "ikev2-eap-tls", "eap-mschapv2": "ikev2-eap"}[auth]
    )
    assert (
        x509.load_der_x509_certificate(base64.b64decode(profile["remote"]["cert"])) == pki["ca"].certificate
    )
    assert profile["split-tunneling"] == {"subnets": "198.19.170.0/24"}
    if auth == "eap-mschapv2":
        assert profile["local"] == {"eap_id": "alice@example.test"}
    else:
        _check_p12(base64.b64decode(profile["local"]["p12"]), pki)
    full = json.loads(sswan.render(_input(pki, auth, routes=("0.0.0.0/0", "::/0"))))
    assert "split-tunneling" not in full


# Set-VpnConnectionIPsecConfiguration's documented values for each parameter.
WINDOWS_VALUES = {
    "AuthenticationTransformConstants": {
        "MD596",
        "SHA196",
        "SHA256128",
        "GCMAES128",
        "GCMAES192",
        "GCMAES256",
        "None",
    },
    "CipherTransformConstants": {
        "DES",
        "DES3",
        "AES128",
        "AES192",
        "AES256",
        "GCMAES128",
        "GCMAES192",
        "GCMAES256",
        "None",
    },
    "EncryptionMethod": {"DES", "DES3", "AES128", "AES192", "AES256", "GCMAES128", "GCMAES192", "GCMAES256"},
    "IntegrityCheckMethod": {"MD5", "SHA1", "SHA256", "SHA384"},
    "DHGroup": {"None", "Group1", "Group2", "Group14", "ECP256", "ECP384", "Group24"},
    "PfsGroup": {"None", "PFS1", "PFS2", "PFS2048", "ECP256", "ECP384", "PFSMM", "PFS24"},
}


@pytest.mark.parametrize("auth", ["certificate", "eap-tls", "eap-mschapv2"])
def test_windows_script_uses_aes_gcm_and_ecp384(pki: dict[str, Any], auth: str) -> None:
    script = windows.render(_input(pki, auth)).decode()
    assert PASSPHRASE.reveal().decode() not in script
    ipsec = next(
        line for line in script.splitlines() if line.startswith("Set-VpnConnectionIPsecConfiguration")
    )
    params = dict(re.findall(r"-(\w+) (\S+)", ipsec))
    for name, allowed in WINDOWS_VALUES.items():
        assert params[name] in allowed, (name, params[name])
    assert params["CipherTransformConstants"] == params["AuthenticationTransformConstants"] == "GCMAES256"
    assert params["EncryptionMethod"] == "GCMAES256" and params["IntegrityCheckMethod"] == "SHA384"
    assert params["DHGroup"] == params["PfsGroup"] == "ECP384"
    add = next(line for line in script.splitlines() if line.startswith("Add-VpnConnection "))
    assert "-TunnelType Ikev2" in add and "-SplitTunneling:$true" in add
    assert (
        "Add-VpnConnectionRoute -ConnectionName 'meshsec-staff' -DestinationPrefix '198.19.170.0/24'"
        in script
    )
    method = {"certificate": "MachineCertificate", "eap-tls": "Eap", "eap-mschapv2": "Eap"}[auth]
    assert f"-AuthenticationMethod {method}" in add
    if auth != "eap-mschapv2":
        blob = re.search(r"\$pfx = \[Convert\]::FromBase64String\('([^']+)'\)", script)
        assert blob is not None
        _check_p12(base64.b64decode(blob.group(1)), pki)
        assert "Read-Host -AsSecureString" in script
    assert windows.quote("it's") == "'it''s'"


def test_profiles_refuse_pools_the_client_cannot_run(pki: dict[str, Any]) -> None:
    with pytest.raises(ProfileError, match=r"none of the pool's IKE proposals .* Windows supports"):
        windows.render(_input(pki, ike_proposals=("aes256gcm16-prfsha256-x25519",)))
    with pytest.raises(ProfileError, match=r"none of the pool's ESP proposals .* Apple supports"):
        mobileconfig.render(_input(pki, esp_proposals=("aes256gcm16-modp4096",)))
    with pytest.raises(ProfileError, match="needs a device certificate"):
        sswan.render(_input(pki, credentials=None))
    # A pool's less preferred proposal is used when the first is not on the client's menu.
    script = windows.render(
        _input(pki, ike_proposals=("aes256gcm16-prfsha256-x25519", "aes256-sha256-modp2048"))
    )
    assert b"-EncryptionMethod AES256 -IntegrityCheckMethod SHA256 -DHGroup Group14" in script


def _write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if rel.startswith("private/"):
            path.chmod(0o600)


@pytest.mark.netns
@pytest.mark.strongswan
@pytest.mark.timeout(90)
def test_swanctl_profiles_load_into_a_real_charon(
    pki: dict[str, Any], lab: Lab, charons: CharonFactory
) -> None:
    host = lab.host("rw")
    plugins = (*CharonSettings().plugins[:-3], "eap-identity", "eap-tls", *CharonSettings().plugins[-3:])
    charon = charons.start(host, [], CharonSettings(plugins=plugins))
    for auth in ("certificate", "eap-tls", "eap-mschapv2"):
        files = swanctl.render(_input(pki, auth, name=f"ra-{auth}"))
        assert PASSPHRASE.reveal() not in b"".join(files.values())
        _write_tree(charon.swanctl_dir, files)
        charon.swanctl("--load-all", "--noprompt")
        conns = charon.swanctl("--list-conns").stdout
        assert f"ra-{auth}: IKEv2" in conns, conns
        assert "198.19.170.0/24" in conns
    loaded = charon.swanctl("--list-certs").stdout
    assert "alice@example.test" in loaded and "meshsec controller CA" in loaded


GATEWAY_CONF = """\
connections {
    ra {
        version = 2
        local_addrs = 198.18.170.1
        pools = ra-v4
        proposals = aes256gcm16-prfsha384-ecp384
        local {
            auth = pubkey
            certs = gw.pem
            id = gw.example.test
        }
        remote {
            @REMOTE@
        }
        children {
            ra {
                local_ts = 198.19.170.0/24
                esp_proposals = aes256gcm16-ecp384
            }
        }
    }
}
pools {
    ra-v4 {
        addrs = 198.19.171.0/28
        dns = 198.19.170.53
    }
}
@SECRETS@
"""
CERT_REMOTE = "auth = pubkey\n            cacerts = ca.pem"
EAP_REMOTE = "auth = eap-mschapv2\n            eap_id = %any"
EAP_SECRETS = (
    'secrets {\n    eap-alice {\n        id = alice@example.test\n        secret = "@SECRET@"\n    }\n}'
)
EAP_PLUGINS = ("eap-identity", "eap-mschapv2")


def _installed_plugins() -> set[str]:
    return {
        p.name.removeprefix("libstrongswan-").removesuffix(".so")
        for p in Path("/usr/lib/ipsec/plugins").glob("*.so")
    }


def _pair(
    pki: dict[str, Any], lab: Lab, charons: CharonFactory, auth: str, remote: str, secrets: str = ""
) -> tuple[Charon, Charon]:
    """A strongSwan gateway (gw) and a road warrior (rw) loaded with the generated profile."""
    gw, rw = lab.host("gw"), lab.host("rw")
    lab.link(gw, rw, "198.18.170.1/24", "198.18.170.2/24")
    gw.add_loopback_address("198.19.170.1/32")
    base = CharonSettings().plugins
    extra = EAP_PLUGINS if auth == "eap-mschapv2" else ()
    settings = CharonSettings(plugins=(*base[:-3], *extra, *base[-3:]))
    gateway = charons.start(gw, [], settings)
    conf = GATEWAY_CONF.replace("@REMOTE@", remote).replace("@SECRETS@", secrets)
    _write_tree(
        gateway.swanctl_dir,
        {
            "swanctl.conf": conf.encode(),
            "x509/gw.pem": pki["gw_cert"],
            "private/gw.pem": pki["gw_key"],
            "x509ca/ca.pem": pki["ca"].certificate_pem.encode(),
        },
    )
    gateway.swanctl("--load-all", "--noprompt")
    client = charons.start(rw, [], settings)
    _write_tree(client.swanctl_dir, swanctl.render(_input(pki, auth, name="meshsec-staff")))
    return gateway, client


@pytest.mark.netns
@pytest.mark.strongswan
@pytest.mark.timeout(90)
def test_generated_swanctl_conf_connects_to_a_strongswan_gateway(
    pki: dict[str, Any], lab: Lab, charons: CharonFactory
) -> None:
    """Checks the profile, not our gateway: a strongSwan gateway hands out the virtual IP here."""
    gateway, client = _pair(pki, lab, charons, "certificate", CERT_REMOTE)
    rw = client.host
    client.swanctl("--load-all", "--noprompt")
    client.initiate("meshsec-staff", "meshsec-staff", timeout=20)
    sa = client.list_sas_raw()[0]["meshsec-staff"]
    assert sa["state"] == "ESTABLISHED"
    vip = sa["local-vips"][0]
    assert vip.startswith("198.19.171.")
    child = next(iter(sa["child-sas"].values()))
    assert child["remote-ts"] == ["198.19.170.0/24"] and child["local-ts"] == [f"{vip}/32"]
    ping = rw.run(["ping", "-c", "2", "-W", "2", "-I", vip, "198.19.170.1"], check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    # The DNS server arrived in the CFG_REPLY (installing it needs the resolve plugin, not loaded here).
    log = client.log_text()
    assert "CPRP(ADDR DNS)" in log and "processing INTERNAL_IP4_DNS attribute" in log
    leases = gateway.swanctl("--list-pools", "--leases").stdout
    assert vip in leases and "alice@example.test" in leases


def _eap_pair(
    pki: dict[str, Any], lab: Lab, charons: CharonFactory, gateway_secret: str, client_secret: str
) -> tuple[Charon, Charon]:
    gateway, client = _pair(
        pki, lab, charons, "eap-mschapv2", EAP_REMOTE, EAP_SECRETS.replace("@SECRET@", gateway_secret)
    )
    path = client.swanctl_dir / "swanctl.conf"
    conf = path.read_text()
    assert "# secret = <your password>" in conf  # the profile never carries the password
    path.write_text(conf.replace("# secret = <your password>", f'secret = "{client_secret}"'))
    client.swanctl("--load-all", "--noprompt")
    return gateway, client


@pytest.mark.netns
@pytest.mark.strongswan
@pytest.mark.timeout(90)
def test_generated_eap_mschapv2_profile_connects(
    pki: dict[str, Any], lab: Lab, charons: CharonFactory
) -> None:
    if "eap-mschapv2" not in _installed_plugins():
        pytest.skip("strongSwan's eap-mschapv2 plugin (Debian libcharon-extauth-plugins) is not installed")
    gateway, client = _eap_pair(pki, lab, charons, "alice-password", "alice-password")
    client.initiate("meshsec-staff", "meshsec-staff", timeout=20)
    sa = client.list_sas_raw()[0]["meshsec-staff"]
    assert sa["state"] == "ESTABLISHED" and sa["local-vips"][0].startswith("198.19.171.")
    assert "EAP method EAP_MSCHAPV2 succeeded, MSK established" in client.log_text()
    assert "assigning virtual IP" in gateway.log_text()


@pytest.mark.netns
@pytest.mark.strongswan
@pytest.mark.timeout(90)
def test_generated_eap_mschapv2_profile_with_a_wrong_password_fails_cleanly(
    pki: dict[str, Any], lab: Lab, charons: CharonFactory
) -> None:
    if "eap-mschapv2" not in _installed_plugins():
        pytest.skip("strongSwan's eap-mschapv2 plugin (Debian libcharon-extauth-plugins) is not installed")
    gateway, client = _eap_pair(pki, lab, charons, "alice-password", "not-alices-password")
    with pytest.raises(SwanctlError):
        client.initiate("meshsec-staff", "meshsec-staff", timeout=10)
    assert client.list_sas_raw() == []
    assert "EAP-MS-CHAPv2 verification failed" in gateway.log_text()
    assert "AUTH_FAILED" in client.log_text()
    leases = gateway.swanctl("--list-pools", "--leases").stdout
    assert "198.19.171." not in leases.split("\n", 1)[1], leases
