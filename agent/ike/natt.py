"""NAT traversal helpers (RFC 7296 2.23, RFC 3948)."""

from __future__ import annotations

import hashlib
import struct

from meshsec.agent.ike.address import Address

NON_ESP_MARKER = b"\0\0\0\0"
NATT_KEEPALIVE = b"\xff"


def nat_detection_hash(spi_i: bytes, spi_r: bytes, addr: Address) -> bytes:
    """SHA-1(SPIi | SPIr | IP | port): SHA-1 is what the RFC fixes for this notify, not a choice."""
    data = spi_i + spi_r + addr.packed_host + struct.pack("!H", addr.port)
    return hashlib.sha1(data, usedforsecurity=False).digest()


def add_non_esp_marker(ike_message: bytes) -> bytes:
    """IKE on port 4500 is prefixed by four zero octets so it cannot be mistaken for ESP."""
    return NON_ESP_MARKER + ike_message


def classify_4500(datagram: bytes) -> tuple[str, bytes]:
    """Splits what arrives on UDP 4500: ("ike", message), ("keepalive", b"") or ("esp", packet)."""
    if datagram == NATT_KEEPALIVE:
        return "keepalive", b""
    if datagram[:4] == NON_ESP_MARKER:
        return "ike", datagram[4:]
    return "esp", datagram
