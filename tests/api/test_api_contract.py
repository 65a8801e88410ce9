"""The shape of the meshsec.v1 contract, read back from the generated descriptors.

These pin the parts other components build against (service and method names, which RPCs stream,
the secret fields' types, wire-number tables borrowed from the RFCs) and the versioning rules that
keep v1 evolvable (every enum has an UNSPECIFIED zero, enum values are prefixed so they cannot
collide in the package scope).
"""

from __future__ import annotations

import importlib

import pytest
from google.protobuf import descriptor

from meshsec.v1 import admin_pb2, agent_pb2, common_pb2

FILES = [common_pb2.DESCRIPTOR, agent_pb2.DESCRIPTOR, admin_pb2.DESCRIPTOR]

# (method, client streaming, server streaming)
EXPECTED_SERVICES = {
    "meshsec.v1.AgentService": {
        ("Enroll", False, False),
        ("RenewCertificate", False, False),
        ("WatchDesiredState", False, True),
        ("ReportStatus", False, False),
        ("AllocateLease", False, False),
        ("ReleaseLease", False, False),
        ("ListRevokedCertificates", False, False),
        ("ReportRevokedClient", False, False),
        ("ReportRefusedClient", False, False),
        ("GetEapCredential", False, False),
    },
    "meshsec.v1.AdminService": {
        ("Apply", False, False),
        ("Delete", False, False),
        ("Get", False, False),
        ("List", False, False),
        ("ListTunnels", False, False),
        ("WatchEvents", False, True),
        ("CreateBootstrapToken", False, False),
        ("RevokeBootstrapToken", False, False),
        ("GetTopology", False, False),
        ("PutSecret", False, False),
        ("DeleteSecret", False, False),
        ("ListSecrets", False, False),
        ("GetVersion", False, False),
        ("IssueAdminCertificate", False, False),
        ("ListAdminCertificates", False, False),
        ("RevokeAdminCertificates", False, False),
        ("SetRemoteAccessPassword", False, False),
        ("ListRemoteAccessLeases", False, False),
        ("IssueDeviceCertificate", False, False),
        ("GetRemoteAccessProfile", False, False),
    },
}


def _all_enums() -> list[descriptor.EnumDescriptor]:
    enums: list[descriptor.EnumDescriptor] = []

    def walk(message: descriptor.Descriptor) -> None:
        enums.extend(message.enum_types)
        for nested in message.nested_types:
            walk(nested)

    for f in FILES:
        enums.extend(f.enum_types_by_name.values())
        for message in f.message_types_by_name.values():
            walk(message)
    return enums


def test_every_file_is_in_the_versioned_package() -> None:
    assert {f.package for f in FILES} == {"meshsec.v1"}
    assert {f.name for f in FILES} == {
        "meshsec/v1/common.proto",
        "meshsec/v1/agent.proto",
        "meshsec/v1/admin.proto",
    }


def test_services_and_streaming_shapes() -> None:
    found = {}
    for f in FILES:
        for service in f.services_by_name.values():
            found[service.full_name] = {
                (m.name, m.client_streaming, m.server_streaming) for m in service.methods
            }
    assert found == EXPECTED_SERVICES


@pytest.mark.parametrize("module", ["agent_pb2_grpc", "admin_pb2_grpc"])
def test_grpc_modules_import_with_stub_servicer_and_registration(module: str) -> None:
    grpc_module = importlib.import_module(f"meshsec.v1.{module}")
    service = {"agent_pb2_grpc": "AgentService", "admin_pb2_grpc": "AdminService"}[module]
    for name in (f"{service}Stub", f"{service}Servicer", f"add_{service}Servicer_to_server"):
        assert callable(getattr(grpc_module, name)), name


def test_every_enum_starts_with_a_prefixed_unspecified_zero() -> None:
    enums = _all_enums()
    assert len(enums) >= 10
    for enum in enums:
        zero = enum.values_by_number[0].name
        assert zero.endswith("_UNSPECIFIED"), f"{enum.full_name}: zero value is {zero}"
        prefix = zero.removesuffix("UNSPECIFIED")
        for value in enum.values:
            assert value.name.startswith(prefix), f"{enum.full_name}.{value.name} lacks prefix {prefix}"


