"""strongSwan for Android profile (.sswan): JSON as the app's "VPN profile import" documents it
(keys uuid, name, type, remote{addr,id,cert}, local{id,eap_id,p12}, ike-proposal, esp-proposal,
split-tunneling). The PKCS#12 is embedded; the app asks for its password on import."""

from __future__ import annotations

import base64
import json
from typing import Any

from meshsec.meshctl.profiles.model import ProfileInput

TYPES = {"certificate": "ikev2-cert", "eap-tls": "ikev2-eap-tls", "eap-mschapv2": "ikev2-eap"}


def render(p: ProfileInput) -> bytes:
    remote: dict[str, Any] = {
        "addr": p.server,
        "id": p.server_id,
        "cert": base64.b64encode(p.ca_der()).decode(),
        "certreq": True,
        "revocation": {"strict": False},
    }
    local: dict[str, Any] = {}
    if p.needs_certificate():
        local["id"] = p.identity
        data = p.require_credentials().pkcs12(p.identity, p.require_passphrase(), p.ca)
        local["p12"] = base64.b64encode(data).decode()
    else:
        local["eap_id"] = p.identity
    profile: dict[str, Any] = {
        "uuid": p.uuid().lower(),
        "name": p.name,
        "type": TYPES[p.auth],
        "remote": remote,
        "local": local,
        # The app takes one proposal each; the pool's first is its preferred one.
        "ike-proposal": p.ike_proposals[0],
        "esp-proposal": p.esp_proposals[0],
    }
    if not p.full_tunnel:
        profile["split-tunneling"] = {"subnets": " ".join(p.routes)}
    return (json.dumps(profile, indent=2, sort_keys=True) + "\n").encode()
