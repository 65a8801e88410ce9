"""Parts of the admin API contract that are not protobuf messages."""

# Trailing metadata carrying a serialized ValidationErrors with every field problem of a refused write.
VALIDATION_TRAILER = "meshsec-validation-errors-bin"


def missing_psk_warning(secret: str) -> str:
    """What the controller (Apply) and meshctl (describe) say about an ExternalGateway whose
    pskSecretRef names a Secret nobody has stored."""
    return (f"PSK Secret {secret!r} does not exist: tunnels to this gateway cannot authenticate "
            f"until it is set (meshctl secret set {secret} --from-file FILE)")


# The largest gRPC message the controller accepts and meshctl sends or receives (gRPC's default,
# written down so both sides agree). Every response is built to stay under it: resources are at
# most 1 MiB, list pages end at 3 MiB, an Apply echoes at most 3 MiB of resources.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
