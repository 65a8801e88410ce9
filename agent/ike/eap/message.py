"""EAP packets (RFC 3748 section 4) and EAP-MSCHAPv2's inner packets
(draft-kamath-pppext-eap-mschapv2-02, the form Windows, Apple and strongSwan speak).

Decoding checks every length against the bytes present and raises EapError naming the field;
nothing is guessed. The EAP payload of IKE_AUTH carries exactly one EAP packet (RFC 7296 3.16).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

MAX_EAP = 65535


class EapError(ValueError):
    pass


class Code(enum.IntEnum):
    REQUEST = 1
    RESPONSE = 2
    SUCCESS = 3
    FAILURE = 4


class EapType(enum.IntEnum):
    IDENTITY = 1
    NAK = 3
    TLS = 13
    MSCHAPV2 = 26


@dataclass(frozen=True, slots=True)
class EapPacket:
    code: int
    identifier: int
    type: int | None = None  # requests and responses only
    data: bytes = b""

    def encode(self) -> bytes:
        if self.code in (Code.SUCCESS, Code.FAILURE):
            return struct.pack("!BBH", self.code, self.identifier, 4)
        assert self.type is not None, "requests and responses carry a type"
        length = 5 + len(self.data)
        if length > MAX_EAP:
            raise EapError(f"EAP packet of {length} bytes")
        return struct.pack("!BBHB", self.code, self.identifier, length, self.type) + self.data


def decode(raw: bytes) -> EapPacket:
    if len(raw) < 4:
        raise EapError(f"EAP header needs 4 bytes, got {len(raw)}")
    code, identifier, length = struct.unpack_from("!BBH", raw)
    if length != len(raw):
        raise EapError(f"EAP length field says {length}, payload holds {len(raw)}")
    if code in (Code.SUCCESS, Code.FAILURE):
        if length != 4:
            raise EapError("EAP Success/Failure carries no data")
        return EapPacket(code, identifier)
    if code not in (Code.REQUEST, Code.RESPONSE):
        raise EapError(f"unknown EAP code {code}")
    if length < 5:
        raise EapError("EAP request/response without a type")
    return EapPacket(code, identifier, raw[4], raw[5:])


# --- EAP-MSCHAPv2 ---------------------------------------------------------------------------


class OpCode(enum.IntEnum):
    CHALLENGE = 1
    RESPONSE = 2
    SUCCESS = 3
    FAILURE = 4
    CHANGE_PASSWORD = 7


@dataclass(frozen=True, slots=True)
class MsChallenge:
    ms_id: int
    challenge: bytes  # 16 bytes
    name: bytes  # the authenticator's name

    def encode(self) -> bytes:
        body = bytes([16]) + self.challenge + self.name
        return struct.pack("!BBH", OpCode.CHALLENGE, self.ms_id, 4 + len(body)) + body


@dataclass(frozen=True, slots=True)
class MsResponse:
    ms_id: int
    peer_challenge: bytes  # 16 bytes
    nt_response: bytes  # 24 bytes
    flags: int
    name: bytes  # the peer's user name

    def encode(self) -> bytes:
        value = self.peer_challenge + bytes(8) + self.nt_response + bytes([self.flags])
        body = bytes([49]) + value + self.name
        return struct.pack("!BBH", OpCode.RESPONSE, self.ms_id, 4 + len(body)) + body


@dataclass(frozen=True, slots=True)
class MsResult:
    """Success (authenticator: "S=<40 hex> M=<text>") or Failure ("E=691 R=0 C=... V=3 M=...").
    The peer acknowledges either with the bare opcode (`message` empty, no MS-ID on the wire)."""

    opcode: int
    ms_id: int = 0
    message: bytes = b""

    def encode(self) -> bytes:
        if not self.message:
            return bytes([self.opcode])
        return struct.pack("!BBH", self.opcode, self.ms_id, 4 + len(self.message)) + self.message


def decode_mschapv2(data: bytes) -> MsChallenge | MsResponse | MsResult:
    """The type-data of an EAP packet of type MSCHAPV2."""
    if not data:
        raise EapError("empty EAP-MSCHAPv2 data")
    opcode = data[0]
    if len(data) == 1 and opcode in (OpCode.SUCCESS, OpCode.FAILURE):
        return MsResult(opcode)
    if len(data) < 4:
        raise EapError(f"EAP-MSCHAPv2 header needs 4 bytes, got {len(data)}")
    ms_id, ms_length = data[1], struct.unpack_from("!H", data, 2)[0]
    if ms_length != len(data):
        raise EapError(f"MS-Length says {ms_length}, the packet holds {len(data)}")
    if opcode in (OpCode.SUCCESS, OpCode.FAILURE):
        return MsResult(opcode, ms_id, data[4:])
    if opcode == OpCode.CHALLENGE:
        if len(data) < 21 or data[4] != 16:
            raise EapError("MSCHAPv2 Challenge needs a 16-byte value")
        return MsChallenge(ms_id, data[5:21], data[21:])
    if opcode == OpCode.RESPONSE:
        if len(data) < 54 or data[4] != 49:
            raise EapError("MSCHAPv2 Response needs a 49-byte value")
        value = data[5:54]
        if value[16:24] != bytes(8):
            raise EapError("MSCHAPv2 Response: reserved bytes must be zero")
        return MsResponse(ms_id, value[:16], value[24:48], value[48], data[54:])
    raise EapError(f"unsupported EAP-MSCHAPv2 opcode {opcode}")
