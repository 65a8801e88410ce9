"""How big a resource, its metadata and an enrollment's facts may be (docs/resources.md, "Limits").

Chosen in the spirit of Kubernetes: label values 63 characters, label and annotation keys a
qualified name (prefix up to 253, name up to 63), all annotations of an object 256 KiB together.
A whole resource as sent in an Apply is capped at 1 MiB (etcd refuses objects past 1.5 MiB), so
any stored resource, with what the controller adds to it, fits in one gRPC message of the 4 MiB
every client accepts by default, and a List page can always hold at least one.
"""

from __future__ import annotations

from collections.abc import Mapping

from meshsec.controller.resources.errors import FieldError, clip
from meshsec.controller.resources.fields import valid_label_key

MAX_RESOURCE_BYTES = 1024 * 1024  # one serialized Resource in an ApplyRequest
MAX_ANNOTATIONS_BYTES = 256 * 1024  # keys and values of one object's annotations, UTF-8

# What an agent may report at enrollment (stored as annotations and endpoints of its Node).
MAX_HOSTNAME = 253
MAX_AGENT_VERSION = 64
MAX_KERNEL_VERSION = 256
MAX_FACT_ADDRESSES = 64


def annotations_size(annotations: Mapping[str, str]) -> int:
    return sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())


def annotation_problems(kind: str, name: str, annotations: Mapping[str, str]) -> list[FieldError]:
    """Keys must be qualified names (as label keys); all of them together at most 256 KiB."""
    errors = [
        FieldError(kind, name, f"metadata.annotations.{clip(key, 64)}", "invalid annotation key")
        for key in annotations
        if not valid_label_key(key)
    ]
    size = annotations_size(annotations)
    if size > MAX_ANNOTATIONS_BYTES:
        errors.append(
            FieldError(
                kind,
                name,
                "metadata.annotations",
                f"{size} bytes of annotations; at most {MAX_ANNOTATIONS_BYTES} (256 KiB) are allowed",
            )
        )
    return errors


def resource_size_problem(kind: str, name: str, size: int) -> FieldError | None:
    if size <= MAX_RESOURCE_BYTES:
        return None
    return FieldError(
        kind, name, "", f"is {size} bytes; a resource may be at most {MAX_RESOURCE_BYTES} (1 MiB)"
    )
