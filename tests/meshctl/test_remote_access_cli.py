"""meshctl's remote-access commands against a real meshsec-controller: get and describe pools,
users and leases, set-password from a file (never echoed), profiles rendered per device."""

from __future__ import annotations

import plistlib
import stat
from pathlib import Path

import pytest

from meshsec.meshctl.cli import main

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "remote-access.yaml"
PASSWORD = "alice-long-password"


def meshctl(socket: Path, *args: str) -> int:
    return main(["--controller", str(socket), *args])


def test_remote_access_commands(
    controller: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert meshctl(controller, "apply", "-f", str(EXAMPLE)) == 0
    applied = capsys.readouterr().out.splitlines()
    assert "remoteaccesspool/staff created" in applied and "remoteaccessuser/bob created" in applied

    assert meshctl(controller, "get", "pools", "-o", "wide") == 0
    pools = capsys.readouterr().out
    assert (
        "198.19.60.0/24" in pools and "split:198.19.50.0/24" in pools and "certificate,eap-mschapv2" in pools
    )
    assert meshctl(controller, "get", "users") == 0
    users = capsys.readouterr().out
    assert "bob@example.test" in users and "laptop(linux),tablet(android)" in users

    secret = tmp_path / "alice.txt"
    secret.write_text(PASSWORD + "\n")
    assert meshctl(controller, "remote-access", "set-password", "alice", "--password-file", str(secret)) == 0
    out, err = capsys.readouterr()
    assert (
        out == "password of remoteaccessuser/alice set (stored as its NT hash)\n"
        and PASSWORD not in out + err
    )
    assert meshctl(controller, "remote-access", "set-password", "bob", "--password-file", str(secret)) != 0
    assert "only eap-mschapv2 users have a password" in capsys.readouterr().err

    assert meshctl(controller, "describe", "user", "bob") == 0
    described = capsys.readouterr().out
    assert "Kind:         RemoteAccessUser" in described and "Leases:  <none>" in described
    assert "Tunnels" not in described
    assert meshctl(controller, "get", "leases") == 0
    assert "No leases found." in capsys.readouterr().err

    # Linux (swanctl) from bob's laptop's platform; the key is in the tree only, 0600.
    tree = tmp_path / "bob-swanctl"
    assert meshctl(controller, "remote-access", "profile", "bob", "laptop", "--out", str(tree)) == 0
    capsys.readouterr()
    conf = (tree / "swanctl.conf").read_text()
    assert "remote_addrs = 198.18.50.1" in conf and "id = vpn.hq.example.test" in conf
    assert "remote_ts = 198.19.50.0/24" in conf and "id = bob@example.test" in conf
    assert stat.S_IMODE((tree / "private" / "device.pem").stat().st_mode) == 0o600
    assert meshctl(controller, "events", "--kind", "RemoteAccessUser") == 0
    assert "DeviceCertificateIssued" in capsys.readouterr().out

    # Android needs a PKCS#12 passphrase; without one meshctl refuses before asking for a certificate.
    assert (
        meshctl(controller, "remote-access", "profile", "bob", "tablet", "--out", str(tmp_path / "t.sswan"))
        == 2
    )
    assert "--passphrase-file" in capsys.readouterr().err
    monkeypatch.setenv("P12_PASS", "tablet-passphrase")
    assert (
        meshctl(
            controller,
            "remote-access",
            "profile",
            "bob",
            "tablet",
            "--out",
            str(tmp_path / "t.sswan"),
            "--passphrase-env",
            "P12_PASS",
        )
        == 0
    )
    assert b"tablet-passphrase" not in (tmp_path / "t.sswan").read_bytes()

    # Apple, EAP-MSCHAPv2: no certificate, the user name in the profile, the CA to check the gateway.
    phone = tmp_path / "alice.mobileconfig"
    assert meshctl(controller, "remote-access", "profile", "alice", "phone", "--out", str(phone)) == 0
    profile = plistlib.loads(phone.read_bytes())
    vpn = next(p for p in profile["PayloadContent"] if p["PayloadType"] == "com.apple.vpn.managed")
    assert vpn["IKEv2"]["AuthName"] == "alice@example.test" and vpn["IKEv2"]["RemoteAddress"] == "198.18.50.1"
    assert PASSWORD.encode() not in phone.read_bytes()
    assert meshctl(controller, "remote-access", "profile", "alice", "laptop", "--out", str(phone)) != 0
    assert "lists no device 'laptop'" in capsys.readouterr().err
