"""IKE identities (RFC 7296 3.5) with the ID types meshsec uses for PSK authentication.

A peer chooses the bytes of its ID freely, so `str(identity)` (logs, status, failure reasons)
shows them through `printable`; matching compares the raw `Identity` values."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from meshsec.agent.ike.constants import IdType


def printable(text: str) -> str:
    """`text` safe to show a human: control and other non-printable characters (newlines, ESC,
    bidi overrides) and undecodable bytes (surrogate escapes) as `\\xNN`/`\\uNNNN`, and the
    backslash doubled so an escape cannot be forged."""
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for c in text:
        code = ord(c)
        if c == "\\":
            out.append("\\\\")
        elif 0xDC80 <= code <= 0xDCFF:  # an undecodable byte kept by the surrogateescape handler
            out.append(f"\\x{code - 0xDC00:02x}")
        elif c.isprintable():
            out.append(c)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Identity:
    id_type: int
    data: bytes

    @classmethod
    def parse(cls, text: str) -> Identity:
        """strongSwan-like notation: an IP address, `user@domain` (RFC822), `@#hex` or
        `keyid:hex` (KEY_ID), `@fqdn` or a bare host name (FQDN)."""
        text = text.strip()
        if not text:
            raise ValueError("empty identity")
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            pass
        else:
            return cls(IdType.IPV4_ADDR if ip.version == 4 else IdType.IPV6_ADDR, ip.packed)
        if text.startswith("@#") or text.startswith("keyid:"):
            raw = text[2:] if text.startswith("@#") else text[6:]
            try:
                return cls(IdType.KEY_ID, bytes.fromhex(raw))
            except ValueError as exc:
                raise ValueError(f"KEY_ID identity {text!r} is not hex") from exc
        if text.startswith("@"):
            return cls(IdType.FQDN, text[1:].encode())
        if "@" in text:
            return cls(IdType.RFC822_ADDR, text.encode())
        return cls(IdType.FQDN, text.encode())

    def __str__(self) -> str:
        if self.id_type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
            try:
                return str(ipaddress.ip_address(self.data))
            except ValueError:
                return self.data.hex()
        if self.id_type == IdType.KEY_ID:
            return "@#" + self.data.hex()
        if self.id_type in (IdType.FQDN, IdType.RFC822_ADDR):
            return printable(self.data.decode("utf-8", "surrogateescape"))
        return f"{self.id_type}:{self.data.hex()}"
