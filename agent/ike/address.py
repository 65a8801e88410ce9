"""Transport addresses as the engine sees them; the adapter owns the sockets."""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass


@functools.lru_cache(maxsize=1024)
def packed_host(host: str) -> bytes:
    """The host's IP address in network byte order; ValueError if it is not one.

    Cached because each IKE_SA_INIT hashes both ends' addresses for NAT detection (RFC 7296
    2.23): parsing the text with `ipaddress` every time was a tenth of a responder's
    IKE_SA_INIT CPU. An engine meets few distinct hosts (its own addresses, its peers'); the
    bound keeps spoofed sources from growing the cache."""
    return ipaddress.ip_address(host).packed


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    @property
    def packed_host(self) -> bytes:
        return packed_host(self.host)

    def with_port(self, port: int) -> Address:
        return Address(self.host, port)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
