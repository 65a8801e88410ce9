"""Client profiles for remote-access devices (docs/remote-access.md, "Client profiles"): one
renderer per platform, all from one `ProfileInput`, with proposals each client supports."""
