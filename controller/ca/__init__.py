"""The controller CA (node, server and admin certificates), admin certificate registrations and
bootstrap tokens for enrollment."""

from meshsec.controller.ca.admins import AdminCertificates, AdminRecord, certificate_serial, serial_text
from meshsec.controller.ca.authority import (
    CertificateAuthority,
    CsrError,
    IssuedCertificate,
    ServerCredentials,
    load_csr,
)
from meshsec.controller.ca.tokens import BootstrapTokens, TokenError, TokenRecord

__all__ = [
    "AdminCertificates",
    "AdminRecord",
    "BootstrapTokens",
    "CertificateAuthority",
    "CsrError",
    "IssuedCertificate",
    "ServerCredentials",
    "TokenError",
    "TokenRecord",
    "certificate_serial",
    "load_csr",
    "serial_text",
]
