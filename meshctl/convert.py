"""Between protobuf messages and the plain, Kubernetes-shaped dicts users read and write.

Struct numbers are doubles on the wire; integral ones come back as ints so that ``14400`` prints as
``14400`` and a re-applied ``get -o yaml`` is unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from google.protobuf.message import Message

from meshsec.meshctl.kinds import manifest_kind
from meshsec.v1 import common_pb2


def plain(value: Any) -> Any:
    """Integral floats to int, recursively (Struct and MessageToDict turn every number into a float)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    result = plain(json_format.MessageToDict(struct))
    assert isinstance(result, dict)
    return result


def dict_to_struct(value: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(dict(value))
    return struct


def timestamp(ts: timestamp_pb2.Timestamp) -> datetime | None:
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    return datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, tz=UTC)


def iso(ts: timestamp_pb2.Timestamp) -> str:
    when = timestamp(ts)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ") if when is not None else ""


def resource_to_dict(resource: common_pb2.Resource) -> dict[str, Any]:
    meta = resource.metadata
    metadata: dict[str, Any] = {"name": meta.name}
    if meta.labels:
        metadata["labels"] = dict(sorted(meta.labels.items()))
    if meta.annotations:
        metadata["annotations"] = dict(sorted(meta.annotations.items()))
    if meta.resource_version:
        metadata["resourceVersion"] = meta.resource_version
    if meta.generation:
        metadata["generation"] = meta.generation
    if meta.uid:
        metadata["uid"] = meta.uid
    if meta.HasField("creation_time"):
        metadata["creationTimestamp"] = iso(meta.creation_time)
    out: dict[str, Any] = {
        "apiVersion": resource.api_version,
        # The manifest's name for it (MeshNode for a Node), so the output applies as it is.
        "kind": manifest_kind(resource.kind),
        "metadata": metadata,
        "spec": struct_to_dict(resource.spec),
    }
    if resource.HasField("status") and resource.status.fields:
        out["status"] = struct_to_dict(resource.status)
    return out


def message_to_dict(message: Message) -> dict[str, Any]:
    """camelCase JSON mapping with enum names and every field the sender set; stable for scripts."""
    result = plain(json_format.MessageToDict(message, always_print_fields_with_no_presence=False))
    assert isinstance(result, dict)
    return result
