import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from meshsec.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataplaneBackend(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATAPLANE_BACKEND_UNSPECIFIED: _ClassVar[DataplaneBackend]
    DATAPLANE_BACKEND_KERNEL_XFRM: _ClassVar[DataplaneBackend]
    DATAPLANE_BACKEND_USERSPACE: _ClassVar[DataplaneBackend]

class UpdateKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UPDATE_KIND_UNSPECIFIED: _ClassVar[UpdateKind]
    UPDATE_KIND_SNAPSHOT: _ClassVar[UpdateKind]
    UPDATE_KIND_DELTA: _ClassVar[UpdateKind]
DATAPLANE_BACKEND_UNSPECIFIED: DataplaneBackend
DATAPLANE_BACKEND_KERNEL_XFRM: DataplaneBackend
DATAPLANE_BACKEND_USERSPACE: DataplaneBackend
UPDATE_KIND_UNSPECIFIED: UpdateKind
UPDATE_KIND_SNAPSHOT: UpdateKind
UPDATE_KIND_DELTA: UpdateKind

class EnrollRequest(_message.Message):
    __slots__ = ("bootstrap_token", "node_name", "csr_pem", "facts")
    BOOTSTRAP_TOKEN_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    FACTS_FIELD_NUMBER: _ClassVar[int]
    bootstrap_token: str
    node_name: str
    csr_pem: str
    facts: NodeFacts
    def __init__(self, bootstrap_token: _Optional[str] = ..., node_name: _Optional[str] = ..., csr_pem: _Optional[str] = ..., facts: _Optional[_Union[NodeFacts, _Mapping]] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("certificate_pem", "ca_bundle_pem", "not_after", "node")
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_BUNDLE_PEM_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    certificate_pem: str
    ca_bundle_pem: str
    not_after: _timestamp_pb2.Timestamp
    node: _common_pb2.Resource
    def __init__(self, certificate_pem: _Optional[str] = ..., ca_bundle_pem: _Optional[str] = ..., not_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., node: _Optional[_Union[_common_pb2.Resource, _Mapping]] = ...) -> None: ...

class RenewCertificateRequest(_message.Message):
    __slots__ = ("csr_pem",)
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    csr_pem: str
    def __init__(self, csr_pem: _Optional[str] = ...) -> None: ...

class NodeFacts(_message.Message):
    __slots__ = ("addresses", "capabilities", "agent_version", "hostname", "kernel_version")
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    KERNEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    addresses: _containers.RepeatedCompositeFieldContainer[_common_pb2.Endpoint]
    capabilities: DataplaneCapabilities
    agent_version: str
    hostname: str
    kernel_version: str
    def __init__(self, addresses: _Optional[_Iterable[_Union[_common_pb2.Endpoint, _Mapping]]] = ..., capabilities: _Optional[_Union[DataplaneCapabilities, _Mapping]] = ..., agent_version: _Optional[str] = ..., hostname: _Optional[str] = ..., kernel_version: _Optional[str] = ...) -> None: ...

class DataplaneCapabilities(_message.Message):
    __slots__ = ("kernel_esp", "kernel_ah", "userspace", "modes", "protocols", "encryption_algorithms", "integrity_algorithms", "udp_encapsulation")
    KERNEL_ESP_FIELD_NUMBER: _ClassVar[int]
    KERNEL_AH_FIELD_NUMBER: _ClassVar[int]
    USERSPACE_FIELD_NUMBER: _ClassVar[int]
    MODES_FIELD_NUMBER: _ClassVar[int]
    PROTOCOLS_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_ALGORITHMS_FIELD_NUMBER: _ClassVar[int]
    INTEGRITY_ALGORITHMS_FIELD_NUMBER: _ClassVar[int]
    UDP_ENCAPSULATION_FIELD_NUMBER: _ClassVar[int]
    kernel_esp: bool
    kernel_ah: bool
    userspace: bool
    modes: _containers.RepeatedScalarFieldContainer[_common_pb2.Mode]
    protocols: _containers.RepeatedScalarFieldContainer[_common_pb2.IpsecProtocol]
    encryption_algorithms: _containers.RepeatedScalarFieldContainer[str]
    integrity_algorithms: _containers.RepeatedScalarFieldContainer[str]
    udp_encapsulation: bool
    def __init__(self, kernel_esp: _Optional[bool] = ..., kernel_ah: _Optional[bool] = ..., userspace: _Optional[bool] = ..., modes: _Optional[_Iterable[_Union[_common_pb2.Mode, str]]] = ..., protocols: _Optional[_Iterable[_Union[_common_pb2.IpsecProtocol, str]]] = ..., encryption_algorithms: _Optional[_Iterable[str]] = ..., integrity_algorithms: _Optional[_Iterable[str]] = ..., udp_encapsulation: _Optional[bool] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("node_name", "resume_from_version")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    RESUME_FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    resume_from_version: int
    def __init__(self, node_name: _Optional[str] = ..., resume_from_version: _Optional[int] = ...) -> None: ...

class DesiredStateUpdate(_message.Message):
    __slots__ = ("version", "kind", "base_version", "node", "upserted_tunnels", "removed_tunnel_ids", "more")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    UPSERTED_TUNNELS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_TUNNEL_IDS_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    version: int
    kind: UpdateKind
    base_version: int
    node: NodeConfig
    upserted_tunnels: _containers.RepeatedCompositeFieldContainer[DesiredTunnel]
    removed_tunnel_ids: _containers.RepeatedScalarFieldContainer[str]
    more: bool
    def __init__(self, version: _Optional[int] = ..., kind: _Optional[_Union[UpdateKind, str]] = ..., base_version: _Optional[int] = ..., node: _Optional[_Union[NodeConfig, _Mapping]] = ..., upserted_tunnels: _Optional[_Iterable[_Union[DesiredTunnel, _Mapping]]] = ..., removed_tunnel_ids: _Optional[_Iterable[str]] = ..., more: _Optional[bool] = ...) -> None: ...

class NodeConfig(_message.Message):
    __slots__ = ("node_name", "site", "node_uid", "labels", "local_endpoints", "site_prefixes", "site_gateway", "local_id", "status_interval_seconds", "routes", "remote_access", "revocation")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    NODE_UID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    LOCAL_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    SITE_PREFIXES_FIELD_NUMBER: _ClassVar[int]
    SITE_GATEWAY_FIELD_NUMBER: _ClassVar[int]
    LOCAL_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    REMOTE_ACCESS_FIELD_NUMBER: _ClassVar[int]
    REVOCATION_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    site: str
    node_uid: str
    labels: _containers.ScalarMap[str, str]
    local_endpoints: _containers.RepeatedCompositeFieldContainer[_common_pb2.Endpoint]
    site_prefixes: _containers.RepeatedScalarFieldContainer[str]
    site_gateway: bool
    local_id: _common_pb2.Identity
    status_interval_seconds: int
    routes: _containers.RepeatedCompositeFieldContainer[SiteRoute]
    remote_access: _containers.RepeatedCompositeFieldContainer[RemoteAccessService]
    revocation: RemoteAccessRevocation
    def __init__(self, node_name: _Optional[str] = ..., site: _Optional[str] = ..., node_uid: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., local_endpoints: _Optional[_Iterable[_Union[_common_pb2.Endpoint, _Mapping]]] = ..., site_prefixes: _Optional[_Iterable[str]] = ..., site_gateway: _Optional[bool] = ..., local_id: _Optional[_Union[_common_pb2.Identity, _Mapping]] = ..., status_interval_seconds: _Optional[int] = ..., routes: _Optional[_Iterable[_Union[SiteRoute, _Mapping]]] = ..., remote_access: _Optional[_Iterable[_Union[RemoteAccessService, _Mapping]]] = ..., revocation: _Optional[_Union[RemoteAccessRevocation, _Mapping]] = ...) -> None: ...

class RemoteAccessRevocation(_message.Message):
    __slots__ = ("serials",)
    SERIALS_FIELD_NUMBER: _ClassVar[int]
    serials: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, serials: _Optional[_Iterable[str]] = ...) -> None: ...

class RemoteAccessService(_message.Message):
    __slots__ = ("pool", "local_ts", "ike_proposals", "esp_proposals", "ike_lifetime_seconds", "child_lifetime_seconds", "auth_methods")
    POOL_FIELD_NUMBER: _ClassVar[int]
    LOCAL_TS_FIELD_NUMBER: _ClassVar[int]
    IKE_PROPOSALS_FIELD_NUMBER: _ClassVar[int]
    ESP_PROPOSALS_FIELD_NUMBER: _ClassVar[int]
    IKE_LIFETIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CHILD_LIFETIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    AUTH_METHODS_FIELD_NUMBER: _ClassVar[int]
    pool: str
    local_ts: _containers.RepeatedScalarFieldContainer[str]
    ike_proposals: _containers.RepeatedScalarFieldContainer[str]
    esp_proposals: _containers.RepeatedScalarFieldContainer[str]
    ike_lifetime_seconds: int
    child_lifetime_seconds: int
    auth_methods: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, pool: _Optional[str] = ..., local_ts: _Optional[_Iterable[str]] = ..., ike_proposals: _Optional[_Iterable[str]] = ..., esp_proposals: _Optional[_Iterable[str]] = ..., ike_lifetime_seconds: _Optional[int] = ..., child_lifetime_seconds: _Optional[int] = ..., auth_methods: _Optional[_Iterable[str]] = ...) -> None: ...

class SiteRoute(_message.Message):
    __slots__ = ("destination", "via", "gateway")
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    VIA_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    destination: str
    via: str
    gateway: str
    def __init__(self, destination: _Optional[str] = ..., via: _Optional[str] = ..., gateway: _Optional[str] = ...) -> None: ...

class DesiredTunnel(_message.Message):
    __slots__ = ("tunnel_id", "policy", "peer_name", "peer_kind", "peer_site", "local_endpoint", "remote_endpoints", "local_id", "remote_id", "auth", "ike_proposals", "esp_proposals", "children", "ike_lifetimes", "dpd", "initiator", "force_udp_encapsulation", "generation")
    TUNNEL_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    PEER_NAME_FIELD_NUMBER: _ClassVar[int]
    PEER_KIND_FIELD_NUMBER: _ClassVar[int]
    PEER_SITE_FIELD_NUMBER: _ClassVar[int]
    LOCAL_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    REMOTE_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    LOCAL_ID_FIELD_NUMBER: _ClassVar[int]
    REMOTE_ID_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    IKE_PROPOSALS_FIELD_NUMBER: _ClassVar[int]
    ESP_PROPOSALS_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_FIELD_NUMBER: _ClassVar[int]
    IKE_LIFETIMES_FIELD_NUMBER: _ClassVar[int]
    DPD_FIELD_NUMBER: _ClassVar[int]
    INITIATOR_FIELD_NUMBER: _ClassVar[int]
    FORCE_UDP_ENCAPSULATION_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    tunnel_id: str
    policy: str
    peer_name: str
    peer_kind: _common_pb2.PeerKind
    peer_site: str
    local_endpoint: _common_pb2.Endpoint
    remote_endpoints: _containers.RepeatedCompositeFieldContainer[_common_pb2.Endpoint]
    local_id: _common_pb2.Identity
    remote_id: _common_pb2.Identity
    auth: TunnelAuth
    ike_proposals: _containers.RepeatedScalarFieldContainer[str]
    esp_proposals: _containers.RepeatedScalarFieldContainer[str]
    children: _containers.RepeatedCompositeFieldContainer[ChildConfig]
    ike_lifetimes: _common_pb2.Lifetimes
    dpd: _common_pb2.Dpd
    initiator: bool
    force_udp_encapsulation: bool
    generation: int
    def __init__(self, tunnel_id: _Optional[str] = ..., policy: _Optional[str] = ..., peer_name: _Optional[str] = ..., peer_kind: _Optional[_Union[_common_pb2.PeerKind, str]] = ..., peer_site: _Optional[str] = ..., local_endpoint: _Optional[_Union[_common_pb2.Endpoint, _Mapping]] = ..., remote_endpoints: _Optional[_Iterable[_Union[_common_pb2.Endpoint, _Mapping]]] = ..., local_id: _Optional[_Union[_common_pb2.Identity, _Mapping]] = ..., remote_id: _Optional[_Union[_common_pb2.Identity, _Mapping]] = ..., auth: _Optional[_Union[TunnelAuth, _Mapping]] = ..., ike_proposals: _Optional[_Iterable[str]] = ..., esp_proposals: _Optional[_Iterable[str]] = ..., children: _Optional[_Iterable[_Union[ChildConfig, _Mapping]]] = ..., ike_lifetimes: _Optional[_Union[_common_pb2.Lifetimes, _Mapping]] = ..., dpd: _Optional[_Union[_common_pb2.Dpd, _Mapping]] = ..., initiator: _Optional[bool] = ..., force_udp_encapsulation: _Optional[bool] = ..., generation: _Optional[int] = ...) -> None: ...

class TunnelAuth(_message.Message):
    __slots__ = ("psk", "certificate")
    PSK_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    psk: PskAuth
    certificate: CertificateAuth
    def __init__(self, psk: _Optional[_Union[PskAuth, _Mapping]] = ..., certificate: _Optional[_Union[CertificateAuth, _Mapping]] = ...) -> None: ...

class PskAuth(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    def __init__(self, key: _Optional[bytes] = ...) -> None: ...

class CertificateAuth(_message.Message):
    __slots__ = ("ca_bundle_pem",)
    CA_BUNDLE_PEM_FIELD_NUMBER: _ClassVar[int]
    ca_bundle_pem: str
    def __init__(self, ca_bundle_pem: _Optional[str] = ...) -> None: ...

class ChildConfig(_message.Message):
    __slots__ = ("name", "local_ts", "remote_ts", "mode", "protocol", "lifetimes", "start_action")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LOCAL_TS_FIELD_NUMBER: _ClassVar[int]
    REMOTE_TS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    LIFETIMES_FIELD_NUMBER: _ClassVar[int]
    START_ACTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    local_ts: _containers.RepeatedCompositeFieldContainer[_common_pb2.TrafficSelector]
    remote_ts: _containers.RepeatedCompositeFieldContainer[_common_pb2.TrafficSelector]
    mode: _common_pb2.Mode
    protocol: _common_pb2.IpsecProtocol
    lifetimes: _common_pb2.Lifetimes
    start_action: _common_pb2.StartAction
    def __init__(self, name: _Optional[str] = ..., local_ts: _Optional[_Iterable[_Union[_common_pb2.TrafficSelector, _Mapping]]] = ..., remote_ts: _Optional[_Iterable[_Union[_common_pb2.TrafficSelector, _Mapping]]] = ..., mode: _Optional[_Union[_common_pb2.Mode, str]] = ..., protocol: _Optional[_Union[_common_pb2.IpsecProtocol, str]] = ..., lifetimes: _Optional[_Union[_common_pb2.Lifetimes, _Mapping]] = ..., start_action: _Optional[_Union[_common_pb2.StartAction, str]] = ...) -> None: ...

class StatusReport(_message.Message):
    __slots__ = ("node_name", "agent_instance_id", "seq", "full", "node", "tunnels", "removed_tunnel_ids", "received_version", "reconciled_version", "sent_at", "remote_access_clients")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    AGENT_INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    FULL_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    TUNNELS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_TUNNEL_IDS_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_VERSION_FIELD_NUMBER: _ClassVar[int]
    RECONCILED_VERSION_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    REMOTE_ACCESS_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    agent_instance_id: str
    seq: int
    full: bool
    node: NodeStatus
    tunnels: _containers.RepeatedCompositeFieldContainer[TunnelStatus]
    removed_tunnel_ids: _containers.RepeatedScalarFieldContainer[str]
    received_version: int
    reconciled_version: int
    sent_at: _timestamp_pb2.Timestamp
    remote_access_clients: _containers.RepeatedCompositeFieldContainer[RemoteAccessClientTraffic]
    def __init__(self, node_name: _Optional[str] = ..., agent_instance_id: _Optional[str] = ..., seq: _Optional[int] = ..., full: _Optional[bool] = ..., node: _Optional[_Union[NodeStatus, _Mapping]] = ..., tunnels: _Optional[_Iterable[_Union[TunnelStatus, _Mapping]]] = ..., removed_tunnel_ids: _Optional[_Iterable[str]] = ..., received_version: _Optional[int] = ..., reconciled_version: _Optional[int] = ..., sent_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., remote_access_clients: _Optional[_Iterable[_Union[RemoteAccessClientTraffic, _Mapping]]] = ...) -> None: ...

class RemoteAccessClientTraffic(_message.Message):
    __slots__ = ("user", "device", "bytes_in", "bytes_out", "packets_in", "packets_out")
    USER_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    BYTES_IN_FIELD_NUMBER: _ClassVar[int]
    BYTES_OUT_FIELD_NUMBER: _ClassVar[int]
    PACKETS_IN_FIELD_NUMBER: _ClassVar[int]
    PACKETS_OUT_FIELD_NUMBER: _ClassVar[int]
    user: str
    device: str
    bytes_in: int
    bytes_out: int
    packets_in: int
    packets_out: int
    def __init__(self, user: _Optional[str] = ..., device: _Optional[str] = ..., bytes_in: _Optional[int] = ..., bytes_out: _Optional[int] = ..., packets_in: _Optional[int] = ..., packets_out: _Optional[int] = ...) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("dataplane_backend", "facts", "nat_addresses", "started_at", "certificate_not_after", "dataplane_path_mtu")
    DATAPLANE_BACKEND_FIELD_NUMBER: _ClassVar[int]
    FACTS_FIELD_NUMBER: _ClassVar[int]
    NAT_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    DATAPLANE_PATH_MTU_FIELD_NUMBER: _ClassVar[int]
    dataplane_backend: DataplaneBackend
    facts: NodeFacts
    nat_addresses: _containers.RepeatedCompositeFieldContainer[_common_pb2.Endpoint]
    started_at: _timestamp_pb2.Timestamp
    certificate_not_after: _timestamp_pb2.Timestamp
    dataplane_path_mtu: int
    def __init__(self, dataplane_backend: _Optional[_Union[DataplaneBackend, str]] = ..., facts: _Optional[_Union[NodeFacts, _Mapping]] = ..., nat_addresses: _Optional[_Iterable[_Union[_common_pb2.Endpoint, _Mapping]]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., certificate_not_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., dataplane_path_mtu: _Optional[int] = ...) -> None: ...

class TunnelStatus(_message.Message):
    __slots__ = ("tunnel_id", "peer_name", "state", "ike_sa", "child_sas", "last_error", "peer_reachable", "updated_at", "path_mtu")
    TUNNEL_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    IKE_SA_FIELD_NUMBER: _ClassVar[int]
    CHILD_SAS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    PEER_REACHABLE_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    PATH_MTU_FIELD_NUMBER: _ClassVar[int]
    tunnel_id: str
    peer_name: str
    state: _common_pb2.TunnelState
    ike_sa: IkeSaStatus
    child_sas: _containers.RepeatedCompositeFieldContainer[ChildSaStatus]
    last_error: _common_pb2.ErrorInfo
    peer_reachable: bool
    updated_at: _timestamp_pb2.Timestamp
    path_mtu: int
    def __init__(self, tunnel_id: _Optional[str] = ..., peer_name: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.TunnelState, str]] = ..., ike_sa: _Optional[_Union[IkeSaStatus, _Mapping]] = ..., child_sas: _Optional[_Iterable[_Union[ChildSaStatus, _Mapping]]] = ..., last_error: _Optional[_Union[_common_pb2.ErrorInfo, _Mapping]] = ..., peer_reachable: _Optional[bool] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., path_mtu: _Optional[int] = ...) -> None: ...

class IkeSaStatus(_message.Message):
    __slots__ = ("spi_initiator", "spi_responder", "initiator", "local_endpoint", "remote_endpoint", "nat_detected", "encryption_algorithm", "integrity_algorithm", "prf_algorithm", "dh_group", "established_at", "last_rekey_at")
    SPI_INITIATOR_FIELD_NUMBER: _ClassVar[int]
    SPI_RESPONDER_FIELD_NUMBER: _ClassVar[int]
    INITIATOR_FIELD_NUMBER: _ClassVar[int]
    LOCAL_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    REMOTE_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    NAT_DETECTED_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    INTEGRITY_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    PRF_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    DH_GROUP_FIELD_NUMBER: _ClassVar[int]
    ESTABLISHED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_REKEY_AT_FIELD_NUMBER: _ClassVar[int]
    spi_initiator: int
    spi_responder: int
    initiator: bool
    local_endpoint: _common_pb2.Endpoint
    remote_endpoint: _common_pb2.Endpoint
    nat_detected: bool
    encryption_algorithm: str
    integrity_algorithm: str
    prf_algorithm: str
    dh_group: str
    established_at: _timestamp_pb2.Timestamp
    last_rekey_at: _timestamp_pb2.Timestamp
    def __init__(self, spi_initiator: _Optional[int] = ..., spi_responder: _Optional[int] = ..., initiator: _Optional[bool] = ..., local_endpoint: _Optional[_Union[_common_pb2.Endpoint, _Mapping]] = ..., remote_endpoint: _Optional[_Union[_common_pb2.Endpoint, _Mapping]] = ..., nat_detected: _Optional[bool] = ..., encryption_algorithm: _Optional[str] = ..., integrity_algorithm: _Optional[str] = ..., prf_algorithm: _Optional[str] = ..., dh_group: _Optional[str] = ..., established_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_rekey_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ChildSaStatus(_message.Message):
    __slots__ = ("name", "spi_in", "spi_out", "protocol", "mode", "encryption_algorithm", "integrity_algorithm", "dh_group", "bytes_in", "bytes_out", "packets_in", "packets_out", "established_at", "last_rekey_at", "local_ts", "remote_ts", "udp_encapsulated")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPI_IN_FIELD_NUMBER: _ClassVar[int]
    SPI_OUT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    INTEGRITY_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    DH_GROUP_FIELD_NUMBER: _ClassVar[int]
    BYTES_IN_FIELD_NUMBER: _ClassVar[int]
    BYTES_OUT_FIELD_NUMBER: _ClassVar[int]
    PACKETS_IN_FIELD_NUMBER: _ClassVar[int]
    PACKETS_OUT_FIELD_NUMBER: _ClassVar[int]
    ESTABLISHED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_REKEY_AT_FIELD_NUMBER: _ClassVar[int]
    LOCAL_TS_FIELD_NUMBER: _ClassVar[int]
    REMOTE_TS_FIELD_NUMBER: _ClassVar[int]
    UDP_ENCAPSULATED_FIELD_NUMBER: _ClassVar[int]
    name: str
    spi_in: int
    spi_out: int
    protocol: _common_pb2.IpsecProtocol
    mode: _common_pb2.Mode
    encryption_algorithm: str
    integrity_algorithm: str
    dh_group: str
    bytes_in: int
    bytes_out: int
    packets_in: int
    packets_out: int
    established_at: _timestamp_pb2.Timestamp
    last_rekey_at: _timestamp_pb2.Timestamp
    local_ts: _containers.RepeatedCompositeFieldContainer[_common_pb2.TrafficSelector]
    remote_ts: _containers.RepeatedCompositeFieldContainer[_common_pb2.TrafficSelector]
    udp_encapsulated: bool
    def __init__(self, name: _Optional[str] = ..., spi_in: _Optional[int] = ..., spi_out: _Optional[int] = ..., protocol: _Optional[_Union[_common_pb2.IpsecProtocol, str]] = ..., mode: _Optional[_Union[_common_pb2.Mode, str]] = ..., encryption_algorithm: _Optional[str] = ..., integrity_algorithm: _Optional[str] = ..., dh_group: _Optional[str] = ..., bytes_in: _Optional[int] = ..., bytes_out: _Optional[int] = ..., packets_in: _Optional[int] = ..., packets_out: _Optional[int] = ..., established_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_rekey_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., local_ts: _Optional[_Iterable[_Union[_common_pb2.TrafficSelector, _Mapping]]] = ..., remote_ts: _Optional[_Iterable[_Union[_common_pb2.TrafficSelector, _Mapping]]] = ..., udp_encapsulated: _Optional[bool] = ...) -> None: ...

class StatusAck(_message.Message):
    __slots__ = ("seq", "resync_required", "next_report_seconds")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    RESYNC_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    NEXT_REPORT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    resync_required: bool
    next_report_seconds: int
    def __init__(self, seq: _Optional[int] = ..., resync_required: _Optional[bool] = ..., next_report_seconds: _Optional[int] = ...) -> None: ...

class AllocateLeaseRequest(_message.Message):
    __slots__ = ("node", "identity", "device")
    NODE_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    node: str
    identity: str
    device: str
    def __init__(self, node: _Optional[str] = ..., identity: _Optional[str] = ..., device: _Optional[str] = ...) -> None: ...

class AllocateLeaseResponse(_message.Message):
    __slots__ = ("user", "pool", "addresses", "dns", "routes")
    USER_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    DNS_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    user: str
    pool: str
    addresses: _containers.RepeatedScalarFieldContainer[str]
    dns: _containers.RepeatedScalarFieldContainer[str]
    routes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, user: _Optional[str] = ..., pool: _Optional[str] = ..., addresses: _Optional[_Iterable[str]] = ..., dns: _Optional[_Iterable[str]] = ..., routes: _Optional[_Iterable[str]] = ...) -> None: ...

class ReleaseLeaseRequest(_message.Message):
    __slots__ = ("node", "identity", "device")
    NODE_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    node: str
    identity: str
    device: str
    def __init__(self, node: _Optional[str] = ..., identity: _Optional[str] = ..., device: _Optional[str] = ...) -> None: ...

class ReleaseLeaseResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: bool
    def __init__(self, released: _Optional[bool] = ...) -> None: ...

class ListRevokedCertificatesRequest(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: str
    def __init__(self, node: _Optional[str] = ...) -> None: ...

class ListRevokedCertificatesResponse(_message.Message):
    __slots__ = ("serials",)
    SERIALS_FIELD_NUMBER: _ClassVar[int]
    serials: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, serials: _Optional[_Iterable[str]] = ...) -> None: ...

class ReportRevokedClientRequest(_message.Message):
    __slots__ = ("node", "serial", "peer_address")
    NODE_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    node: str
    serial: str
    peer_address: str
    def __init__(self, node: _Optional[str] = ..., serial: _Optional[str] = ..., peer_address: _Optional[str] = ...) -> None: ...

class ReportRevokedClientResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReportRefusedClientRequest(_message.Message):
    __slots__ = ("node", "identity", "reason", "peer_address")
    NODE_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    node: str
    identity: str
    reason: str
    peer_address: str
    def __init__(self, node: _Optional[str] = ..., identity: _Optional[str] = ..., reason: _Optional[str] = ..., peer_address: _Optional[str] = ...) -> None: ...

class ReportRefusedClientResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetEapCredentialRequest(_message.Message):
    __slots__ = ("node", "identity")
    NODE_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    node: str
    identity: str
    def __init__(self, node: _Optional[str] = ..., identity: _Optional[str] = ...) -> None: ...

class GetEapCredentialResponse(_message.Message):
    __slots__ = ("user", "method", "nt_hash")
    USER_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    NT_HASH_FIELD_NUMBER: _ClassVar[int]
    user: str
    method: str
    nt_hash: bytes
    def __init__(self, user: _Optional[str] = ..., method: _Optional[str] = ..., nt_hash: _Optional[bytes] = ...) -> None: ...
