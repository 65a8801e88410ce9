"""The userspace data plane: ESP/AH over a TUN device, for kernels without ESP."""
