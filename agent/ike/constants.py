"""IKEv2 protocol numbers (RFC 7296 section 3 and the IANA IKEv2 registries)."""

from __future__ import annotations

import struct
from enum import IntEnum

# SPIi, SPIr, Next Payload, Version, Exchange Type, Flags, Message ID, Length (RFC 7296 3.1)
IKE_HEADER = struct.Struct("!8s8sBBBBII")
IKE_HEADER_LEN = IKE_HEADER.size
IKE_VERSION = 0x20  # major 2, minor 0
IKE_PORT = 500
NATT_PORT = 4500


class ExchangeType(IntEnum):
    IKE_SA_INIT = 34
    IKE_AUTH = 35
    CREATE_CHILD_SA = 36
    INFORMATIONAL = 37
    IKE_INTERMEDIATE = 43  # RFC 9242
    IKE_FOLLOWUP_KE = 44  # RFC 9370 2.2.2


class HeaderFlag(IntEnum):
    INITIATOR = 0x08
    VERSION = 0x10
    RESPONSE = 0x20


class PayloadType(IntEnum):
    NONE = 0
    SA = 33
    KE = 34
    IDi = 35
    IDr = 36
    CERT = 37
    CERTREQ = 38
    AUTH = 39
    NONCE = 40
    NOTIFY = 41
    DELETE = 42
    VENDOR = 43
    TSi = 44
    TSr = 45
    SK = 46
    CP = 47
    EAP = 48
    SKF = 53


class ProtocolId(IntEnum):
    NONE = 0
    IKE = 1
    AH = 2
    ESP = 3


class TransformType(IntEnum):
    ENCR = 1
    PRF = 2
    INTEG = 3
    DH = 4
    ESN = 5
    # RFC 9370 2.2.1: Additional Key Exchange 1..7, each negotiated like the D-H transform.
    ADDKE1 = 6
    ADDKE2 = 7
    ADDKE3 = 8
    ADDKE4 = 9
    ADDKE5 = 10
    ADDKE6 = 11
    ADDKE7 = 12


ADDKE_TYPES = tuple(TransformType(t) for t in range(TransformType.ADDKE1, TransformType.ADDKE7 + 1))


class EncrId(IntEnum):
    AES_CBC = 12
    AES_GCM_16 = 20
    CHACHA20_POLY1305 = 28  # RFC 7634: an AEAD with a fixed 256-bit key, no Key Length attribute


# Combined-mode ciphers (RFC 5282, RFC 7634): no INTEG transform, and each takes a 4-byte salt
# from the keying material after its key.
AEAD_ENCR = frozenset({EncrId.AES_GCM_16, EncrId.CHACHA20_POLY1305})
AEAD_SALT_LEN = 4


class PrfId(IntEnum):
    HMAC_SHA2_256 = 5
    HMAC_SHA2_384 = 6
    HMAC_SHA2_512 = 7


class IntegId(IntEnum):
    NONE = 0
    HMAC_SHA2_256_128 = 12
    HMAC_SHA2_384_192 = 13
    HMAC_SHA2_512_256 = 14


class DhId(IntEnum):
    NONE = 0
    MODP_2048 = 14
    MODP_3072 = 15
    ECP_256 = 19
    ECP_384 = 20
    CURVE25519 = 31
    # Key Exchange Method registry (draft-ietf-ipsecme-ikev2-mlkem): KEMs, not D-H groups, but
    # the same number space; usable as the D-H transform or as an additional key exchange.
    ML_KEM_512 = 35
    ML_KEM_768 = 36
    ML_KEM_1024 = 37


class EsnId(IntEnum):
    NO_ESN = 0
    ESN = 1


KEY_LENGTH_ATTRIBUTE = 14  # transform attribute type, always in TV form (AF bit set)


