import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AddressScope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ADDRESS_SCOPE_UNSPECIFIED: _ClassVar[AddressScope]
    ADDRESS_SCOPE_PRIVATE: _ClassVar[AddressScope]
    ADDRESS_SCOPE_PUBLIC: _ClassVar[AddressScope]
    ADDRESS_SCOPE_NAT: _ClassVar[AddressScope]

class DpdAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DPD_ACTION_UNSPECIFIED: _ClassVar[DpdAction]
    DPD_ACTION_RESTART: _ClassVar[DpdAction]
    DPD_ACTION_CLEAR: _ClassVar[DpdAction]
    DPD_ACTION_HOLD: _ClassVar[DpdAction]

class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODE_UNSPECIFIED: _ClassVar[Mode]
    MODE_TUNNEL: _ClassVar[Mode]
    MODE_TRANSPORT: _ClassVar[Mode]

class IpsecProtocol(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IPSEC_PROTOCOL_UNSPECIFIED: _ClassVar[IpsecProtocol]
    IPSEC_PROTOCOL_ESP: _ClassVar[IpsecProtocol]
    IPSEC_PROTOCOL_AH: _ClassVar[IpsecProtocol]

class StartAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    START_ACTION_UNSPECIFIED: _ClassVar[StartAction]
    START_ACTION_NONE: _ClassVar[StartAction]
    START_ACTION_TRAP: _ClassVar[StartAction]
    START_ACTION_START: _ClassVar[StartAction]

class TunnelState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TUNNEL_STATE_UNSPECIFIED: _ClassVar[TunnelState]
    TUNNEL_STATE_DOWN: _ClassVar[TunnelState]
    TUNNEL_STATE_CONNECTING: _ClassVar[TunnelState]
    TUNNEL_STATE_ESTABLISHED: _ClassVar[TunnelState]
    TUNNEL_STATE_REKEYING: _ClassVar[TunnelState]
    TUNNEL_STATE_FAILED: _ClassVar[TunnelState]
    TUNNEL_STATE_DELETING: _ClassVar[TunnelState]

class PeerKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PEER_KIND_UNSPECIFIED: _ClassVar[PeerKind]
    PEER_KIND_NODE: _ClassVar[PeerKind]
    PEER_KIND_EXTERNAL_GATEWAY: _ClassVar[PeerKind]
ADDRESS_SCOPE_UNSPECIFIED: AddressScope
ADDRESS_SCOPE_PRIVATE: AddressScope
ADDRESS_SCOPE_PUBLIC: AddressScope
ADDRESS_SCOPE_NAT: AddressScope
DPD_ACTION_UNSPECIFIED: DpdAction
DPD_ACTION_RESTART: DpdAction
DPD_ACTION_CLEAR: DpdAction
DPD_ACTION_HOLD: DpdAction
MODE_UNSPECIFIED: Mode
MODE_TUNNEL: Mode
MODE_TRANSPORT: Mode
IPSEC_PROTOCOL_UNSPECIFIED: IpsecProtocol
IPSEC_PROTOCOL_ESP: IpsecProtocol
IPSEC_PROTOCOL_AH: IpsecProtocol
START_ACTION_UNSPECIFIED: StartAction
START_ACTION_NONE: StartAction
START_ACTION_TRAP: StartAction
START_ACTION_START: StartAction
TUNNEL_STATE_UNSPECIFIED: TunnelState
TUNNEL_STATE_DOWN: TunnelState
TUNNEL_STATE_CONNECTING: TunnelState
TUNNEL_STATE_ESTABLISHED: TunnelState
TUNNEL_STATE_REKEYING: TunnelState
TUNNEL_STATE_FAILED: TunnelState
TUNNEL_STATE_DELETING: TunnelState
PEER_KIND_UNSPECIFIED: PeerKind
PEER_KIND_NODE: PeerKind
PEER_KIND_EXTERNAL_GATEWAY: PeerKind

class Resource(_message.Message):
    __slots__ = ("api_version", "kind", "metadata", "spec", "status")
    API_VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    api_version: str
    kind: str
    metadata: ObjectMeta
    spec: _struct_pb2.Struct
    status: _struct_pb2.Struct
    def __init__(self, api_version: _Optional[str] = ..., kind: _Optional[str] = ..., metadata: _Optional[_Union[ObjectMeta, _Mapping]] = ..., spec: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., status: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ObjectMeta(_message.Message):
    __slots__ = ("name", "labels", "annotations", "resource_version", "generation", "uid", "creation_time")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class AnnotationsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ANNOTATIONS_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    CREATION_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    labels: _containers.ScalarMap[str, str]
    annotations: _containers.ScalarMap[str, str]
    resource_version: str
    generation: int
    uid: str
    creation_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., annotations: _Optional[_Mapping[str, str]] = ..., resource_version: _Optional[str] = ..., generation: _Optional[int] = ..., uid: _Optional[str] = ..., creation_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ObjectRef(_message.Message):
    __slots__ = ("kind", "name")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("address", "port", "scope")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    address: str
    port: int
    scope: AddressScope
    def __init__(self, address: _Optional[str] = ..., port: _Optional[int] = ..., scope: _Optional[_Union[AddressScope, str]] = ...) -> None: ...

class TrafficSelector(_message.Message):
    __slots__ = ("cidr", "protocol", "port_start", "port_end")
    CIDR_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    PORT_START_FIELD_NUMBER: _ClassVar[int]
    PORT_END_FIELD_NUMBER: _ClassVar[int]
    cidr: str
    protocol: int
    port_start: int
    port_end: int
    def __init__(self, cidr: _Optional[str] = ..., protocol: _Optional[int] = ..., port_start: _Optional[int] = ..., port_end: _Optional[int] = ...) -> None: ...

class Lifetimes(_message.Message):
    __slots__ = ("soft_seconds", "hard_seconds", "soft_bytes", "hard_bytes", "soft_packets", "hard_packets", "jitter_seconds")
    SOFT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    HARD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SOFT_BYTES_FIELD_NUMBER: _ClassVar[int]
    HARD_BYTES_FIELD_NUMBER: _ClassVar[int]
    SOFT_PACKETS_FIELD_NUMBER: _ClassVar[int]
    HARD_PACKETS_FIELD_NUMBER: _ClassVar[int]
    JITTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    soft_seconds: int
    hard_seconds: int
    soft_bytes: int
    hard_bytes: int
    soft_packets: int
    hard_packets: int
    jitter_seconds: int
    def __init__(self, soft_seconds: _Optional[int] = ..., hard_seconds: _Optional[int] = ..., soft_bytes: _Optional[int] = ..., hard_bytes: _Optional[int] = ..., soft_packets: _Optional[int] = ..., hard_packets: _Optional[int] = ..., jitter_seconds: _Optional[int] = ...) -> None: ...

class Dpd(_message.Message):
    __slots__ = ("interval_seconds", "timeout_seconds", "action")
    INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    interval_seconds: int
    timeout_seconds: int
    action: DpdAction
    def __init__(self, interval_seconds: _Optional[int] = ..., timeout_seconds: _Optional[int] = ..., action: _Optional[_Union[DpdAction, str]] = ...) -> None: ...

class Identity(_message.Message):
    __slots__ = ("type", "value")
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        TYPE_UNSPECIFIED: _ClassVar[Identity.Type]
        TYPE_IPV4_ADDR: _ClassVar[Identity.Type]
        TYPE_FQDN: _ClassVar[Identity.Type]
        TYPE_RFC822_ADDR: _ClassVar[Identity.Type]
        TYPE_IPV6_ADDR: _ClassVar[Identity.Type]
        TYPE_DER_ASN1_DN: _ClassVar[Identity.Type]
        TYPE_KEY_ID: _ClassVar[Identity.Type]
    TYPE_UNSPECIFIED: Identity.Type
    TYPE_IPV4_ADDR: Identity.Type
    TYPE_FQDN: Identity.Type
    TYPE_RFC822_ADDR: Identity.Type
    TYPE_IPV6_ADDR: Identity.Type
    TYPE_DER_ASN1_DN: Identity.Type
    TYPE_KEY_ID: Identity.Type
    TYPE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    type: Identity.Type
    value: str
    def __init__(self, type: _Optional[_Union[Identity.Type, str]] = ..., value: _Optional[str] = ...) -> None: ...

class ErrorInfo(_message.Message):
    __slots__ = ("reason", "message", "at")
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    reason: str
    message: str
    at: _timestamp_pb2.Timestamp
    def __init__(self, reason: _Optional[str] = ..., message: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
