"""Parts of the admin API contract that are not protobuf messages."""

# Trailing metadata carrying a serialized ValidationErrors with every field problem of a refused write.
VALIDATION_TRAILER = "meshsec-validation-errors-bin"


def missing_psk_warning(secret: str) -> str:
    """What the controller (Apply) and meshctl (describe) say about an ExternalGateway whose
    pskSecretRef names a Secret nobody has stored."""
    return (f"PSK Secret {secret!r} does not exist: tunnels to this gateway cannot authenticate "
            f"until it is set (meshctl secret set {secret} --from-file FILE)")
