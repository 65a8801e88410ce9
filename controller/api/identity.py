"""Who is calling: the identity convention of docs/api.md ("Identities") read from the TLS session."""

from __future__ import annotations

import datetime
import functools
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography import x509

from meshsec.controller.ca import certificate_serial

AnyContext = grpc.aio.ServicerContext[Any, Any]


@dataclass(frozen=True, slots=True)
class Caller:
    kind: str  # "node" or "admin"
    name: str
    certificate_pem: bytes


def caller_of(context: AnyContext) -> Caller | None:
    """URI SAN meshsec://<kind>/<name> agreeing with the CN, else None (no identity)."""
    auth = context.auth_context()
    uris = [u.decode() for u in auth.get("peer_uri", [])]
    common_names = [c.decode() for c in auth.get("x509_common_name", [])]
    pem = b"".join(auth.get("x509_pem_cert", []))
    for uri in uris:
        if uri.startswith("meshsec://"):
            kind, _, name = uri.removeprefix("meshsec://").partition("/")
            if kind in ("node", "admin") and name and common_names == [name]:
                return Caller(kind, name, pem)
    return None


@functools.lru_cache(maxsize=1 << 14)
def issued_at(certificate_pem: bytes) -> datetime.datetime | None:
    """The certificate's notBefore (None when the TLS layer did not hand us the certificate).

    Cached: every RPC of a node presents the same certificate until it renews."""
    if not certificate_pem:
        return None
    return x509.load_pem_x509_certificate(certificate_pem).not_valid_before_utc


@functools.lru_cache(maxsize=1 << 10)
def serial_of(certificate_pem: bytes) -> str | None:
    """The certificate's serial as the admin registrations write it (None without a certificate)."""
    if not certificate_pem:
        return None
    return certificate_serial(certificate_pem)
