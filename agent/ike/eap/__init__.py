"""EAP inside IKE_AUTH (RFC 7296 section 2.16): message codec and the methods' crypto."""
