"""How the agent spells ChaCha20-Poly1305 (RFC 7634) in status, logs and the facts it reports: the
proposal token, strongSwan's name, and only where the chosen data plane can run it."""

from __future__ import annotations

from meshsec.agent.adapters.names import algorithm_text
from meshsec.agent.dataplane.api import Capabilities
from meshsec.agent.ike.constants import DhId, EncrId, PrfId
from meshsec.agent.ike.events import Algorithms
from meshsec.agent.node.facts import encryption_names
from meshsec.agent.node.report import encryption_name

CHACHA_IKE = Algorithms(EncrId.CHACHA20_POLY1305, None, None, PrfId.HMAC_SHA2_256, DhId.CURVE25519)


def test_status_and_log_names() -> None:
    assert encryption_name(CHACHA_IKE) == "chacha20poly1305"  # as proposals spell it
    # As `swanctl --list-sas` spells it: no key size, since the transform carries none.
    assert algorithm_text(CHACHA_IKE) == "CHACHA20_POLY1305/PRF_HMAC_SHA2_256/CURVE_25519"


def _caps(backend: str, gcm: bool, chacha: bool) -> Capabilities:
    return Capabilities(backend=backend, esp=True, ah=True, aead_gcm=gcm, udp_encapsulation=True,
                        aead_chacha20poly1305=chacha)


def test_facts_name_only_the_aeads_the_data_plane_runs() -> None:
    assert "chacha20poly1305" in encryption_names(_caps("userspace", True, True))
    without = encryption_names(_caps("kernel", True, False))
    assert "chacha20poly1305" not in without and "aes256gcm16" in without and "aes256" in without
    assert encryption_names(_caps("kernel", False, False)) == ["aes128", "aes256"]