class IdType(IntEnum):
    IPV4_ADDR = 1
    FQDN = 2
    RFC822_ADDR = 3
    IPV6_ADDR = 5
    DER_ASN1_DN = 9
    DER_ASN1_GN = 10
    KEY_ID = 11


class AuthMethod(IntEnum):
    RSA_SIG = 1
    SHARED_KEY_MIC = 2
    DSS_SIG = 3
    ECDSA_SHA256_P256 = 9
    ECDSA_SHA384_P384 = 10
    ECDSA_SHA512_P521 = 11
    DIGITAL_SIGNATURE = 14


class TsType(IntEnum):
    IPV4_ADDR_RANGE = 7
    IPV6_ADDR_RANGE = 8


class NotifyType(IntEnum):
    # Errors (< 16384): a response carrying one of these means the request failed.
    UNSUPPORTED_CRITICAL_PAYLOAD = 1
    INVALID_IKE_SPI = 4
    INVALID_MAJOR_VERSION = 5
    INVALID_SYNTAX = 7
    INVALID_MESSAGE_ID = 9
    INVALID_SPI = 11
    NO_PROPOSAL_CHOSEN = 14
    INVALID_KE_PAYLOAD = 17
    AUTHENTICATION_FAILED = 24
    SINGLE_PAIR_REQUIRED = 34
    NO_ADDITIONAL_SAS = 35
    INTERNAL_ADDRESS_FAILURE = 36
    FAILED_CP_REQUIRED = 37
    TS_UNACCEPTABLE = 38
    INVALID_SELECTORS = 39
    TEMPORARY_FAILURE = 43
    CHILD_SA_NOT_FOUND = 44
    UNACCEPTABLE_ADDRESSES = 40  # RFC 4555 (MOBIKE)
    UNEXPECTED_NAT_DETECTED = 41  # RFC 4555 (MOBIKE)
    STATE_NOT_FOUND = 47  # RFC 9370 2.2.4: IKE_FOLLOWUP_KE for a state the responder dropped
    # Status (>= 16384): unknown ones are ignored (RFC 7296 3.10.1).
    INITIAL_CONTACT = 16384
    SET_WINDOW_SIZE = 16385
    ADDITIONAL_TS_POSSIBLE = 16386
    IPCOMP_SUPPORTED = 16387
    NAT_DETECTION_SOURCE_IP = 16388
    NAT_DETECTION_DESTINATION_IP = 16389
    COOKIE = 16390
    USE_TRANSPORT_MODE = 16391
    HTTP_CERT_LOOKUP_SUPPORTED = 16392
    REKEY_SA = 16393
    ESP_TFC_PADDING_NOT_SUPPORTED = 16394
    NON_FIRST_FRAGMENTS_ALSO = 16395
    MOBIKE_SUPPORTED = 16396  # RFC 4555 3.1-3.14 (MOBIKE) from here to NO_NATS_ALLOWED
    ADDITIONAL_IP4_ADDRESS = 16397
    ADDITIONAL_IP6_ADDRESS = 16398
    NO_ADDITIONAL_ADDRESSES = 16399
    UPDATE_SA_ADDRESSES = 16400
    COOKIE2 = 16401
    NO_NATS_ALLOWED = 16402
    IKEV2_FRAGMENTATION_SUPPORTED = 16430
    SIGNATURE_HASH_ALGORITHMS = 16431
    INTERMEDIATE_EXCHANGE_SUPPORTED = 16438  # RFC 9242 3
    ADDITIONAL_KEY_EXCHANGE = 16441  # RFC 9370 2.2.4: links IKE_FOLLOWUP_KE to its exchange


ERROR_NOTIFY_LIMIT = 16384
NONCE_SIZE = 32  # bytes of our nonces (RFC 7296 2.10: at least half the PRF key size)


def notify_name(notify_type: int) -> str:
    """The RFC name of a Notify Message Type, or its number for one this implementation lacks."""
    try:
        return NotifyType(notify_type).name
    except ValueError:
        return f"notify {notify_type}"
