"""Standalone remote-access configuration: pools, EAP secrets (kept as NT hashes) and %any
connections parse as documented, mistakes are refused with their field path, and EAP
connections become engine configs whose users are the secrets."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshsec.agent.gateway.pool import PoolSet
from meshsec.agent.standalone.config import ConfigError, load_config, parse_config
from meshsec.agent.standalone.remote_access import engine_config
from meshsec.common.md4 import nt_password_hash
from tests.ike.pki import Authority, key_pem, pem

DOC = Path(__file__).resolve().parents[2] / "docs" / "agent-standalone.md"


@pytest.fixture
def files(tmp_path: Path) -> Path:
    ca = Authority.root("ra test CA")
    cert, key = ca.issue("vpn.hq.example.test")
    (tmp_path / "gw.pem").write_bytes(pem(cert))
    (tmp_path / "gw.key").write_bytes(key_pem(key).reveal())
    (tmp_path / "ca.pem").write_bytes(pem(ca.cert))
    (tmp_path / "bob.txt").write_text("bob-password-file\n")
    return tmp_path


def documented() -> dict[str, Any]:
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)
    found = [yaml.safe_load(b) for b in blocks if "pools:" in b]
    assert found, "docs/agent-standalone.md lost its remote-access example"
    data = found[0]
    assert isinstance(data, dict)
    return data


def test_documented_example_parses(files: Path) -> None:
    cfg = parse_config(documented(), files)
    assert cfg.connections == ()
    (conn,) = cfg.remote_access
    assert conn.name == "rw" and conn.pools == ("staff",) and conn.remote_auth == "eap-mschapv2"
    assert conn.children == (("rw", ("198.19.50.0/24",), ("aes256gcm16-ecp384", "aes256gcm16")),)
    pool = cfg.pools["staff"]
    assert [str(a) for a in pool.addrs] == ["198.19.60.0/24"] and pool.dns == ("198.19.50.53",)
    assert pool.subnets == ("198.19.50.0/24",)
    alice = cfg.eap_users["alice@example.test"]
    assert alice.nt_hash.reveal() == nt_password_hash("alice-password")
    assert cfg.eap_users["bob@example.test"].nt_hash.reveal() == nt_password_hash("bob-password-file")
    carol = cfg.eap_users["carol@example.test"]
    assert carol.nt_hash.reveal() == bytes.fromhex("44ebba8d5312b8d611474411f56989ae")
    assert "alice-password" not in repr(cfg)


def _broken(data: dict[str, Any], files: Path) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, files)
    return str(info.value)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d["pools"]["staff"].update(addrs=["198.19.60.0/24", "198.19.61.0/24"]),
         "pools.staff.addrs: at most one range per address family"),
        (lambda d: d["pools"]["staff"].update(addrs="198.18.0.0/15"),
         "pools.staff.addrs[0]: 198.18.0.0/15 holds more than 2^16 addresses"),
        (lambda d: d["pools"].update(other={"addrs": "198.19.60.128/25"}),
         "pools.other.addrs: 198.19.60.128/25 overlaps pool staff's 198.19.60.0/24"),
        (lambda d: d["secrets"]["eap-alice"].update(nt_hash="0x00"),
         "secrets.eap-alice: needs exactly one of secret, secret_file, nt_hash"),
        (lambda d: d["secrets"]["eap-alice"].update(secret="short"),
         "secrets.eap-alice: the password must be 8 to 256 characters (got 5)"),
        (lambda d: d["secrets"].update({"psk-x": {"id": "x"}}),
         "secrets.psk-x: only eap-<name> secrets are supported here"),
        (lambda d: d["connections"]["rw"].update(pools=["nope"]),
         "connections.rw.pools[0]: no pool 'nope' in the pools section"),
        (lambda d: d["connections"]["rw"].update(remote_addrs=["198.18.1.2"]),
         "connections.rw.remote_addrs: a remote-access connection takes clients from anywhere"),
        (lambda d: d["connections"]["rw"]["remote"].update(id="alice@example.test"),
         "connections.rw.remote.id: must be %any"),
        (lambda d: d["connections"]["rw"]["local"].update(auth="psk"),
         "connections.rw.local.auth: the gateway authenticates with its certificate (pubkey)"),
        (lambda d: d["connections"]["rw"]["children"]["rw"].update(remote_ts="198.19.0.0/16"),
         "connections.rw.children.rw.remote_ts: is the client's own address (dynamic)"),
        (lambda d: d["connections"]["rw"]["remote"].update(auth="eap-md5"),
         "connections.rw.remote.auth: must be one of pubkey, eap-mschapv2, eap-tls"),
    ],
)  # fmt: skip
def test_mistakes_are_refused_by_path(files: Path, change: Any, expected: str) -> None:
    data = documented()
    change(data)
    message = _broken(data, files)
    assert message.startswith(expected), message
    assert "alice-password" not in message


def test_eap_remote_access_is_served_with_the_secrets_as_its_users(files: Path) -> None:
    path = files / "agent.yaml"
    path.write_text(yaml.safe_dump(documented()))
    config = load_config(path)
    agent = [sys.executable, "-m", "meshsec.agent.cli", "--config", str(path)]
    check = subprocess.run([*agent, "--check"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and check.stdout.endswith("OK (1 connection(s))\n"), check.stdout
    (conn,) = config.remote_access
    ike = engine_config(conn, PoolSet([]), config.eap_users)
    assert ike.eap is not None and ike.eap.methods == ("mschapv2",) and ike.address_pool is not None
    alice = ike.eap.users(b"Alice@Example.test")
    assert alice is not None and alice.nt_hash is not None
    assert alice.nt_hash.reveal() == nt_password_hash("alice-password")
    pubkey = replace(conn, remote_auth="pubkey")
    assert engine_config(pubkey, PoolSet([]), config.eap_users).eap is None


def test_certificate_remote_access_is_served(files: Path) -> None:
    data = documented()
    data["connections"]["rw"]["remote"]["auth"] = "pubkey"
    path = files / "agent.yaml"
    path.write_text(yaml.safe_dump(data))
    agent = [sys.executable, "-m", "meshsec.agent.cli", "--config", str(path)]
    check = subprocess.run([*agent, "--check"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and check.stdout.endswith("OK (1 connection(s))\n"), check.stdout


def _eap_gateway_example() -> dict[str, Any]:
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)
    found = [yaml.safe_load(b) for b in blocks if "auth: eap-mschapv2" in b and "pools:" not in b]
    assert found, "docs/agent-standalone.md lost its EAP gateway example"
    data = found[0]
    assert isinstance(data, dict)
    return data


def test_documented_eap_gateway_connection_takes_its_users_from_secrets(files: Path) -> None:
    data = _eap_gateway_example()
    data["agent"] = {"bind": ["198.18.40.1"]}
    cfg = parse_config(data, files)
    assert cfg.remote_access == ()
    (conn,) = cfg.connections
    eap = conn.ike.eap
    assert eap is not None and eap.methods == ("mschapv2",) and conn.ike.credentials is not None
    carol = eap.users(b"CAROL")  # EAP identities match without regard to case, like the secrets' ids
    assert carol is not None and carol.nt_hash is not None
    assert carol.nt_hash.reveal() == nt_password_hash("correct horse battery") and not carol.tls
    assert eap.users(b"mallory") is None
    assert "correct horse" not in repr(cfg)
    data["connections"]["laptop"]["remote"]["auth"] = "eap-tls"
    tls = parse_config(data, files).connections[0].ike.eap
    assert tls is not None and tls.methods == ("tls",)
    user = tls.users(b"anyone.example")
    assert user is not None and user.tls and user.nt_hash is None
    # We sign; EAP from our side is not a thing a gateway does.
    data["connections"]["laptop"]["local"]["auth"] = "psk"
    with pytest.raises(ConfigError, match=r"laptop\.local\.auth: with EAP from the remote"):
        parse_config(data, files)
