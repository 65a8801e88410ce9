"""Parts of the admin API contract that are not protobuf messages."""

# Trailing metadata carrying a serialized ValidationErrors with every field problem of a refused write.
VALIDATION_TRAILER = "meshsec-validation-errors-bin"
