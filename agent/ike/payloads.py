"""Typed IKEv2 payload bodies (RFC 7296 section 3). Pure data: parsing lives in parse.py,
encoding in build.py."""

from __future__ import annotations

from dataclasses import dataclass, field

from meshsec.agent.ike.constants import PayloadType, ProtocolId, TransformType


@dataclass(frozen=True, slots=True)
class Transform:
    type: int
    id: int
    key_length: int | None = None


@dataclass(frozen=True, slots=True)
class Proposal:
    number: int
    protocol: int
    spi: bytes
    transforms: tuple[Transform, ...]

    def of_type(self, ttype: TransformType) -> list[Transform]:
        return [t for t in self.transforms if t.type == ttype]


@dataclass(frozen=True, slots=True)
class SaPayload:
    proposals: tuple[Proposal, ...]
    payload_type: PayloadType = field(default=PayloadType.SA, init=False)


@dataclass(frozen=True, slots=True)
class KePayload:
    group: int
    data: bytes
    payload_type: PayloadType = field(default=PayloadType.KE, init=False)


@dataclass(frozen=True, slots=True)
class IdPayload:
    payload_type: PayloadType  # IDi or IDr
    id_type: int
    data: bytes

    def body_for_auth(self) -> bytes:
        """RestOfIDPayload used by the AUTH computation (RFC 7296 2.15)."""
        return bytes((self.id_type, 0, 0, 0)) + self.data


@dataclass(frozen=True, slots=True)
class CertPayload:
    encoding: int
    data: bytes
    payload_type: PayloadType = field(default=PayloadType.CERT, init=False)


@dataclass(frozen=True, slots=True)
class CertReqPayload:
    encoding: int
    data: bytes
    payload_type: PayloadType = field(default=PayloadType.CERTREQ, init=False)


@dataclass(frozen=True, slots=True)
class AuthPayload:
    method: int
    data: bytes
    payload_type: PayloadType = field(default=PayloadType.AUTH, init=False)


@dataclass(frozen=True, slots=True)
class NoncePayload:
    data: bytes
    payload_type: PayloadType = field(default=PayloadType.NONCE, init=False)


@dataclass(frozen=True, slots=True)
class NotifyPayload:
    notify_type: int
    data: bytes = b""
    protocol: int = ProtocolId.NONE
    spi: bytes = b""
    payload_type: PayloadType = field(default=PayloadType.NOTIFY, init=False)


@dataclass(frozen=True, slots=True)
class DeletePayload:
    protocol: int
    spis: tuple[bytes, ...]
    payload_type: PayloadType = field(default=PayloadType.DELETE, init=False)


@dataclass(frozen=True, slots=True)
class VendorIdPayload:
    data: bytes
    payload_type: PayloadType = field(default=PayloadType.VENDOR, init=False)


@dataclass(frozen=True, slots=True)
class TrafficSelector:
    ts_type: int
    ip_protocol: int
    start_port: int
    end_port: int
    start_addr: bytes
    end_addr: bytes


@dataclass(frozen=True, slots=True)
class TsPayload:
    payload_type: PayloadType  # TSi or TSr
    selectors: tuple[TrafficSelector, ...]


@dataclass(frozen=True, slots=True)
class CpPayload:
    cfg_type: int
    attributes: tuple[tuple[int, bytes], ...]
    payload_type: PayloadType = field(default=PayloadType.CP, init=False)


@dataclass(frozen=True, slots=True)
class EapPayload:
    """EAP is carried opaquely; meshsec authenticates with PSK or signatures only."""

    data: bytes
    payload_type: PayloadType = field(default=PayloadType.EAP, init=False)


@dataclass(frozen=True, slots=True)
class EncryptedPayload:
    """The SK payload as it sits on the wire: IV | ciphertext | ICV, first inner payload type."""

    first_inner: int
    data: bytes
    payload_type: PayloadType = field(default=PayloadType.SK, init=False)


@dataclass(frozen=True, slots=True)
class UnknownPayload:
    """A non-critical payload we do not understand; kept so a round trip loses nothing."""

    payload_type: int
    critical: bool
    data: bytes


Payload = (
    SaPayload
    | KePayload
    | IdPayload
    | CertPayload
    | CertReqPayload
    | AuthPayload
    | NoncePayload
    | NotifyPayload
    | DeletePayload
    | VendorIdPayload
    | TsPayload
    | CpPayload
    | EapPayload
    | EncryptedPayload
    | UnknownPayload
)


@dataclass(frozen=True, slots=True)
class Header:
    spi_i: bytes
    spi_r: bytes
    next_payload: int
    exchange: int
    flags: int
    message_id: int
    length: int
    version: int = 0x20

    @property
    def is_response(self) -> bool:
        return bool(self.flags & 0x20)

    @property
    def is_initiator(self) -> bool:
        return bool(self.flags & 0x08)


@dataclass(slots=True)
class Message:
    header: Header
    payloads: list[Payload]
    # The decrypted inner chain as received and its first payload type (IKE_INTERMEDIATE's
    # IntAuth covers these bytes); empty for unencrypted messages.
    inner: bytes = b""
    inner_first: int = 0

    def find(self, ptype: PayloadType) -> Payload | None:
        for p in self.payloads:
            if p.payload_type == ptype:
                return p
        return None

    def notifies(self) -> list[NotifyPayload]:
        return [p for p in self.payloads if isinstance(p, NotifyPayload)]

    def notify(self, ntype: int) -> NotifyPayload | None:
        for p in self.payloads:
            if isinstance(p, NotifyPayload) and p.notify_type == ntype:
                return p
        return None
