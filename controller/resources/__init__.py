"""Resource model (meshsec.io/v1alpha1), parsing and validation; see docs/resources.md."""

from meshsec.controller.resources.errors import FieldError, ValidationError
from meshsec.controller.resources.model import (
    API_VERSION,
    ExternalGateway,
    Kind,
    MeshPolicy,
    Node,
    Resource,
    Site,
)
from meshsec.controller.resources.parse import load_yaml, parse_resource, parse_resources

__all__ = [
    "API_VERSION",
    "ExternalGateway",
    "FieldError",
    "Kind",
    "MeshPolicy",
    "Node",
    "Resource",
    "Site",
    "ValidationError",
    "load_yaml",
    "parse_resource",
    "parse_resources",
]