def test_identity_types_are_the_iana_id_type_numbers() -> None:
    # RFC 7296 section 3.5: the enum goes on the wire unchanged.
    iana = {"IPV4_ADDR": 1, "FQDN": 2, "RFC822_ADDR": 3, "IPV6_ADDR": 5, "DER_ASN1_DN": 9, "KEY_ID": 11}
    for name, number in iana.items():
        assert common_pb2.Identity.Type.Value(f"TYPE_{name}") == number


def test_secret_material_fields_are_bytes_or_marked_strings() -> None:
    psk = agent_pb2.PskAuth.DESCRIPTOR.fields_by_name["key"]
    assert psk.type == descriptor.FieldDescriptor.TYPE_BYTES
    # Bootstrap tokens are text the operator copies; they are strings, but never echoed back by
    # any response other than the one that created them.
    assert agent_pb2.EnrollRequest.DESCRIPTOR.fields_by_name["bootstrap_token"].type == (
        descriptor.FieldDescriptor.TYPE_STRING
    )
    responses = [m for f in FILES for m in f.message_types_by_name.values() if m.name.endswith("Response")]
    leaking = [m.full_name for m in responses if "bootstrap_token" in m.fields_by_name]
    assert leaking == []
    # Secret values are write-only: the request carries bytes, no response or SecretInfo has a value.
    assert admin_pb2.PutSecretRequest.DESCRIPTOR.fields_by_name["value"].type == (
        descriptor.FieldDescriptor.TYPE_BYTES
    )
    secret_messages = [*responses, admin_pb2.SecretInfo.DESCRIPTOR]
    assert [m.full_name for m in secret_messages if "value" in m.fields_by_name] == []
    # An EAP-MSCHAPv2 NT hash goes to gateways (AgentService) only, never to an admin client.
    holders = [
        m.full_name for f in FILES for m in f.message_types_by_name.values() if "nt_hash" in m.fields_by_name
    ]
    assert holders == ["meshsec.v1.GetEapCredentialResponse"]
    assert agent_pb2.GetEapCredentialResponse.DESCRIPTOR.fields_by_name["nt_hash"].type == (
        descriptor.FieldDescriptor.TYPE_BYTES
    )


def test_spi_fields_have_the_wire_widths() -> None:
    ike = agent_pb2.IkeSaStatus.DESCRIPTOR.fields_by_name
    child = agent_pb2.ChildSaStatus.DESCRIPTOR.fields_by_name
    assert ike["spi_initiator"].type == ike["spi_responder"].type == descriptor.FieldDescriptor.TYPE_FIXED64
    assert child["spi_in"].type == child["spi_out"].type == descriptor.FieldDescriptor.TYPE_FIXED32
    status = agent_pb2.ChildSaStatus(spi_in=0xFFFFFFFF, spi_out=0xC0FFEE01)
    assert agent_pb2.ChildSaStatus.FromString(status.SerializeToString()).spi_in == 0xFFFFFFFF


def test_desired_state_update_round_trips_through_the_wire() -> None:
    update = agent_pb2.DesiredStateUpdate(
        version=12,
        base_version=9,
        kind=agent_pb2.UPDATE_KIND_DELTA,
        removed_tunnel_ids=["t-1"],
        upserted_tunnels=[
            agent_pb2.DesiredTunnel(
                tunnel_id="t-2",
                auth=agent_pb2.TunnelAuth(psk=agent_pb2.PskAuth(key=bytes(range(32)))),
                remote_endpoints=[common_pb2.Endpoint(address="198.18.0.9", port=4500)],
            )
        ],
    )
    back = agent_pb2.DesiredStateUpdate.FromString(update.SerializeToString())
    assert back == update
    assert back.upserted_tunnels[0].auth.psk.key == bytes(range(32))


def test_unknown_enum_values_survive_a_round_trip() -> None:
    # Additive evolution: an old reader must keep a state a newer writer added.
    status = agent_pb2.TunnelStatus(tunnel_id="t", state=99)  # type: ignore[arg-type]
    assert agent_pb2.TunnelStatus.FromString(status.SerializeToString()).state == 99
