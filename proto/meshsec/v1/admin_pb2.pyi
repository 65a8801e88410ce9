import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from meshsec.v1 import agent_pb2 as _agent_pb2
from meshsec.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ApplyAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    APPLY_ACTION_UNSPECIFIED: _ClassVar[ApplyAction]
    APPLY_ACTION_CREATED: _ClassVar[ApplyAction]
    APPLY_ACTION_CONFIGURED: _ClassVar[ApplyAction]
    APPLY_ACTION_UNCHANGED: _ClassVar[ApplyAction]

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    EVENT_TYPE_NORMAL: _ClassVar[EventType]
    EVENT_TYPE_WARNING: _ClassVar[EventType]
APPLY_ACTION_UNSPECIFIED: ApplyAction
APPLY_ACTION_CREATED: ApplyAction
APPLY_ACTION_CONFIGURED: ApplyAction
APPLY_ACTION_UNCHANGED: ApplyAction
EVENT_TYPE_UNSPECIFIED: EventType
EVENT_TYPE_NORMAL: EventType
EVENT_TYPE_WARNING: EventType

class ApplyRequest(_message.Message):
    __slots__ = ("resources", "dry_run", "field_manager")
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    FIELD_MANAGER_FIELD_NUMBER: _ClassVar[int]
    resources: _containers.RepeatedCompositeFieldContainer[_common_pb2.Resource]
    dry_run: bool
    field_manager: str
    def __init__(self, resources: _Optional[_Iterable[_Union[_common_pb2.Resource, _Mapping]]] = ..., dry_run: _Optional[bool] = ..., field_manager: _Optional[str] = ...) -> None: ...

class ApplyResult(_message.Message):
    __slots__ = ("kind", "name", "action", "resource", "warnings")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    action: ApplyAction
    resource: _common_pb2.Resource
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ..., action: _Optional[_Union[ApplyAction, str]] = ..., resource: _Optional[_Union[_common_pb2.Resource, _Mapping]] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class ApplyResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ApplyResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ApplyResult, _Mapping]]] = ...) -> None: ...

