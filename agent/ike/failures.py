"""Why an IKE SA, a CHILD_SA or a rekey failed, as a closed set a consumer can switch on.

Carried as `code` on IkeSaFailed, ChildSaFailed and RekeyFailed next to the free-text `reason`
(which stays for logs and status messages). Members named after an RFC 7296 error notify have
that notify's number in `notify_type`; the others are the engine's own verdicts."""

from __future__ import annotations

from enum import Enum

from meshsec.agent.ike.constants import ERROR_NOTIFY_LIMIT, NotifyType


class FailureReason(Enum):
    # An error notify, sent by the peer or by us (RFC 7296 3.10.1).
    UNSUPPORTED_CRITICAL_PAYLOAD = "UNSUPPORTED_CRITICAL_PAYLOAD"
    INVALID_IKE_SPI = "INVALID_IKE_SPI"
    INVALID_MAJOR_VERSION = "INVALID_MAJOR_VERSION"
    INVALID_MESSAGE_ID = "INVALID_MESSAGE_ID"
    INVALID_SYNTAX = "INVALID_SYNTAX"
    INVALID_SPI = "INVALID_SPI"
    NO_PROPOSAL_CHOSEN = "NO_PROPOSAL_CHOSEN"
    INVALID_KE_PAYLOAD = "INVALID_KE_PAYLOAD"
    AUTHENTICATION_FAILED = "AUTHENTICATION_FAILED"
    SINGLE_PAIR_REQUIRED = "SINGLE_PAIR_REQUIRED"
    NO_ADDITIONAL_SAS = "NO_ADDITIONAL_SAS"
    INTERNAL_ADDRESS_FAILURE = "INTERNAL_ADDRESS_FAILURE"
    FAILED_CP_REQUIRED = "FAILED_CP_REQUIRED"
    TS_UNACCEPTABLE = "TS_UNACCEPTABLE"
    INVALID_SELECTORS = "INVALID_SELECTORS"
    TEMPORARY_FAILURE = "TEMPORARY_FAILURE"
    CHILD_SA_NOT_FOUND = "CHILD_SA_NOT_FOUND"
    UNACCEPTABLE_ADDRESSES = "UNACCEPTABLE_ADDRESSES"  # RFC 4555: the peer refused our new path
    UNEXPECTED_NAT_DETECTED = "UNEXPECTED_NAT_DETECTED"  # RFC 4555: a NAT where NO_NATS_ALLOWED
    STATE_NOT_FOUND = "STATE_NOT_FOUND"  # RFC 9370 2.2.4: an IKE_FOLLOWUP_KE the responder has no state for
    PEER_ERROR = "PEER_ERROR"  # an error notify this implementation has no name for
    # The engine's own verdicts.
    TIMEOUT = "TIMEOUT"  # no answer after the whole retransmission schedule
    DPD_TIMEOUT = "DPD_TIMEOUT"  # the same for a dead peer detection probe
    HALF_OPEN_TIMEOUT = "HALF_OPEN_TIMEOUT"  # a responder SA never saw IKE_AUTH
    INVALID_RESPONSE = "INVALID_RESPONSE"  # the peer's answer breaks the protocol
    COOKIE2_MISMATCH = "COOKIE2_MISMATCH"  # RFC 4555 return routability: the answer lacks our COOKIE2
    MOBIKE_NOT_NEGOTIATED = "MOBIKE_NOT_NEGOTIATED"  # an address update without MOBIKE_SUPPORTED both ways
    LOCAL_CREDENTIALS = "LOCAL_CREDENTIALS"  # our own key cannot authenticate to this peer
    PEER_DELETED = "PEER_DELETED"  # the peer deleted the SA while we worked on it
    INTERNAL_ERROR = "INTERNAL_ERROR"  # a bug of ours: the SA was failed closed

    @property
    def notify_type(self) -> NotifyType | None:
        """The RFC 7296 error notify this reason stands for, if any."""
        return NotifyType.__members__.get(self.value)

    @classmethod
    def from_notify(cls, notify_type: int) -> FailureReason:
        """The reason for an error notify received from (or sent to) the peer."""
        if notify_type >= ERROR_NOTIFY_LIMIT:
            return cls.INVALID_RESPONSE
        try:
            return cls(NotifyType(notify_type).name)
        except ValueError:
            return cls.PEER_ERROR
