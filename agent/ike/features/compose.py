"""Which features make up each composed exchange, in message order. A new feature of one of
these exchanges is a Feature subclass in this folder plus one entry here."""

from __future__ import annotations

from meshsec.agent.ike.feature import Feature
from meshsec.agent.ike.features.certificates import AuthCertificates, InitCertificates
from meshsec.agent.ike.features.config_payload import ConfigPayload
from meshsec.agent.ike.features.cookie import Cookie
from meshsec.agent.ike.features.fragmentation import Fragmentation
from meshsec.agent.ike.features.initial_contact import InitialContact
from meshsec.agent.ike.features.intermediate import IntermediateExchange
from meshsec.agent.ike.features.key_exchange import InitialKeyExchange
from meshsec.agent.ike.features.mobike import Mobike
from meshsec.agent.ike.features.nat_detection import NatDetection
from meshsec.agent.ike.features.signature_hashes import SignatureHashes


def ike_sa_init_features() -> list[Feature]:
    # COOKIE must be the first payload (RFC 7296 2.6); the key exchange sets the keys and the
    # SPIs the NAT detection hashes of the answer are checked against.
    return [
        Cookie(),
        InitialKeyExchange(),
        IntermediateExchange(),
        NatDetection(),
        InitCertificates(),
        SignatureHashes(),
        Fragmentation(),
    ]


def ike_auth_features() -> list[Feature]:
    """Run by ike_auth.py between the identities and AUTH; they see the peer's message only
    once its AUTH verified. The Configuration Payload goes last: it takes addresses from a
    pool, so nothing after it may still refuse the exchange."""
    return [AuthCertificates(), InitialContact(), Mobike(), ConfigPayload()]
