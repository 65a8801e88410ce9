"""Remote access on the controller side: address leases for road-warrior clients and their
credentials (docs/remote-access.md)."""
