"""Engine configuration: one IkeConfig per connection, one ChildConfig per CHILD_SA it carries.
Invalid values are rejected at construction with a message naming the field."""

from __future__ import annotations

from dataclasses import dataclass, field

from meshsec.agent.ike.constants import ProtocolId
from meshsec.agent.ike.identity import Identity
from meshsec.agent.ike.proposals import ProposalSpec, parse_proposals
from meshsec.agent.ike.ts import Ts
from meshsec.common.secrets import Secret


class ConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class RetransmitConfig:
    """strongSwan's defaults: timeout * base**n for n = 0..tries, then give up (~165 s)."""

    timeout: float = 4.0
    base: float = 1.8
    tries: int = 5

    def __post_init__(self) -> None:
        if self.timeout <= 0 or self.base < 1 or self.tries < 0:
            raise ConfigError(f"retransmit: invalid timeout/base/tries {self}")

    def delay(self, attempt: int) -> float:
        return float(self.timeout * self.base**attempt)


@dataclass(frozen=True, slots=True)
class ChildConfig:
    name: str
    local_ts: tuple[Ts, ...]
    remote_ts: tuple[Ts, ...]
    proposals: str = "aes256gcm16-x25519,aes128-sha256-x25519"
    protocol: ProtocolId = ProtocolId.ESP
    mode: str = "tunnel"
    # Lifetimes are carried to the data plane now; rekeying on them is part 2.
    rekey_time: int = 3600
    life_time: int = 3960
    specs: tuple[ProposalSpec, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = f"child {self.name!r}"
        if self.mode not in ("tunnel", "transport"):
            raise ConfigError(f"{where}: mode must be 'tunnel' or 'transport', not {self.mode!r}")
        if self.protocol not in (ProtocolId.ESP, ProtocolId.AH):
            raise ConfigError(f"{where}: protocol must be ESP or AH")
        if not self.local_ts or not self.remote_ts:
            raise ConfigError(f"{where}: local_ts and remote_ts must not be empty")
        if self.life_time < self.rekey_time:
            raise ConfigError(f"{where}: life_time must be >= rekey_time")
        try:
            specs = parse_proposals(self.proposals, self.protocol)
        except ValueError as exc:
            raise ConfigError(f"{where}: proposals: {exc}") from exc
        object.__setattr__(self, "specs", specs)


@dataclass(frozen=True, slots=True)
class IkeConfig:
    name: str
    local_id: str
    remote_id: str  # "%any" accepts every peer identity (responder only)
    psk: Secret
    proposals: str = "aes256gcm16-prfsha256-x25519,aes128-sha256-ecp256"
    children: tuple[ChildConfig, ...] = ()
    retransmit: RetransmitConfig = RetransmitConfig()
    prefer_own_proposals: bool = True  # responder: our order wins (strongSwan default)
    send_initial_contact: bool = True
    natt_keepalive: float = 20.0
    # Pretend to be behind a NAT (strongSwan's encap=yes) so ESP is always UDP-encapsulated.
    force_encap: bool = False
    rekey_time: int = 14400  # placeholder until IKE rekeying (part 2)
    local_identity: Identity = field(init=False, repr=False, compare=False)
    remote_identity: Identity | None = field(init=False, repr=False, compare=False)
    specs: tuple[ProposalSpec, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = f"connection {self.name!r}"
        if not isinstance(self.psk, Secret) or len(self.psk) == 0:
            raise ConfigError(f"{where}: psk must be a non-empty Secret")
        try:
            object.__setattr__(self, "local_identity", Identity.parse(self.local_id))
            remote = None if self.remote_id == "%any" else Identity.parse(self.remote_id)
            object.__setattr__(self, "remote_identity", remote)
        except ValueError as exc:
            raise ConfigError(f"{where}: identity: {exc}") from exc
        try:
            object.__setattr__(self, "specs", parse_proposals(self.proposals, ProtocolId.IKE))
        except ValueError as exc:
            raise ConfigError(f"{where}: proposals: {exc}") from exc
        names = [c.name for c in self.children]
        if len(set(names)) != len(names):
            raise ConfigError(f"{where}: duplicate child names {names}")
        if self.natt_keepalive < 0:
            raise ConfigError(f"{where}: natt_keepalive must be >= 0")

    def matches_remote(self, ident: Identity) -> bool:
        return self.remote_identity is None or self.remote_identity == ident

    def child(self, name: str) -> ChildConfig | None:
        return next((c for c in self.children if c.name == name), None)
