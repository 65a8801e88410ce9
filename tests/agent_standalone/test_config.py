"""The standalone YAML: the documented example parses to what the docs say, defaults apply,
and every kind of mistake is refused with the path of the field at fault."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshsec.agent.ike.constants import ProtocolId
from meshsec.agent.ike.identity import Identity
from meshsec.agent.ike.ts import Ts
from meshsec.agent.standalone.config import ConfigError, load_config, parse_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "agent-standalone.md"


def documented_example() -> dict[str, Any]:
    match = re.search(r"```yaml\n(.*?)```", DOC.read_text(), re.S)
    assert match is not None, "docs/agent-standalone.md lost its YAML example"
    data = yaml.safe_load(match.group(1))
    assert isinstance(data, dict)
    return data


def minimal() -> dict[str, Any]:
    return {
        "connections": {
            "peer": {
                "remote_addrs": ["198.18.1.2"],
                "local": {"id": "a.test"},
                "psk": "secret",
                "children": {"net": {"local_ts": "198.19.1.0/24", "remote_ts": ["198.19.2.0/24"]}},
            }
        }
    }


def test_documented_example_parses_as_documented() -> None:
    cfg = parse_config(documented_example())
    assert cfg.agent.bind == ("198.18.1.1",)
    assert cfg.agent.dataplane == "auto"
    assert cfg.agent.cookie_threshold == 10 and cfg.agent.block_threshold == 1000
    assert cfg.agent.cookie_threshold_per_address == 3 and cfg.agent.block_threshold_per_address == 5
    (conn,) = cfg.connections
    ike = conn.ike
    assert conn.name == "site-b" and conn.start_action == "initiate"
    assert conn.local_addrs == ("198.18.1.1",) and conn.remote_addrs == ("198.18.1.2",)
    assert ike.psk.reveal() == b"meshsec"
    assert ike.local_identity == Identity.parse("site-a.example")
    assert ike.remote_identity == Identity.parse("site-b.example")
    assert ike.proposals == "aes256gcm16-prfsha256-x25519,aes128-sha256-ecp256"
    assert ike.natt_keepalive == 20.0 and ike.retransmit.timeout == 4.0 and ike.retransmit.tries == 5
    (child,) = ike.children
    assert child.name == "net" and child.mode == "tunnel" and child.protocol == ProtocolId.ESP
    assert child.local_ts == (Ts.from_cidr("198.19.1.0/24"),)
    assert child.remote_ts == (Ts.from_cidr("198.19.2.0/24"),)
    assert (child.rekey_time, child.life_time) == (3600, 3960)
    assert child.proposals == "aes256gcm16,aes128-sha256"


def test_defaults() -> None:
    cfg = parse_config(minimal())
    assert cfg.agent.bind == ("0.0.0.0", "::")
    assert cfg.agent.dataplane == "auto"
    (conn,) = cfg.connections
    assert conn.start_action == "wait" and conn.remote_port == 500
    assert conn.ike.remote_id == "198.18.1.2"  # defaults to the first remote address
    assert conn.ike.psk.reveal() == b"secret"
    assert conn.ike.children[0].life_time == 3960


def test_responder_lookup_by_addresses() -> None:
    data = minimal()
    data["connections"]["any"] = copy.deepcopy(data["connections"]["peer"])
    del data["connections"]["any"]["remote_addrs"]
    data["connections"]["peer"]["local_addrs"] = ["198.18.1.1"]
    cfg = parse_config(data)
    assert [c.name for c in cfg.lookup("198.18.1.1", "198.18.1.2")] == ["peer", "any"]
    assert [c.name for c in cfg.lookup("198.18.1.9", "198.18.1.2")] == ["any"]
    assert [c.name for c in cfg.lookup("198.18.1.1", "198.18.1.7")] == ["any"]
    assert cfg.connections[1].ike.remote_id == "%any"


def _set(data: dict[str, Any], path: str, value: object) -> None:
    *parents, leaf = path.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    if value is _DELETE:
        node.pop(leaf, None)
    else:
        node[leaf] = value


_DELETE = object()
P = "connections.peer"
C = f"{P}.children.net"

ERRORS = [
    ("agent.dataplane", "xfrm", "agent.dataplane: must be one of auto, userspace, kernel, none, not 'xfrm'"),
    ("agent.bind", ["198.18.1.300"], "agent.bind[0]: '198.18.1.300' is not an IP address"),
    ("agent.ike_port", 70000, "agent.ike_port: 70000 is not a UDP port"),
    ("agent.responder.cookie_threshold", "ten", "agent.responder.cookie_threshold: must be int, not 'ten'"),
    ("agent.responder.block_threshold_per_address", "5x",
     "agent.responder.block_threshold_per_address: must be int, not '5x'"),
    ("agent.tun_name", "a-very-long-interface-name", "agent.tun_name: must be 1-15 characters"),
    ("agent.colour", "blue", "agent.colour: unknown setting"),
    (f"{P}.remote_addrs", ["not-an-ip"], f"{P}.remote_addrs[0]: 'not-an-ip' is not an IP address"),
    (f"{P}.local.auth", "pubkey", f"{P}.remote.auth: must equal local auth 'pubkey' (no mixed auth)"),
    (f"{P}.remote.auth", "eap", f"{P}.remote.auth: must be psk, pubkey, eap-mschapv2 or eap-tls, not 'eap'"),
    (f"{P}.local.id", "%any", f"{P}.local.id: %any is only allowed for the remote identity"),
    (f"{P}.local.id", "@#zz", f"{P}.local.id: KEY_ID identity '@#zz' is not hex"),
    (f"{P}.psk", _DELETE, f"{P}.psk: give exactly one of psk or psk_file for auth psk"),
    (f"{P}.psk", "0xnothex", f"{P}.psk: 0x value is not hex"),
    (f"{P}.psk", "", f"{P}.psk: must not be empty"),
    (f"{P}.psk_file", "missing.psk", f"{P}.psk: give exactly one of psk or psk_file"),
    (f"{P}.proposals", ["aes256gcm16-prfsha256-x448"], f"{P}.proposals[0]: unknown algorithm 'x448'"),
    (f"{P}.proposals", ["aes128-sha256"], f"{P}.proposals[0]: IKE proposal 'aes128-sha256' needs"),
    (f"{P}.start_action", "start", f"{P}.start_action: must be one of initiate, wait, not 'start'"),
    (f"{P}.keepalive", "soon", f"{P}.keepalive: must be a duration like 30, '20s', '1h', not 'soon'"),
    (f"{P}.retransmit.tries", -1, f"{P}.retransmit: retransmit: invalid"),
    (f"{P}.children", {}, f"{P}.children: needs at least one child"),
    (f"{C}.local_ts", ["198.19.1.0/33"], f"{C}.local_ts[0]: '198.19.1.0/33' is not an IP prefix"),
    (f"{C}.remote_ts", _DELETE, f"{C}.remote_ts: is required (one or more IP prefixes)"),
    (f"{C}.mode", "beet", f"{C}.mode: must be one of tunnel, transport, not 'beet'"),
    (f"{C}.esp_proposals", ["aes256gcm16-prfsha256"], f"{C}.esp_proposals[0]: ESP proposal"),
    (f"{C}.ah_proposals", ["sha256"], f"{C}: give esp_proposals or ah_proposals, not both"),
    (f"{C}.life_time", "10m", f"{C}: child 'net': life_time must be >= rekey_time"),
    (f"{C}.rekey", "1h", f"{C}.rekey: unknown setting"),
]


@pytest.mark.parametrize(
    ("path", "value", "message"), ERRORS, ids=[e[0] + "=" + repr(e[1])[:20] for e in ERRORS]
)
def test_errors_name_the_field(path: str, value: object, message: str) -> None:
    data = minimal()
    if path.endswith("ah_proposals"):
        _set(data, f"{C}.esp_proposals", ["aes256gcm16"])
    _set(data, path, value)
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert str(info.value).startswith(message), str(info.value)


def test_initiate_needs_a_remote_address() -> None:
    data = minimal()
    del data["connections"]["peer"]["remote_addrs"]
    data["connections"]["peer"]["start_action"] = "initiate"
    with pytest.raises(ConfigError, match=r"^connections\.peer\.remote_addrs: start_action initiate needs"):
        parse_config(data)


def test_not_a_mapping_and_no_connections() -> None:
    with pytest.raises(ConfigError, match=r"^must be a mapping, not a list"):
        parse_config([1, 2])
    with pytest.raises(ConfigError, match=r"^connections: needs at least one connection"):
        parse_config({"agent": {}})


def test_psk_file_relative_to_config_and_hex_base64(tmp_path: Path) -> None:
    (tmp_path / "peer.psk").write_text("0sbWVzaHNlYw==\n")
    data = minimal()
    del data["connections"]["peer"]["psk"]
    data["connections"]["peer"]["psk_file"] = "peer.psk"
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_config(path).connections[0].ike.psk.reveal() == b"meshsec"
    (tmp_path / "peer.psk").unlink()
    with pytest.raises(ConfigError, match=r"^connections\.peer\.psk_file: cannot read .*peer\.psk"):
        load_config(path)


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("connections:\n  peer: {\n    psk: [\n")
    with pytest.raises(ConfigError, match=r"is not valid YAML at line \d+"):
        load_config(path)


def test_secrets_stay_out_of_reprs() -> None:
    cfg = parse_config(minimal())
    assert "secret" not in repr(cfg)
