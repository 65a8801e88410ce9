"""Certificates (RFC 7296 3.6, 3.7): CERTREQ in the IKE_SA_INIT answer and in IKE_AUTH, our
CERT chain in IKE_AUTH. The peer's chain is validated with its AUTH payload (authenticate.py),
since a certificate means nothing until the signature over the exchange checks out."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.serialization import Encoding

from meshsec.agent.ike.certs import CERT_ENCODING_X509_SIGNATURE, Credentials
from meshsec.agent.ike.config import IkeConfig
from meshsec.agent.ike.feature import Feature
from meshsec.agent.ike.payloads import CertPayload, CertReqPayload, Payload

if TYPE_CHECKING:
    from meshsec.agent.ike.sa import IkeSa


def cert_payloads(creds: Credentials) -> list[Payload]:
    return [CertPayload(CERT_ENCODING_X509_SIGNATURE, c.public_bytes(Encoding.DER)) for c in creds.chain]


def certreq_payloads(cfg: IkeConfig) -> list[Payload]:
    if cfg.credentials is None:
        return []
    return [CertReqPayload(CERT_ENCODING_X509_SIGNATURE, cfg.credentials.certreq_hashes())]


class InitCertificates(Feature):
    """IKE_SA_INIT: the responder names the CAs it trusts."""

    def build_response(self, sa: IkeSa, out: list[Payload]) -> None:
        out += certreq_payloads(sa.config)


class AuthCertificates(Feature):
    """IKE_AUTH: our chain (and, from the initiator, the CAs it trusts)."""

    def build_request(self, sa: IkeSa, out: list[Payload]) -> None:
        # An EAP road warrior proves itself with EAP; its credentials only hold the CAs.
        if sa.config.credentials is not None and sa.config.eap_client is None:
            out += cert_payloads(sa.config.credentials)
        out += certreq_payloads(sa.config)

    def build_response(self, sa: IkeSa, out: list[Payload]) -> None:
        # After EAP our chain went out with the first answer (eap_auth.start_eap).
        if sa.config.credentials is not None and sa.eap is None:
            out += cert_payloads(sa.config.credentials)
