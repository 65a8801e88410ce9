"""Who may authenticate with EAP and how: the gateway's EAP settings (`EapServerConfig`, on the
IkeConfig of a connection whose peers authenticate with EAP) and a road warrior's
(`EapClientConfig`, on an initiator's IkeConfig).

Users come from a lookup function, not a table: the agent fills it from the controller's
RemoteAccessUser records (NT hashes only; the controller never holds a password) or from the
standalone config's `secrets` (docs/agent-standalone.md). A user record holds a `Secret`, so it
never shows up in a log line or a status document by accident."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from meshsec.common.secrets import Secret

METHODS = ("mschapv2", "tls")
# Bounds on what one peer may make the gateway do (RFC 7296 2.16 sets none): EAP round trips
# per IKE SA, bytes of one EAP packet, bytes of a whole EAP-TLS handshake (reassembled).
MAX_ROUNDS = 24
MAX_EAP_PACKET = 16384
MAX_TLS_MESSAGE = 65536


@dataclass(frozen=True, slots=True)
class EapUser:
    """`nt_hash` allows EAP-MSCHAPv2; `tls` allows EAP-TLS with a certificate that chains to
    the gateway's trusted CAs and names the user's identity."""

    identity: bytes
    nt_hash: Secret | None = field(default=None, repr=False)
    tls: bool = False

    def allows(self, method: str) -> bool:
        return (method == "mschapv2" and self.nt_hash is not None) or (method == "tls" and self.tls)


class UserPending:
    """A lookup's answer while the user is being fetched (a gateway asking its controller): the
    IKE_AUTH request waits (feature.Deferred's way) and is processed again on resume."""


PENDING = UserPending()

UserLookup = Callable[[bytes], EapUser | UserPending | None]


class EapConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class EapServerConfig:
    """`methods` in the gateway's order of preference; `identity` "request" asks the peer for
    its EAP identity (EAP-Identity, strongSwan's eap_id = %any), "idi" takes the IDi the peer
    sent as the EAP identity and starts the method at once."""

    users: UserLookup = field(repr=False, compare=False)
    methods: tuple[str, ...] = ("mschapv2",)
    identity: str = "request"
    max_rounds: int = MAX_ROUNDS
    server_name: bytes = b"meshsec"

    def __post_init__(self) -> None:
        if not self.methods or any(m not in METHODS for m in self.methods):
            raise EapConfigError(f"eap methods must be some of {', '.join(METHODS)}, not {self.methods}")
        if len(set(self.methods)) != len(self.methods):
            raise EapConfigError(f"eap methods listed twice: {self.methods}")
        if self.identity not in ("request", "idi"):
            raise EapConfigError(f"eap identity must be 'request' or 'idi', not {self.identity!r}")
        if not 3 <= self.max_rounds <= 256:
            raise EapConfigError("eap max_rounds must be 3..256")


@dataclass(frozen=True, slots=True)
class EapClientConfig:
    """A road warrior's EAP-MSCHAPv2 credentials: its EAP identity and the NT hash of its
    password (what MSCHAPv2 needs; the password itself need not be kept)."""

    identity: bytes
    nt_hash: Secret = field(repr=False)

    def __post_init__(self) -> None:
        if not self.identity or len(self.identity) > 253:
            raise EapConfigError("eap identity must be 1..253 bytes")
        if len(self.nt_hash) != 16:
            raise EapConfigError("eap NT hash must be 16 bytes")
