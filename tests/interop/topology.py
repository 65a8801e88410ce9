"""Two hosts on one veth link: meshsec ("ms") and strongSwan ("sw"), each with an inner /32 on lo
(libipsec only installs a CHILD_SA whose local selector holds an address of its host)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meshsec.common.secrets import Secret
from tests.harness.netns import Host, Lab
from tests.harness.strongswan import Charon, CharonFactory, CharonSettings, Child, Connection, Psk
from tests.interop.meshsec_agent import MeshsecAgent

MS_UNDER, SW_UNDER = "198.18.40.1", "198.18.40.2"
MS_INNER, SW_INNER = "198.19.40.1", "198.19.40.2"
MS_ID, SW_ID = "meshsec.test", "strongswan.test"
PSK = "interop-psk-0123456789"

SUITES = {
    # name: (IKE proposal, ESP proposal, expected IKE algorithms, expected CHILD algorithms)
    "gcm-x25519": (
        "aes256gcm16-prfsha256-x25519",
        "aes256gcm16",
        {
            "encr_alg": "AES_GCM_16",
            "encr_keysize": 256,
            "prf_alg": "PRF_HMAC_SHA2_256",
            "dh_group": "CURVE_25519",
        },
        {"encr_alg": "AES_GCM_16", "encr_keysize": 256},
    ),
    # RFC 7634: no Key Length attribute, so neither side reports a key size.
    "chapoly-x25519": (
        "chacha20poly1305-prfsha256-x25519",
        "chacha20poly1305",
        {"encr_alg": "CHACHA20_POLY1305", "prf_alg": "PRF_HMAC_SHA2_256", "dh_group": "CURVE_25519"},
        {"encr_alg": "CHACHA20_POLY1305"},
    ),
    "cbc-ecp256": (
        "aes128-sha256-ecp256",
        "aes128-sha256",
        {
            "encr_alg": "AES_CBC",
            "encr_keysize": 128,
            "integ_alg": "HMAC_SHA2_256_128",
            "prf_alg": "PRF_HMAC_SHA2_256",
            "dh_group": "ECP_256",
        },
        {"encr_alg": "AES_CBC", "encr_keysize": 128, "integ_alg": "HMAC_SHA2_256_128"},
    ),
}


@dataclass
class Pair:
    lab: Lab
    ms: Host
    sw: Host


def build(lab: Lab) -> Pair:
    ms, sw = lab.host("ms"), lab.host("sw")
    lab.link(ms, sw, f"{MS_UNDER}/24", f"{SW_UNDER}/24")
    ms.add_loopback_address(f"{MS_INNER}/32")
    sw.add_loopback_address(f"{SW_INNER}/32")
    return Pair(lab, ms, sw)


def swan_connection(ike_proposal: str, esp_proposal: str, psk: str = PSK, name: str = "peer") -> Connection:
    return Connection(
        name=name,
        local_addrs=(SW_UNDER,),
        remote_addrs=(MS_UNDER,),
        local_id=SW_ID,
        remote_id=MS_ID,
        auth=Psk(Secret(psk)),
        children=(Child("net", local_ts=(f"{SW_INNER}/32",), remote_ts=(f"{MS_INNER}/32",),
                        esp_proposals=(esp_proposal,)),),
        proposals=(ike_proposal,),
    )  # fmt: skip


def swan_settings() -> CharonSettings:
    # Fail fast in the negative tests instead of retransmitting for minutes.
    return CharonSettings(retransmit_tries=2, retransmit_timeout=1.0, retransmit_base=1.4)


def meshsec_config(
    ike_proposal: str,
    esp_proposal: str,
    *,
    start_action: str = "wait",
    psk: str = PSK,
    dataplane: str = "none",
    name: str = "peer",
) -> dict[str, Any]:
    return {
        "agent": {"bind": [MS_UNDER], "dataplane": dataplane},
        "connections": {
            name: {
                "local_addrs": [MS_UNDER],
                "remote_addrs": [SW_UNDER],
                "local": {"id": MS_ID, "auth": "psk"},
                "remote": {"id": SW_ID, "auth": "psk"},
                "psk": psk,
                "proposals": [ike_proposal],
                "start_action": start_action,
                "retransmit": {"timeout": 1, "base": 1.4, "tries": 2},
                "children": {
                    "net": {
                        "local_ts": [f"{MS_INNER}/32"],
                        "remote_ts": [f"{SW_INNER}/32"],
                        "esp_proposals": [esp_proposal],
                        "mode": "tunnel",
                    }
                },
            }
        },
    }


def start_both(
    charons: CharonFactory, pair: Pair, conn: Connection, config: dict[str, Any], role: str
) -> tuple[Charon, MeshsecAgent]:
    """strongSwan and meshsec up, the responder first; meshsec in `role`. Returns once meshsec
    has the IKE SA established."""
    if role == "initiator":
        sw = charons.start(pair.sw, [conn], swan_settings())
        agent = MeshsecAgent(pair.ms, config).start()
    else:
        agent = MeshsecAgent(pair.ms, config).start()
        sw = charons.start(pair.sw, [conn], swan_settings())
        sw.initiate("peer", "net", timeout=10)
    agent.wait_for(lambda s: agent.established("peer"))
    return sw, agent
