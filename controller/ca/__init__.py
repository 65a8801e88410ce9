"""The controller CA (node and server certificates) and bootstrap tokens for enrollment."""

from meshsec.controller.ca.authority import (
    CertificateAuthority,
    CsrError,
    IssuedCertificate,
    ServerCredentials,
    load_csr,
)
from meshsec.controller.ca.tokens import BootstrapTokens, TokenError, TokenRecord

__all__ = [
    "BootstrapTokens",
    "CertificateAuthority",
    "CsrError",
    "IssuedCertificate",
    "ServerCredentials",
    "TokenError",
    "TokenRecord",
    "load_csr",
]