class ValidationError(_message.Message):
    __slots__ = ("kind", "name", "index", "path", "message")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    index: int
    path: str
    message: str
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ..., index: _Optional[int] = ..., path: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ValidationErrors(_message.Message):
    __slots__ = ("errors", "omitted")
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    OMITTED_FIELD_NUMBER: _ClassVar[int]
    errors: _containers.RepeatedCompositeFieldContainer[ValidationError]
    omitted: int
    def __init__(self, errors: _Optional[_Iterable[_Union[ValidationError, _Mapping]]] = ..., omitted: _Optional[int] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("kind", "name", "resource_version", "dry_run")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    resource_version: str
    dry_run: bool
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ..., resource_version: _Optional[str] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("resource",)
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    resource: _common_pb2.Resource
    def __init__(self, resource: _Optional[_Union[_common_pb2.Resource, _Mapping]] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("kind", "name")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("resource",)
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    resource: _common_pb2.Resource
    def __init__(self, resource: _Optional[_Union[_common_pb2.Resource, _Mapping]] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ("kind", "label_selector", "page_size", "page_token")
    KIND_FIELD_NUMBER: _ClassVar[int]
    LABEL_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    kind: str
    label_selector: str
    page_size: int
    page_token: str
    def __init__(self, kind: _Optional[str] = ..., label_selector: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListResponse(_message.Message):
    __slots__ = ("resources", "next_page_token")
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    resources: _containers.RepeatedCompositeFieldContainer[_common_pb2.Resource]
    next_page_token: str
    def __init__(self, resources: _Optional[_Iterable[_Union[_common_pb2.Resource, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListTunnelsRequest(_message.Message):
    __slots__ = ("node", "site", "state", "policy", "page_size", "page_token")
    NODE_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    node: str
    site: str
    state: _common_pb2.TunnelState
    policy: str
    page_size: int
    page_token: str
    def __init__(self, node: _Optional[str] = ..., site: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.TunnelState, str]] = ..., policy: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTunnelsResponse(_message.Message):
    __slots__ = ("tunnels", "next_page_token")
    TUNNELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tunnels: _containers.RepeatedCompositeFieldContainer[TunnelInfo]
    next_page_token: str
    def __init__(self, tunnels: _Optional[_Iterable[_Union[TunnelInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class TunnelEnd(_message.Message):
    __slots__ = ("name", "kind", "site", "endpoint", "status", "reported_at", "stale")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REPORTED_AT_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: _common_pb2.PeerKind
    site: str
    endpoint: _common_pb2.Endpoint
    status: _agent_pb2.TunnelStatus
    reported_at: _timestamp_pb2.Timestamp
    stale: bool
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[_Union[_common_pb2.PeerKind, str]] = ..., site: _Optional[str] = ..., endpoint: _Optional[_Union[_common_pb2.Endpoint, _Mapping]] = ..., status: _Optional[_Union[_agent_pb2.TunnelStatus, _Mapping]] = ..., reported_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., stale: _Optional[bool] = ...) -> None: ...

class TunnelInfo(_message.Message):
    __slots__ = ("tunnel_id", "policy", "ends", "state", "desired")
    TUNNEL_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    ENDS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DESIRED_FIELD_NUMBER: _ClassVar[int]
    tunnel_id: str
    policy: str
    ends: _containers.RepeatedCompositeFieldContainer[TunnelEnd]
    state: _common_pb2.TunnelState
    desired: _agent_pb2.DesiredTunnel
    def __init__(self, tunnel_id: _Optional[str] = ..., policy: _Optional[str] = ..., ends: _Optional[_Iterable[_Union[TunnelEnd, _Mapping]]] = ..., state: _Optional[_Union[_common_pb2.TunnelState, str]] = ..., desired: _Optional[_Union[_agent_pb2.DesiredTunnel, _Mapping]] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("since_sequence", "since_time", "kinds", "name")
    SINCE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SINCE_TIME_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    since_sequence: int
    since_time: _timestamp_pb2.Timestamp
    kinds: _containers.RepeatedScalarFieldContainer[str]
    name: str
    def __init__(self, since_sequence: _Optional[int] = ..., since_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kinds: _Optional[_Iterable[str]] = ..., name: _Optional[str] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("sequence", "time", "type", "reason", "involved", "message", "source")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    INVOLVED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    time: _timestamp_pb2.Timestamp
    type: EventType
    reason: str
    involved: _common_pb2.ObjectRef
    message: str
    source: str
    def __init__(self, sequence: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., type: _Optional[_Union[EventType, str]] = ..., reason: _Optional[str] = ..., involved: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., message: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...

class CreateBootstrapTokenRequest(_message.Message):
    __slots__ = ("node_name", "site", "ttl_seconds", "uses", "node_labels", "allow_reenroll")
    class NodeLabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    USES_FIELD_NUMBER: _ClassVar[int]
    NODE_LABELS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_REENROLL_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    site: str
    ttl_seconds: int
    uses: int
    node_labels: _containers.ScalarMap[str, str]
    allow_reenroll: bool
    def __init__(self, node_name: _Optional[str] = ..., site: _Optional[str] = ..., ttl_seconds: _Optional[int] = ..., uses: _Optional[int] = ..., node_labels: _Optional[_Mapping[str, str]] = ..., allow_reenroll: _Optional[bool] = ...) -> None: ...

class CreateBootstrapTokenResponse(_message.Message):
    __slots__ = ("token", "token_id", "expires_at", "uses", "ca_cert_sha256")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    USES_FIELD_NUMBER: _ClassVar[int]
    CA_CERT_SHA256_FIELD_NUMBER: _ClassVar[int]
    token: str
    token_id: str
    expires_at: _timestamp_pb2.Timestamp
    uses: int
    ca_cert_sha256: str
    def __init__(self, token: _Optional[str] = ..., token_id: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., uses: _Optional[int] = ..., ca_cert_sha256: _Optional[str] = ...) -> None: ...

class RevokeBootstrapTokenRequest(_message.Message):
    __slots__ = ("token_id",)
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    token_id: str
    def __init__(self, token_id: _Optional[str] = ...) -> None: ...

class RevokeBootstrapTokenResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetTopologyRequest(_message.Message):
    __slots__ = ("site", "omit_links")
    SITE_FIELD_NUMBER: _ClassVar[int]
    OMIT_LINKS_FIELD_NUMBER: _ClassVar[int]
    site: str
    omit_links: bool
    def __init__(self, site: _Optional[str] = ..., omit_links: _Optional[bool] = ...) -> None: ...

class Topology(_message.Message):
    __slots__ = ("sites", "nodes", "external_gateways", "links", "computed_at")
    SITES_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    EXTERNAL_GATEWAYS_FIELD_NUMBER: _ClassVar[int]
    LINKS_FIELD_NUMBER: _ClassVar[int]
    COMPUTED_AT_FIELD_NUMBER: _ClassVar[int]
    sites: _containers.RepeatedCompositeFieldContainer[TopologySite]
    nodes: _containers.RepeatedCompositeFieldContainer[TopologyNode]
    external_gateways: _containers.RepeatedCompositeFieldContainer[TopologyGateway]
    links: _containers.RepeatedCompositeFieldContainer[TopologyLink]
    computed_at: _timestamp_pb2.Timestamp
    def __init__(self, sites: _Optional[_Iterable[_Union[TopologySite, _Mapping]]] = ..., nodes: _Optional[_Iterable[_Union[TopologyNode, _Mapping]]] = ..., external_gateways: _Optional[_Iterable[_Union[TopologyGateway, _Mapping]]] = ..., links: _Optional[_Iterable[_Union[TopologyLink, _Mapping]]] = ..., computed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TopologySite(_message.Message):
    __slots__ = ("name", "prefixes", "gateways", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    PREFIXES_FIELD_NUMBER: _ClassVar[int]
    GATEWAYS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    prefixes: _containers.RepeatedScalarFieldContainer[str]
    gateways: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., prefixes: _Optional[_Iterable[str]] = ..., gateways: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class TopologyNode(_message.Message):
    __slots__ = ("name", "site", "endpoints", "online", "last_seen", "dataplane_backend", "agent_version", "status", "agent_clock")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    DATAPLANE_BACKEND_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    AGENT_CLOCK_FIELD_NUMBER: _ClassVar[int]
    name: str
    site: str
    endpoints: _containers.RepeatedCompositeFieldContainer[_common_pb2.Endpoint]
    online: bool
    last_seen: _timestamp_pb2.Timestamp
    dataplane_backend: _agent_pb2.DataplaneBackend
    agent_version: str
    status: _agent_pb2.NodeStatus
    agent_clock: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., site: _Optional[str] = ..., endpoints: _Optional[_Iterable[_Union[_common_pb2.Endpoint, _Mapping]]] = ..., online: _Optional[bool] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., dataplane_backend: _Optional[_Union[_agent_pb2.DataplaneBackend, str]] = ..., agent_version: _Optional[str] = ..., status: _Optional[_Union[_agent_pb2.NodeStatus, _Mapping]] = ..., agent_clock: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TopologyGateway(_message.Message):
    __slots__ = ("name", "endpoint", "prefixes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    PREFIXES_FIELD_NUMBER: _ClassVar[int]
    name: str
    endpoint: _common_pb2.Endpoint
    prefixes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., endpoint: _Optional[_Union[_common_pb2.Endpoint, _Mapping]] = ..., prefixes: _Optional[_Iterable[str]] = ...) -> None: ...

class TopologyLink(_message.Message):
    __slots__ = ("tunnel_id", "policy", "a", "b", "state")
    TUNNEL_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    tunnel_id: str
    policy: str
    a: _common_pb2.ObjectRef
    b: _common_pb2.ObjectRef
    state: _common_pb2.TunnelState
    def __init__(self, tunnel_id: _Optional[str] = ..., policy: _Optional[str] = ..., a: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., b: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., state: _Optional[_Union[_common_pb2.TunnelState, str]] = ...) -> None: ...

class PutSecretRequest(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: bytes
    def __init__(self, name: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...

class SecretInfo(_message.Message):
    __slots__ = ("name", "used_by", "resource_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    USED_BY_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    used_by: _containers.RepeatedScalarFieldContainer[str]
    resource_version: str
    def __init__(self, name: _Optional[str] = ..., used_by: _Optional[_Iterable[str]] = ..., resource_version: _Optional[str] = ...) -> None: ...

class PutSecretResponse(_message.Message):
    __slots__ = ("secret", "created")
    SECRET_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    secret: SecretInfo
    created: bool
    def __init__(self, secret: _Optional[_Union[SecretInfo, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class DeleteSecretRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteSecretResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSecretsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSecretsResponse(_message.Message):
    __slots__ = ("secrets",)
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    secrets: _containers.RepeatedCompositeFieldContainer[SecretInfo]
    def __init__(self, secrets: _Optional[_Iterable[_Union[SecretInfo, _Mapping]]] = ...) -> None: ...

class GetVersionRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetVersionResponse(_message.Message):
    __slots__ = ("version", "replica")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    version: str
    replica: str
    def __init__(self, version: _Optional[str] = ..., replica: _Optional[str] = ...) -> None: ...

class AdminCertificate(_message.Message):
    __slots__ = ("name", "serial", "not_before", "not_after", "issued_by", "revoked_at", "revoked_by")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    ISSUED_BY_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_BY_FIELD_NUMBER: _ClassVar[int]
    name: str
    serial: str
    not_before: _timestamp_pb2.Timestamp
    not_after: _timestamp_pb2.Timestamp
    issued_by: str
    revoked_at: _timestamp_pb2.Timestamp
    revoked_by: str
    def __init__(self, name: _Optional[str] = ..., serial: _Optional[str] = ..., not_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., not_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., issued_by: _Optional[str] = ..., revoked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoked_by: _Optional[str] = ...) -> None: ...

class IssueAdminCertificateRequest(_message.Message):
    __slots__ = ("name", "csr_pem", "ttl_seconds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    csr_pem: str
    ttl_seconds: int
    def __init__(self, name: _Optional[str] = ..., csr_pem: _Optional[str] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class IssueAdminCertificateResponse(_message.Message):
    __slots__ = ("certificate", "certificate_pem", "ca_certificate_pem")
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    certificate: AdminCertificate
    certificate_pem: str
    ca_certificate_pem: str
    def __init__(self, certificate: _Optional[_Union[AdminCertificate, _Mapping]] = ..., certificate_pem: _Optional[str] = ..., ca_certificate_pem: _Optional[str] = ...) -> None: ...

class ListAdminCertificatesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAdminCertificatesResponse(_message.Message):
    __slots__ = ("certificates",)
    CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    certificates: _containers.RepeatedCompositeFieldContainer[AdminCertificate]
    def __init__(self, certificates: _Optional[_Iterable[_Union[AdminCertificate, _Mapping]]] = ...) -> None: ...

class RevokeAdminCertificatesRequest(_message.Message):
    __slots__ = ("name", "serial")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    name: str
    serial: str
    def __init__(self, name: _Optional[str] = ..., serial: _Optional[str] = ...) -> None: ...

class RevokeAdminCertificatesResponse(_message.Message):
    __slots__ = ("revoked",)
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    revoked: _containers.RepeatedCompositeFieldContainer[AdminCertificate]
    def __init__(self, revoked: _Optional[_Iterable[_Union[AdminCertificate, _Mapping]]] = ...) -> None: ...

class SetRemoteAccessPasswordRequest(_message.Message):
    __slots__ = ("user", "password")
    USER_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    user: str
    password: str
    def __init__(self, user: _Optional[str] = ..., password: _Optional[str] = ...) -> None: ...

class SetRemoteAccessPasswordResponse(_message.Message):
    __slots__ = ("created",)
    CREATED_FIELD_NUMBER: _ClassVar[int]
    created: bool
    def __init__(self, created: _Optional[bool] = ...) -> None: ...

class RemoteAccessLease(_message.Message):
    __slots__ = ("pool", "user", "device", "addresses", "gateway", "connected_since", "bytes_in", "bytes_out", "packets_in", "packets_out", "traffic_at")
    POOL_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_SINCE_FIELD_NUMBER: _ClassVar[int]
    BYTES_IN_FIELD_NUMBER: _ClassVar[int]
    BYTES_OUT_FIELD_NUMBER: _ClassVar[int]
    PACKETS_IN_FIELD_NUMBER: _ClassVar[int]
    PACKETS_OUT_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_AT_FIELD_NUMBER: _ClassVar[int]
    pool: str
    user: str
    device: str
    addresses: _containers.RepeatedScalarFieldContainer[str]
    gateway: str
    connected_since: _timestamp_pb2.Timestamp
    bytes_in: int
    bytes_out: int
    packets_in: int
    packets_out: int
    traffic_at: _timestamp_pb2.Timestamp
    def __init__(self, pool: _Optional[str] = ..., user: _Optional[str] = ..., device: _Optional[str] = ..., addresses: _Optional[_Iterable[str]] = ..., gateway: _Optional[str] = ..., connected_since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., bytes_in: _Optional[int] = ..., bytes_out: _Optional[int] = ..., packets_in: _Optional[int] = ..., packets_out: _Optional[int] = ..., traffic_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListRemoteAccessLeasesRequest(_message.Message):
    __slots__ = ("user", "page_size", "page_token")
    USER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    user: str
    page_size: int
    page_token: str
    def __init__(self, user: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRemoteAccessLeasesResponse(_message.Message):
    __slots__ = ("leases", "next_page_token")
    LEASES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    leases: _containers.RepeatedCompositeFieldContainer[RemoteAccessLease]
    next_page_token: str
    def __init__(self, leases: _Optional[_Iterable[_Union[RemoteAccessLease, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class IssueDeviceCertificateRequest(_message.Message):
    __slots__ = ("user", "device", "csr_pem", "ttl_seconds")
    USER_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    user: str
    device: str
    csr_pem: str
    ttl_seconds: int
    def __init__(self, user: _Optional[str] = ..., device: _Optional[str] = ..., csr_pem: _Optional[str] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class IssueDeviceCertificateResponse(_message.Message):
    __slots__ = ("certificate_pem", "ca_certificate_pem", "serial")
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    certificate_pem: str
    ca_certificate_pem: str
    serial: str
    def __init__(self, certificate_pem: _Optional[str] = ..., ca_certificate_pem: _Optional[str] = ..., serial: _Optional[str] = ...) -> None: ...

class GetRemoteAccessProfileRequest(_message.Message):
    __slots__ = ("user", "device")
    USER_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    user: str
    device: str
    def __init__(self, user: _Optional[str] = ..., device: _Optional[str] = ...) -> None: ...

class RemoteAccessGateway(_message.Message):
    __slots__ = ("name", "addresses", "ike_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    IKE_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    addresses: _containers.RepeatedScalarFieldContainer[str]
    ike_id: str
    def __init__(self, name: _Optional[str] = ..., addresses: _Optional[_Iterable[str]] = ..., ike_id: _Optional[str] = ...) -> None: ...

class RemoteAccessProfile(_message.Message):
    __slots__ = ("pool", "identity", "auth_method", "platform", "ike_proposals", "esp_proposals", "ike_lifetime_seconds", "child_lifetime_seconds", "routes", "dns", "gateways", "ca_certificate_pem")
    POOL_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    AUTH_METHOD_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    IKE_PROPOSALS_FIELD_NUMBER: _ClassVar[int]
    ESP_PROPOSALS_FIELD_NUMBER: _ClassVar[int]
    IKE_LIFETIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CHILD_LIFETIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    DNS_FIELD_NUMBER: _ClassVar[int]
    GATEWAYS_FIELD_NUMBER: _ClassVar[int]
    CA_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    pool: str
    identity: str
    auth_method: str
    platform: str
    ike_proposals: _containers.RepeatedScalarFieldContainer[str]
    esp_proposals: _containers.RepeatedScalarFieldContainer[str]
    ike_lifetime_seconds: int
    child_lifetime_seconds: int
    routes: _containers.RepeatedScalarFieldContainer[str]
    dns: _containers.RepeatedScalarFieldContainer[str]
    gateways: _containers.RepeatedCompositeFieldContainer[RemoteAccessGateway]
    ca_certificate_pem: str
    def __init__(self, pool: _Optional[str] = ..., identity: _Optional[str] = ..., auth_method: _Optional[str] = ..., platform: _Optional[str] = ..., ike_proposals: _Optional[_Iterable[str]] = ..., esp_proposals: _Optional[_Iterable[str]] = ..., ike_lifetime_seconds: _Optional[int] = ..., child_lifetime_seconds: _Optional[int] = ..., routes: _Optional[_Iterable[str]] = ..., dns: _Optional[_Iterable[str]] = ..., gateways: _Optional[_Iterable[_Union[RemoteAccessGateway, _Mapping]]] = ..., ca_certificate_pem: _Optional[str] = ...) -> None: ...
